"""inference.GRPCInferenceService on MLServe's port: Triton's own protocol,
routed by model name to a Triton that has the model loaded.

Requests and responses of routed calls cross as raw bytes (no parse, no
re-serialise): ``wire.model_name_and_version`` reads the two routing fields
and the bytes go on unchanged. Calls about the server itself are answered
by MLServe; calls that would let a client reach into a Triton's host
(shared memory, trace and log files) are refused.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio
from tritonclient.grpc import service_pb2

from mlserve import __version__
from mlserve.access import Access, current_principal
from mlserve.core.errors import InvalidArgument, MLServeError, PermissionDenied, Unavailable
from mlserve.deploy.fleet import Fleet
from mlserve.deploy.lifecycle import Deployments
from mlserve.gateway.router import Router
from mlserve.gateway.stats import InferenceStats

from . import wire

SERVICE = "inference.GRPCInferenceService"
# Another replica is tried when one is unreachable; a Triton's own answers
# (bad input, model errors) are final and pass through unchanged. An app's
# consumers get 1 + the app's retries attempts instead.
MAX_ATTEMPTS = 3
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
_NOT_READY_ERRORS = (MLServeError,)

Context = aio.ServicerContext[bytes, bytes]
RawUnary = Callable[[bytes, Context], Awaitable[bytes]]


class InferenceGateway:
    def __init__(
        self,
        router: Router,
        fleet: Fleet,
        deployments: Deployments,
        stats: InferenceStats,
        access: Access,
    ) -> None:
        self.router = router
        self.fleet = fleet
        self.deployments = deployments
        self.stats = stats
        self.access = access

    async def _may_infer(self, model: str) -> tuple[int, float | None]:
        """Raise unless the caller may use ``model``: (attempts, per-call timeout or None)."""
        principal = current_principal.get()
        if principal is None:
            return MAX_ATTEMPTS, None
        await self.access.check_infer(principal, model)
        if principal.is_consumer:
            return 1 + principal.retries, principal.timeout_seconds or None
        return MAX_ATTEMPTS, None

    async def _visible(self, model: str) -> bool:
        try:
            await self._may_infer(model)
        except MLServeError:
            return False
        return True

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        unary: dict[str, RawUnary] = {
            "ModelInfer": self._model_infer,
            "ModelMetadata": self._routed("ModelMetadata"),
            "ModelConfig": self._routed("ModelConfig"),
            "ModelReady": self._model_ready,
            "ModelStatistics": self._model_statistics,
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

    # --- routed calls -------------------------------------------------------

    async def _forward(
        self, method: str, request: bytes, context: Context, model: str, version: str
    ) -> tuple[bytes, int]:
        """Send ``request`` to a ready replica; returns the response and the version used.

        The common case — a routed model, a client already open — awaits
        nothing but the forwarded call itself.
        """
        attempts, app_timeout = await self._may_infer(model)
        timeout = context.time_remaining()
        if app_timeout is not None:
            timeout = app_timeout if timeout is None else min(timeout, app_timeout)
        tried: frozenset[str] = frozenset()
        while True:
            route = self.router.route(model)
            if route is None:
                choice = await self.router.choose(model, version, tried)
            else:
                choice = self.router.choose_routed(route, version, tried)
            client = self.fleet.cached_client(choice.server) or await self.fleet.client(
                choice.server
            )
            try:
                with self.router.in_flight(choice.server):
                    response: bytes = await client.raw_unary(method)(request, timeout=timeout)
                return response, choice.version
            except aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.UNAVAILABLE:
                    tried |= {choice.server}
                    self.fleet.suspect(choice.server)
                    if len(tried) < attempts:
                        continue
                await context.abort(error.code(), error.details() or "")

    def _routed(self, method: str) -> RawUnary:
        async def forward(request: bytes, context: Context) -> bytes:
            model, version = _routing_fields(method, request)
            response, _ = await self._forward(method, request, context, model, version)
            return response

        return forward

    async def _model_infer(self, request: bytes, context: Context) -> bytes:
        model, version = _routing_fields("ModelInfer", request)
        try:
            response, served = await self._forward("ModelInfer", request, context, model, version)
        except BaseException:
            self._count(model, False)
            raise
        self.stats.record(model, served, True)
        return response

    def _count(self, model: str, ok: bool) -> None:
        route = self.router.route(model)
        if route is not None:
            self.stats.record(model, route.version, ok)

    async def _model_ready(self, request: bytes, context: Context) -> bytes:
        # Like Triton: a model that cannot serve is "not ready", not an error.
        model, version = _routing_fields("ModelReady", request)
        try:
            response, _ = await self._forward("ModelReady", request, context, model, version)
        except PermissionDenied:
            raise
        except _NOT_READY_ERRORS:
            return _encode(service_pb2.ModelReadyResponse(ready=False))
        return response

    async def _model_statistics(self, request: bytes, context: Context) -> bytes:
        parsed = service_pb2.ModelStatisticsRequest.FromString(request)
        if parsed.name:
            response, _ = await self._forward(
                "ModelStatistics", request, context, parsed.name, parsed.version
            )
            return response
        merged = service_pb2.ModelStatisticsResponse()
        for route in self.router.routes():
            if not route.servers or not await self._visible(route.model):
                continue
            single = service_pb2.ModelStatisticsRequest(name=route.model)
            with contextlib.suppress(MLServeError):
                raw, _ = await self._forward(
                    "ModelStatistics", _encode(single), context, route.model, ""
                )
                merged.model_stats.extend(
                    service_pb2.ModelStatisticsResponse.FromString(raw).model_stats
                )
        return _encode(merged)

    async def _model_stream_infer(
        self, requests: AsyncIterator[bytes], context: Context
    ) -> AsyncIterator[bytes]:
        """One upstream stream per replica used; responses merged as they come."""
        responses: asyncio.Queue[bytes | None] = asyncio.Queue()
        upstreams: dict[str, Any] = {}
        waiting: dict[str, deque[tuple[str, int]]] = {}
        readers: list[asyncio.Task[None]] = []

        async def read(call: Any, sent: deque[tuple[str, int]]) -> None:
            # Triton answers a stream's requests in order, so each response
            # settles the oldest request still waiting on that upstream.
            try:
                async for response in call:
                    if sent:
                        model, version = sent.popleft()
                        self.stats.record(model, version, not wire.stream_response_failed(response))
                    await responses.put(response)
            except aio.AioRpcError as error:
                await responses.put(_stream_error(error.details() or error.code().name))

        async def pump() -> None:
            try:
                async for request in requests:
                    try:
                        model, version = wire.model_name_and_version(request)
                        await self._may_infer(model)
                        choice = await self.router.choose(model, version)
                    except (MLServeError, wire.WireError, UnicodeDecodeError) as error:
                        await responses.put(_stream_error(str(error)))
                        continue
                    call = upstreams.get(choice.server)
                    if call is None:
                        client = await self.fleet.client(choice.server)
                        call = upstreams[choice.server] = client.raw_stream("ModelStreamInfer")()
                        waiting[choice.server] = deque()
                        readers.append(asyncio.create_task(read(call, waiting[choice.server])))
                    waiting[choice.server].append((model, choice.version))
                    await call.write(request)
                for call in upstreams.values():
                    await call.done_writing()
                await asyncio.gather(*readers)
            finally:
                await responses.put(None)

        pumping = asyncio.create_task(pump())
        try:
            while (response := await responses.get()) is not None:
                yield response
            await pumping
        finally:
            pumping.cancel()
            for call in upstreams.values():
                call.cancel()

    # --- MLServe's own answers ----------------------------------------------

    async def _server_live(self, request: bytes, context: Context) -> bytes:
        return _encode(service_pb2.ServerLiveResponse(live=True))

    async def _server_ready(self, request: bytes, context: Context) -> bytes:
        return _encode(service_pb2.ServerReadyResponse(ready=self.fleet.any_ready()))

    async def _server_metadata(self, request: bytes, context: Context) -> bytes:
        return _encode(
            service_pb2.ServerMetadataResponse(
                name="mlserve", version=__version__, extensions=EXTENSIONS
            )
        )

    async def _repository_index(self, request: bytes, context: Context) -> bytes:
        """MLServe's registry: each deployed model and whether a replica serves it."""
        ready_only = service_pb2.RepositoryIndexRequest.FromString(request).ready
        response = service_pb2.RepositoryIndexResponse()
        for route in self.router.routes():
            if not await self._visible(route.model):
                continue
            serving = any(self.fleet.status(s).state == "READY" for s in route.servers)
            if ready_only and not serving:
                continue
            response.models.add(
                name=route.model,
                version=str(route.version),
                state="READY" if serving else "UNAVAILABLE",
                reason="" if serving else "no replica of the deployment is ready",
            )
        return _encode(response)

    async def _repository_model_load(self, request: bytes, context: Context) -> bytes:
        """Deploy the latest uploaded version (MLServe's registry, not a Triton's)."""
        parsed = service_pb2.RepositoryModelLoadRequest.FromString(request)
        if any(key == "config" or key.startswith("file:") for key in parsed.parameters):
            raise InvalidArgument(
                "the gateway does not take model files or configs: upload them with "
                "mlserve.v1.ModelService/UploadModelVersion, then load by name"
            )
        record = await self.deployments.update(parsed.model_name, 0, None, allow_missing=True)
        if record.state != "READY":
            reasons = "; ".join(f"{t.server}: {t.message}" for t in record.targets if t.message)
            raise Unavailable(f"model {parsed.model_name!r} did not load: {reasons}")
        return _encode(service_pb2.RepositoryModelLoadResponse())

    async def _repository_model_unload(self, request: bytes, context: Context) -> bytes:
        """Undeploy the model from every server (DeploymentService.DeleteDeployment)."""
        parsed = service_pb2.RepositoryModelUnloadRequest.FromString(request)
        await self.deployments.delete(parsed.model_name)
        return _encode(service_pb2.RepositoryModelUnloadResponse())


def _routing_fields(method: str, request: bytes) -> tuple[str, str]:
    try:
        return wire.model_name_and_version(request)
    except (wire.WireError, UnicodeDecodeError):
        raise InvalidArgument(f"the {method} request is not a valid message") from None


def _refuse(reason: str) -> RawUnary:
    async def refuse(request: bytes, context: Context) -> bytes:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, reason)
        raise AssertionError("abort returns by raising")

    return refuse


def _stream_error(message: str) -> bytes:
    return _encode(service_pb2.ModelStreamInferResponse(error_message=message))


def _encode(message: Any) -> bytes:
    # tritonclient's messages are untyped; this keeps the Any in one place.
    return bytes(message.SerializeToString())
