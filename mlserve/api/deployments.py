"""mlserve.v1.DeploymentService over the deployments domain."""

from __future__ import annotations

from typing import Any

from google.protobuf.empty_pb2 import Empty

from mlserve.api import convert
from mlserve.core.errors import InvalidArgument
from mlserve.deploy.lifecycle import UPDATABLE_DEPLOYMENT_FIELDS, Deployments
from mlserve_api.v1 import deployment_pb2, deployment_pb2_grpc

Context = Any


class DeploymentService(deployment_pb2_grpc.DeploymentServiceServicer):
    def __init__(self, deployments: Deployments) -> None:
        self.deployments = deployments

    async def CreateDeployment(
        self, request: deployment_pb2.CreateDeploymentRequest, context: Context
    ) -> deployment_pb2.Deployment:
        wanted = convert.wanted_deployment(request.deployment)
        return convert.deployment(await self.deployments.create(wanted))

    async def GetDeployment(
        self, request: deployment_pb2.GetDeploymentRequest, context: Context
    ) -> deployment_pb2.Deployment:
        return convert.deployment(await self.deployments.get(request.name))

    async def ListDeployments(
        self, request: deployment_pb2.ListDeploymentsRequest, context: Context
    ) -> deployment_pb2.ListDeploymentsResponse:
        page = await self.deployments.list_deployments(request.page_size, request.page_token)
        return deployment_pb2.ListDeploymentsResponse(
            deployments=[convert.deployment(record) for record in page.items],
            next_page_token=page.next_page_token,
        )

    async def UpdateDeployment(
        self, request: deployment_pb2.UpdateDeploymentRequest, context: Context
    ) -> deployment_pb2.Deployment:
        wanted = request.deployment
        mask = set(request.update_mask.paths) or set(UPDATABLE_DEPLOYMENT_FIELDS)
        unknown = mask - UPDATABLE_DEPLOYMENT_FIELDS
        if unknown:
            raise InvalidArgument(
                f"update_mask may name only version and servers, not {', '.join(sorted(unknown))}"
            )
        record = await self.deployments.update(
            wanted.name or wanted.model,
            wanted.version if "version" in mask else None,
            list(wanted.servers) if "servers" in mask else None,
            allow_missing=request.allow_missing,
        )
        return convert.deployment(record)

    async def DeleteDeployment(
        self, request: deployment_pb2.DeleteDeploymentRequest, context: Context
    ) -> Empty:
        await self.deployments.delete(request.name)
        return Empty()

    async def LoadModel(
        self, request: deployment_pb2.LoadModelRequest, context: Context
    ) -> deployment_pb2.Deployment:
        record = await self.deployments.load_model(request.model, request.version, request.server)
        return convert.deployment(record)

    async def UnloadModel(
        self, request: deployment_pb2.UnloadModelRequest, context: Context
    ) -> Empty:
        await self.deployments.unload_model(request.model, request.server)
        return Empty()
