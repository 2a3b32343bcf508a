"""mlserve.v1.DeploymentService over the deployments domain."""

from __future__ import annotations

from typing import Any

from google.protobuf.empty_pb2 import Empty

from mlserve.api import convert, convert_log
from mlserve.core.errors import InvalidArgument
from mlserve.deploy.lifecycle import UPDATABLE_DEPLOYMENT_FIELDS, Deployments
from mlserve.gateway.stats import InferenceStats
from mlserve.monitor import InferenceLog, LoggingPolicy
from mlserve_api.v1 import deployment_pb2, deployment_pb2_grpc, inference_log_pb2

Context = Any


class DeploymentService(deployment_pb2_grpc.DeploymentServiceServicer):
    def __init__(
        self,
        deployments: Deployments,
        inference_log: InferenceLog | None = None,
        stats: InferenceStats | None = None,
    ) -> None:
        self.deployments = deployments
        self.inference_log = inference_log
        self.stats = stats

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
        record = await self.deployments.create(convert.wanted_deployment(wanted), wait=request.wait)
        return await self._logging(convert.deployment(record), policy)

    async def _logging(
        self, message: deployment_pb2.Deployment, policy: LoggingPolicy | None
    ) -> deployment_pb2.Deployment:
        """Set the deployment's logging policy (when given); show the one in force and the
        recent latency."""
        if self.stats is not None:
            recent = self.stats.recent_latency(message.name)
            message.latency.CopyFrom(
                inference_log_pb2.RecentLatency(
                    p50_ms=recent.p50_ms,
                    p99_ms=recent.p99_ms,
                    calls=recent.calls,
                    window_seconds=recent.window_seconds,
                )
            )
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
        record = await self.deployments.get(request.name)
        return await self._logging(convert.deployment(record), None)

    async def ListDeployments(
        self, request: deployment_pb2.ListDeploymentsRequest, context: Context
    ) -> deployment_pb2.ListDeploymentsResponse:
        page = await self.deployments.list_deployments(request.page_size, request.page_token)
        return deployment_pb2.ListDeploymentsResponse(
            deployments=[
                await self._logging(convert.deployment(record), None) for record in page.items
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
            wait=request.wait,
            loading=convert.loading(wanted),
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
        record = await self.deployments.load_model(
            request.model, request.version, request.server, wait=request.wait
        )
        return convert.deployment(record)

    async def UnloadModel(
        self, request: deployment_pb2.UnloadModelRequest, context: Context
    ) -> Empty:
        await self.deployments.unload_model(request.model, request.server)
        return Empty()
