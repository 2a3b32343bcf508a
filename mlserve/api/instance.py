"""mlserve.v1.InstanceService: what this MLServe is and which features are on."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mlserve_api.v1 import instance_pb2, instance_pb2_grpc

Context = Any
API_KEY, OIDC = "api_key", "oidc"


@dataclass(frozen=True)
class InstanceDescription:
    """What GetInstance answers; made once at start from the settings and what is served."""

    name: str
    version: str
    oidc_issuers: tuple[str, ...] = ()
    oidc_audience: str = ""
    features: Mapping[str, bool] = field(default_factory=dict)


class InstanceService(instance_pb2_grpc.InstanceServiceServicer):
    def __init__(self, description: InstanceDescription) -> None:
        self.description = description

    async def GetInstance(
        self, request: instance_pb2.GetInstanceRequest, context: Context
    ) -> instance_pb2.Instance:
        described = self.description
        methods = [API_KEY, OIDC] if described.oidc_issuers else [API_KEY]
        return instance_pb2.Instance(
            name=described.name,
            version=described.version,
            authentication=instance_pb2.Authentication(
                required=True,
                methods=methods,
                oidc_issuers=described.oidc_issuers,
                oidc_audience=described.oidc_audience,
            ),
            features=dict(described.features),
        )
