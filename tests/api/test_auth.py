"""Every call but health needs a valid key: UNAUTHENTICATED otherwise, and
nothing happens. Against the session's real MLServe over a real socket."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from mlserve_api.v1 import deployment_pb2, model_pb2, server_pb2
from tests.support.mlserve import MLServeProcess, Stubs
from tests.support.uploading import stream


def _reflection_services(stubs: Stubs, metadata: Any) -> list[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(stubs.channel)
    responses = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
        metadata=metadata,
        timeout=30,
    )
    return [s.name for r in responses for s in r.list_services_response.service]


def _calls(stubs: Stubs, model_name: str) -> dict[str, Callable[[Any], Any]]:
    """One RPC of each service (plus a streaming upload), given the metadata to send."""
    return {
        "ModelService.ListModels": lambda md: stubs.models.ListModels(
            model_pb2.ListModelsRequest(), metadata=md, timeout=30
        ),
        "ModelService.CreateModel": lambda md: stubs.models.CreateModel(
            model_pb2.CreateModelRequest(model=model_pb2.Model(name=model_name)),
            metadata=md,
            timeout=30,
        ),
        "ModelService.UploadModelVersion": lambda md: stubs.models.UploadModelVersion(
            stream(model_name, {"model.py": b"# unauthenticated\n"}), metadata=md, timeout=30
        ),
        "ServerService.ListServers": lambda md: stubs.servers.ListServers(
            server_pb2.ListServersRequest(), metadata=md, timeout=30
        ),
        "DeploymentService.ListDeployments": lambda md: stubs.deployments.ListDeployments(
            deployment_pb2.ListDeploymentsRequest(), metadata=md, timeout=30
        ),
    }


def _bad_credentials(key: str) -> dict[str, list[tuple[str, str]] | None]:
    prefix = key.split("_")[1]
    return {
        "missing": None,
        "empty": [("authorization", "")],
        "wrong-key": [("authorization", "Bearer mls_000000000000_" + "x" * 43)],
        "right-prefix-wrong-secret": [("authorization", f"Bearer mls_{prefix}_" + "y" * 43)],
        "right-prefix-no-secret": [("authorization", f"Bearer mls_{prefix}_")],
        "secret-with-suffix": [("authorization", f"Bearer {key}x")],
        "no-scheme": [("authorization", key)],
        "basic-scheme": [("authorization", f"Basic {key}")],
        "bearer-only": [("authorization", "Bearer")],
        "bearer-blank": [("authorization", "Bearer    ")],
        "not-a-key": [("authorization", "Bearer hello")],
        "other-header": [("x-api-key", key)],
    }


CREDENTIALS = [
    "missing",
    "empty",
    "wrong-key",
    "right-prefix-wrong-secret",
    "right-prefix-no-secret",
    "secret-with-suffix",
    "no-scheme",
    "basic-scheme",
    "bearer-only",
    "bearer-blank",
    "not-a-key",
    "other-header",
]
CALLS = [
    "ModelService.ListModels",
    "ModelService.CreateModel",
    "ModelService.UploadModelVersion",
    "ServerService.ListServers",
    "DeploymentService.ListDeployments",
]


@pytest.mark.parametrize("credential", CREDENTIALS)
@pytest.mark.parametrize("call", CALLS)
def test_unauthenticated(
    stubs: Stubs, mlserve: MLServeProcess, model_name: str, call: str, credential: str
) -> None:
    metadata = _bad_credentials(stubs.key)[credential]
    repository_before = sorted(os.listdir(mlserve.home / "repository"))
    with pytest.raises(grpc.RpcError) as failure:
        _calls(stubs, model_name)[call](metadata)
    assert failure.value.code() == grpc.StatusCode.UNAUTHENTICATED, failure.value.details()
    assert stubs.key not in (failure.value.details() or "")
    # Nothing happened on the caller's behalf.
    assert sorted(os.listdir(mlserve.home / "repository")) == repository_before
    with pytest.raises(grpc.RpcError) as missing:
        stubs.models.GetModel(model_pb2.GetModelRequest(name=model_name), metadata=stubs.auth)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def test_the_admin_key_works_everywhere(stubs: Stubs) -> None:
    for variant in (f"Bearer {stubs.key}", f"bearer {stubs.key}", f"Bearer  {stubs.key} "):
        metadata = [("authorization", variant)]
        stubs.models.ListModels(model_pb2.ListModelsRequest(), metadata=metadata)
        stubs.servers.ListServers(server_pb2.ListServersRequest(), metadata=metadata)
        stubs.deployments.ListDeployments(
            deployment_pb2.ListDeploymentsRequest(), metadata=metadata
        )
        services = _reflection_services(stubs, metadata)
        assert {
            "mlserve.v1.ModelService",
            "mlserve.v1.ServerService",
            "mlserve.v1.DeploymentService",
            "grpc.health.v1.Health",
        } <= set(services)


def test_health_needs_no_key(stubs: Stubs) -> None:
    response = stubs.health.Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert response.status == health_pb2.HealthCheckResponse.SERVING
    per_service = stubs.health.Check(
        health_pb2.HealthCheckRequest(service="mlserve.v1.ModelService"), timeout=10
    )
    assert per_service.status == health_pb2.HealthCheckResponse.SERVING
    # A wrong key does not break health either.
    stubs.health.Check(
        health_pb2.HealthCheckRequest(), metadata=[("authorization", "Bearer nope")], timeout=10
    )


def test_admin_key_file_is_private(mlserve: MLServeProcess) -> None:
    path = mlserve.home / "admin.key"
    info = path.stat()
    assert stat.S_ISREG(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert info.st_uid == os.getuid()
    key = path.read_text().strip()
    assert key.startswith("mls_")
    # Stored hashed: the secret half never appears in the database file.
    secret = key.split("_", 2)[2]
    for name in ("mlserve.db", "mlserve.db-wal"):
        database = mlserve.home / name
        if database.exists():
            assert secret.encode() not in database.read_bytes()
