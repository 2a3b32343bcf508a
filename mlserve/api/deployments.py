"""mlserve.v1.DeploymentService over the deployments domain."""

from __future__ import annotations

from typing import Any

from google.protobuf.empty_pb2 import Empty

from mlserve.api import convert, convert_log
from mlserve.core.errors import InvalidArgument
from mlserve.deploy.model_deployments import (
    UPDATABLE_DEPLOYMENT_FIELDS,
    DeploymentRecord,
    Deployments,
    Placement,
)
from mlserve.deploy.pipeline_deployments import PipelineDeployments
from mlserve.monitor import InferenceLog, LoggingPolicy
from mlserve_api.v1 import deployment_pb2, deployment_pb2_grpc

Context = Any


class DeploymentService(deployment_pb2_grpc.DeploymentServiceServicer):
    def __init__(
        self,
        deployments: Deployments,
        pipelines: PipelineDeployments,
        inference_log: InferenceLog | None = None,
    ) -> None:
        self.deployments = deployments
        self.pipelines = pipelines
        self.inference_log = inference_log

    async def CreateDeployment(
        self, request: deployment_pb2.CreateDeploymentRequest, context: Context
    ) -> deployment_pb2.Deployment:
        wanted = request.deployment
        # Checked before anything is deployed: a bad policy deploys nothing.
        policy = (
            convert_log.logging_policy(wanted.logging).checked()
            if wanted.HasField("logging")
            else None
        )
        placement = Placement(list(wanted.servers), wanted.replicas, dict(wanted.server_selector))
        if wanted.pipeline:
            if wanted.model or wanted.HasField("serving"):
                raise InvalidArgument(
                    "set either model or pipeline, not both; a pipeline's serving settings "
                    "belong to its steps"
                )
            if wanted.name and wanted.name != wanted.pipeline:
                raise InvalidArgument("a deployment is named after its pipeline: leave name empty")
            created = await self.pipelines.create(wanted.pipeline, wanted.version, placement)
            return await self._logging(convert.pipeline_deployment(created), policy)
        if wanted.name and wanted.name != wanted.model:
            raise InvalidArgument("a deployment is named after its model: leave name empty")
        record = await self.deployments.create(
            wanted.model, wanted.version, placement, convert.serving_settings(wanted.serving)
        )
        return await self._logging(convert.deployment(record), policy)

    async def _logging(
        self, message: deployment_pb2.Deployment, policy: LoggingPolicy | None
    ) -> deployment_pb2.Deployment:
        """Set the deployment's logging policy (when given) and show the one in force."""
        if self.inference_log is None:
            return message
        if policy is not None:
            policy = await self.inference_log.policies.set(message.name, policy)
        else:
            policy = self.inference_log.policies.get(message.name)
        message.logging.CopyFrom(
            convert_log.logging_policy_message(
                message.name, policy, self.inference_log.dropped(message.name)
            )
        )
        return message

    async def GetDeployment(
        self, request: deployment_pb2.GetDeploymentRequest, context: Context
    ) -> deployment_pb2.Deployment:
        pipeline = await self.pipelines.get_or_none(request.name)
        if pipeline is not None:
            return await self._logging(convert.pipeline_deployment(pipeline), None)
        return await self._logging(
            convert.deployment(await self.deployments.get(request.name)), None
        )

    async def ListDeployments(
        self, request: deployment_pb2.ListDeploymentsRequest, context: Context
    ) -> deployment_pb2.ListDeploymentsResponse:
        page = await self.pipelines.list_with_models(request.page_size, request.page_token)
        return deployment_pb2.ListDeploymentsResponse(
            deployments=[
                convert.deployment(record)
                if isinstance(record, DeploymentRecord)
                else convert.pipeline_deployment(record)
                for record in page.items
            ],
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
        if await self.pipelines.get_or_none(request.name) is not None:
            await self.pipelines.delete(request.name)
        else:
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
