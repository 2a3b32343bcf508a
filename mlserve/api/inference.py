"""inference.GRPCInferenceService on MLServe's port: Triton's own protocol,
routed by model name to a Triton that has the model loaded.

A thin adapter: routed calls go to ``mlserve.gateway.forwarding`` as the raw
bytes received, with the call's time left, and a Triton's error answer comes
back with its code and details unchanged. Calls about the server itself are
answered by MLServe; calls that would let a client reach into a Triton's host
(shared memory, trace and log files) are refused.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any

import grpc
from grpc import aio
from tritonclient.grpc import service_pb2

from mlserve import __version__
from mlserve.access import Access
from mlserve.api.errors import status_code
from mlserve.core.errors import InvalidArgument, MLServeError, NotFound, Unavailable
from mlserve.deploy.fleet import READY, Fleet
from mlserve.deploy.lifecycle import Deployments
from mlserve.gateway import wire
from mlserve.gateway.forwarding import Call, Forwarder
from mlserve.gateway.router import Router
from mlserve.gateway.stats import InferenceStats
from mlserve.monitor import InferenceLog

SERVICE = "inference.GRPCInferenceService"
EXTENSIONS = (
    "classification",
    "sequence",
    "model_repository",
    "schedule_policy",
    "model_configuration",
    "binary_tensor_data",
    "parameters",
    "statistics",
)
_SHARED_MEMORY = (
    "shared memory needs the client and Triton on one host; through the MLServe gateway "
    "send tensors in the request, or connect to the Triton directly"
)
_HOST_SETTINGS = (
    "{method} is not exposed through the MLServe gateway: on Triton it lets a client choose "
    "files to write on the server (CVE-2024-0087, CVE-2024-0100); change it on the Triton host"
)

Context = aio.ServicerContext[bytes, bytes]
RawUnary = Callable[[bytes, Context], Awaitable[bytes]]
Forwarded = Callable[[bytes, Call], Awaitable[bytes]]


class InferenceGateway:
    """The gRPC face of the gateway: one handler per method, each only converting."""

    def __init__(
        self,
        router: Router,
        fleet: Fleet,
        deployments: Deployments,
        stats: InferenceStats,
        access: Access,
        inference_log: InferenceLog | None = None,
    ) -> None:
        self.fleet = fleet
        self.deployments = deployments
        self.forwarder = Forwarder(
            router, fleet, stats, access, inference_log, _status_of, busy=deployments.busy
        )
        self.forwarder.load_on_demand(deployments.warm)

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        forwarder = self.forwarder
        unary: dict[str, RawUnary] = {
            "ModelInfer": _passing_triton_errors(forwarder.infer),
            "ModelMetadata": _passing_triton_errors(partial(forwarder.routed, "ModelMetadata")),
            "ModelConfig": _passing_triton_errors(partial(forwarder.routed, "ModelConfig")),
            "ModelReady": _passing_triton_errors(forwarder.ready),
            "ModelStatistics": _passing_triton_errors(forwarder.statistics),
            "ServerLive": self._server_live,
            "ServerReady": self._server_ready,
            "ServerMetadata": self._server_metadata,
            "RepositoryIndex": self._repository_index,
            "RepositoryModelLoad": self._repository_model_load,
            "RepositoryModelUnload": self._repository_model_unload,
        }
        for method in (
            "SystemSharedMemoryStatus",
            "SystemSharedMemoryRegister",
            "SystemSharedMemoryUnregister",
            "CudaSharedMemoryStatus",
            "CudaSharedMemoryRegister",
            "CudaSharedMemoryUnregister",
        ):
            unary[method] = _refuse(_SHARED_MEMORY)
        for method in ("TraceSetting", "LogSettings"):
            unary[method] = _refuse(_HOST_SETTINGS.format(method=method))
        handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
            method: grpc.unary_unary_rpc_method_handler(behaviour)
            for method, behaviour in unary.items()
        }
        handlers["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(
            self._model_stream_infer
        )
        return grpc.method_handlers_generic_handler(SERVICE, handlers)

    async def _model_stream_infer(
        self, requests: AsyncIterator[bytes], context: Context
    ) -> AsyncIterator[bytes]:
        async for response in self.forwarder.stream(requests, context):
            yield response

    # --- MLServe's own answers ----------------------------------------------

    async def _server_live(self, request: bytes, context: Context) -> bytes:
        return wire.encode(service_pb2.ServerLiveResponse(live=True))

    async def _server_ready(self, request: bytes, context: Context) -> bytes:
        return wire.encode(service_pb2.ServerReadyResponse(ready=self.fleet.any_ready()))

    async def _server_metadata(self, request: bytes, context: Context) -> bytes:
        """Triton's name and a ready Triton's version: MLServe is a gateway, not a new
        server kind (Triton's own clients check the name). MLServe's version goes
        in the ``mlserve-version`` response header."""
        await context.send_initial_metadata((("mlserve-version", __version__),))
        return wire.encode(
            service_pb2.ServerMetadataResponse(
                name="triton", version=await self._triton_version(request), extensions=EXTENSIONS
            )
        )

    async def _triton_version(self, request: bytes) -> str:
        """The version the first ready Triton of the fleet reports; "" when none answers."""
        for name in await self.fleet.names():
            if self.fleet.status(name).state != READY:
                continue
            client = self.fleet.cached_client(name) or await self.fleet.client(name)
            try:
                answer = await client.raw_unary("ServerMetadata")(request, timeout=5)
            except aio.AioRpcError:
                continue
            return str(service_pb2.ServerMetadataResponse.FromString(answer).version)
        return ""

    async def _repository_index(self, request: bytes, context: Context) -> bytes:
        """MLServe's registry: each deployed model and whether a replica serves it."""
        ready_only = service_pb2.RepositoryIndexRequest.FromString(request).ready
        response = service_pb2.RepositoryIndexResponse()
        for served in await self.forwarder.served_models(ready_only):
            response.models.add(
                name=served.route.model,
                version=str(served.route.version),
                state="READY" if served.serving else "UNAVAILABLE",
                reason="" if served.serving else "no replica of the deployment is ready",
            )
        return wire.encode(response)

    async def _repository_model_load(self, request: bytes, context: Context) -> bytes:
        """Deploy the latest uploaded version (MLServe's registry, not a Triton's)."""
        parsed = service_pb2.RepositoryModelLoadRequest.FromString(request)
        # "failed to load 'NAME'" first, as Triton says it: its clients look for it.
        failed = f"failed to load '{parsed.model_name}'"
        if any(key == "config" or key.startswith("file:") for key in parsed.parameters):
            raise InvalidArgument(
                f"{failed}: the gateway does not take model files or configs: upload them "
                "with mlserve.v1.ModelService/UploadModelVersion, then load by name"
            )
        try:
            # Triton's RepositoryModelLoad answers once the load is over: so does this.
            record = await self.deployments.update(
                parsed.model_name, 0, None, allow_missing=True, wait=True
            )
        except NotFound as missing:
            raise NotFound(f"{failed}: {missing.message}") from None
        if record.state != "READY":
            reasons = "; ".join(f"{t.server}: {t.message}" for t in record.targets if t.message)
            raise Unavailable(f"{failed}: {reasons}")
        return wire.encode(service_pb2.RepositoryModelLoadResponse())

    async def _repository_model_unload(self, request: bytes, context: Context) -> bytes:
        """Undeploy the model from every server (DeploymentService.DeleteDeployment)."""
        parsed = service_pb2.RepositoryModelUnloadRequest.FromString(request)
        await self.deployments.delete(parsed.model_name)
        return wire.encode(service_pb2.RepositoryModelUnloadResponse())


def _passing_triton_errors(forward: Forwarded) -> RawUnary:
    """The handler of a forwarded call: a Triton's error answer keeps its code and details."""

    async def handle(request: bytes, context: Context) -> bytes:
        try:
            return await forward(request, context)
        except aio.AioRpcError as error:
            await context.abort(error.code(), error.details() or "")
            raise AssertionError("abort returns by raising") from None
        except NotFound:
            # Missing and private-to-others alike, in Triton's words, which
            # Triton's own clients look for.
            model, _ = wire.model_name_and_version(request)
            raise NotFound(f"Request for unknown model: '{model}' is not found") from None

    return handle


def _status_of(error: BaseException) -> tuple[str, str]:
    """What the client of a failed call sees: its status code's name and message."""
    if isinstance(error, aio.AioRpcError):
        return error.code().name, error.details() or ""
    if isinstance(error, MLServeError):
        return status_code(error).name, error.message
    return grpc.StatusCode.INTERNAL.name, ""


def _refuse(reason: str) -> RawUnary:
    async def refuse(request: bytes, context: Context) -> bytes:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, reason)
        raise AssertionError("abort returns by raising")

    return refuse
