"""Forwarding an inference call to a Triton that serves its model.

The gateway's data plane, apart from any gRPC servicer: requests and
responses cross as raw bytes (no parse, no re-serialise; ``wire`` reads the
two routing fields) and a call's deadline arrives as a function returning the
seconds left. ``mlserve.api.inference`` only converts: it hands over what it
received and turns what this raises into a status.

- Retries and failover: a replica that answers UNAVAILABLE is marked suspect
  and another ready one is tried, up to ``MAX_ATTEMPTS`` (an app's consumers
  get 1 + the app's retries). A Triton's own answers (bad input, model
  errors) are final and pass through unchanged.
- Timeouts: the caller's deadline, capped by an app consumer's timeout.
- Stream fan-out: one upstream stream per replica used, responses merged as
  they come.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import grpc
from grpc import aio
from tritonclient.grpc import service_pb2

from mlserve.access import Access, current_principal
from mlserve.core.errors import InvalidArgument, MLServeError, PermissionDenied, Unavailable
from mlserve.deploy.busy import ANY_SERVER, BusyMarks
from mlserve.deploy.fleet import READY, Fleet
from mlserve.gateway import wire
from mlserve.gateway.router import Choice, Route, Router
from mlserve.gateway.stats import InferenceStats
from mlserve.monitor import InferenceLog
from mlserve.monitor.records import STREAMED

MAX_ATTEMPTS = 3
# How long a stream's request waits for its cold on-demand model to load when the
# stream has no deadline (and no app timeout): a load that hangs must not hold the
# stream, its later requests and the pump forever.
STREAM_WARM_SECONDS = 120.0
# Calls about one version that name none go out naming the deployed one: while a
# rollout loads the next version beside it, Triton's own choice (the highest)
# would move them before the route does. ModelStatistics without a version
# keeps asking for every version.
_PINNED_METHODS = frozenset({"ModelInfer", "ModelReady", "ModelMetadata", "ModelConfig"})
# A stream request waiting for its answer: model, version, bytes, time.time(), perf_counter().
_Sent = tuple[str, int, bytes, float, float]


class Call(Protocol):
    """What forwarding reads of the call it serves (a grpc.aio ServicerContext has both)."""

    def time_remaining(self) -> float | None:
        """Seconds left before the caller's deadline, None when it set none."""

    def invocation_metadata(self) -> Iterable[tuple[str, str | bytes]] | None:
        """The call's headers."""


DescribeError = Callable[[BaseException], tuple[str, str]]
"""A failed call's (status code name, message), as the client sees them."""


@dataclass(frozen=True)
class ServedModel:
    """One entry of MLServe's registry: a deployed model and whether a replica serves it."""

    route: Route
    serving: bool


class Forwarder:
    def __init__(
        self,
        router: Router,
        fleet: Fleet,
        stats: InferenceStats,
        access: Access,
        inference_log: InferenceLog | None = None,
        describe_error: DescribeError | None = None,
        busy: BusyMarks | None = None,
    ) -> None:
        self.router = router
        # Requests in flight per model, published for every process's evictor.
        self.busy = busy or BusyMarks()
        self.fleet = fleet
        self.stats = stats
        self.access = access
        self.log = inference_log
        self.describe_error = describe_error or (lambda error: (type(error).__name__, str(error)))
        self._warm: Callable[[str], Awaitable[bool]] | None = None

    def load_on_demand(self, warm: Callable[[str], Awaitable[bool]]) -> None:
        """Have ``warm(model)`` load a cold on-demand model before a call to it is
        routed (the deployments' single-flight cold start)."""
        self._warm = warm

    async def _warm_if_cold(self, model: str, timeout: float | None) -> None:
        """Load ``model`` first when it is routed to no ready copy and loads on
        demand; the call waits for that load within its ``timeout``."""
        route = self.router.route(model)
        if self._warm is None or (route is not None and route.servers):
            return
        try:
            # Waiting here counts as in flight: no process may evict the copy
            # being loaded for it before it is routed there.
            async with self.busy.holding(ANY_SERVER, model):
                loaded = await asyncio.wait_for(self._warm(model), timeout)
        except TimeoutError:
            raise Unavailable(
                f"model {model!r} is loading on demand and was not ready within the "
                "call's deadline; retry"
            ) from None
        if loaded:
            await self.router.reload()

    async def _may_infer(self, model: str) -> tuple[int, float | None]:
        """Raise unless the caller may use ``model``: (attempts, per-call timeout or None)."""
        principal = current_principal.get()
        if principal is None:
            return MAX_ATTEMPTS, None
        await self.access.check_infer(principal, model)
        if principal.is_consumer:
            return 1 + principal.retries, principal.timeout_seconds or None
        return MAX_ATTEMPTS, None

    async def visible(self, model: str) -> bool:
        """Whether the caller may use ``model`` (a private one answers like a missing one)."""
        try:
            await self._may_infer(model)
        except MLServeError:
            return False
        return True

    async def forward(
        self, method: str, request: bytes, model: str, version: str, call: Call
    ) -> tuple[bytes, int]:
        """Send ``request`` to a ready replica; returns the response and the version used.

        Raises: as ``send``.
        """
        response, choice = await self.send(method, request, model, version, call)
        return response, choice.version

    async def send(
        self,
        method: str,
        request: bytes,
        model: str,
        version: str,
        call: Call,
        *,
        warm: bool = False,
    ) -> tuple[bytes, Choice]:
        """Send ``request`` to a ready replica; returns the response and the replica used.
        With ``warm`` (inferences), a cold on-demand model is loaded first.

        The common case — a routed model, a client already open — awaits
        nothing but the forwarded call itself.

        Raises:
            MLServeError: the caller may not use the model, it is not deployed,
                or no replica is reachable within the attempts allowed.
            aio.AioRpcError: a Triton's own final answer, to pass on unchanged.
        """
        attempts, app_timeout = await self._may_infer(model)
        timeout = _within(call.time_remaining(), app_timeout)
        if warm:
            await self._warm_if_cold(model, timeout)
        tried: frozenset[str] = frozenset()
        while True:
            route = self.router.route(model)
            if route is None or not route.servers:
                choice = await self.router.choose(model, version, tried)
            else:
                choice = self.router.choose_routed(route, version, tried)
            client = self.fleet.cached_client(choice.server) or await self.fleet.client(
                choice.server
            )
            sent = request
            if not version and method in _PINNED_METHODS:
                sent = wire.with_version(request, choice.version)
            await self.busy.enter(choice.server, model)
            try:
                with self.router.in_flight(choice.server):
                    response: bytes = await client.raw_unary(method)(sent, timeout=timeout)
                return response, choice
            except aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                tried |= {choice.server}
                self.fleet.suspect(choice.server)
                if len(tried) >= attempts:
                    raise
            finally:
                self.busy.leave(choice.server, model)

    async def routed(self, method: str, request: bytes, call: Call) -> bytes:
        """Forward a call about one model (ModelMetadata, ModelConfig) to a replica of it."""
        model, version = routing_fields(method, request)
        response, _ = await self.forward(method, request, model, version, call)
        return response

    async def infer(self, request: bytes, call: Call) -> bytes:
        """ModelInfer: counted per model version, timed, and handed to the inference log
        (raw bytes; it decides what to keep) whether it succeeds or not."""
        model, version = routing_fields("ModelInfer", request)
        began = time.time()
        start = time.perf_counter()
        try:
            response, choice = await self.send(
                "ModelInfer", request, model, version, call, warm=True
            )
        except BaseException as error:
            self._count(model, False)
            if self.log is not None and isinstance(error, Exception):
                self._log_failure(model, request, error, began, time.perf_counter() - start)
            raise
        latency = time.perf_counter() - start
        self.stats.record(model, choice.version, True, latency)
        if self.log is not None:
            self.log.capture(model, choice.version, choice.server, current_principal.get(),
                             request, response, "OK", "", began, latency,
                             partial(_header, call))  # fmt: skip
        return response

    def _log_failure(
        self, model: str, request: bytes, error: Exception, began: float, latency: float
    ) -> None:
        assert self.log is not None
        route = self.router.route(model)
        if route is None:
            # Not a deployment: nothing to record it under (and a name from the wire
            # that no deployment validated must never become a path).
            return
        status, message = self.describe_error(error)
        self.log.capture(model, route.version, "", current_principal.get(),
                         request, None, status, message, began, latency)  # fmt: skip

    def _count(self, model: str, ok: bool) -> None:
        route = self.router.route(model)
        if route is not None:
            self.stats.record(model, route.version, ok)

    async def ready(self, request: bytes, call: Call) -> bytes:
        """ModelReady; like Triton, a model that cannot serve is "not ready", not an error."""
        model, version = routing_fields("ModelReady", request)
        try:
            response, _ = await self.forward("ModelReady", request, model, version, call)
        except PermissionDenied:
            raise
        except MLServeError:
            return wire.encode(service_pb2.ModelReadyResponse(ready=False))
        return response

    async def statistics(self, request: bytes, call: Call) -> bytes:
        """ModelStatistics of one model, or merged over every deployed model the caller sees."""
        parsed = service_pb2.ModelStatisticsRequest.FromString(request)
        if parsed.name:
            response, _ = await self.forward(
                "ModelStatistics", request, parsed.name, parsed.version, call
            )
            return response
        merged = service_pb2.ModelStatisticsResponse()
        for route in self.router.routes():
            if not route.servers or not await self.visible(route.model):
                continue
            single = service_pb2.ModelStatisticsRequest(name=route.model)
            with contextlib.suppress(MLServeError):
                raw, _ = await self.forward(
                    "ModelStatistics", wire.encode(single), route.model, "", call
                )
                merged.model_stats.extend(
                    service_pb2.ModelStatisticsResponse.FromString(raw).model_stats
                )
        return wire.encode(merged)

    async def served_models(self, ready_only: bool) -> list[ServedModel]:
        """Every deployed model the caller sees, and whether a replica serves it now."""
        served: list[ServedModel] = []
        for route in self.router.routes():
            if not await self.visible(route.model):
                continue
            serving = any(self.fleet.status(s).state == READY for s in route.servers)
            if serving or not ready_only:
                served.append(ServedModel(route, serving))
        return served

    async def stream(
        self, requests: AsyncIterator[bytes], stream_call: Call
    ) -> AsyncIterator[bytes]:
        """ModelStreamInfer: one upstream stream per replica used; responses merged as they come.

        A request to a cold on-demand model waits for its load within the
        stream's deadline (capped by an app consumer's timeout), or
        ``STREAM_WARM_SECONDS`` when neither is set. A request that cannot be
        routed, or an upstream that fails, answers with a response carrying
        ``error_message``; the stream goes on. Each
        answered request goes to the inference log like a ModelInfer call.
        """
        responses: asyncio.Queue[bytes | None] = asyncio.Queue()
        upstreams: dict[str, Any] = {}
        waiting: dict[str, deque[_Sent]] = {}
        readers: list[asyncio.Task[None]] = []
        principal = current_principal.get()

        async def read(call: Any, server: str, sent: deque[_Sent]) -> None:
            # Triton answers a stream's requests in order, so each response
            # settles the oldest request still waiting on that upstream.
            try:
                async for response in call:
                    if sent:
                        model, version, request, began, start = sent.popleft()
                        self.busy.leave(server, model)
                        failed = wire.stream_response_failed(response)
                        latency = time.perf_counter() - start
                        self.stats.record(model, version, not failed, latency)
                        if self.log is not None:
                            self.log.capture(model, version, server, principal, request,
                                             response, STREAMED, "", began, latency)  # fmt: skip
                    await responses.put(response)
            except aio.AioRpcError as error:
                await responses.put(_stream_error(error.details() or error.code().name))
            finally:
                while sent:  # never answered: no longer in flight either
                    self.busy.leave(server, sent.popleft()[0])
                # Nothing reads this upstream any more: the next request to the
                # server opens a new one instead of waiting on this one forever.
                if upstreams.get(server) is call:
                    del upstreams[server]

        async def pump() -> None:
            try:
                async for request in requests:
                    try:
                        model, version = wire.model_name_and_version(request)
                        _, app_timeout = await self._may_infer(model)
                        timeout = _within(stream_call.time_remaining(), app_timeout)
                        await self._warm_if_cold(
                            model, STREAM_WARM_SECONDS if timeout is None else timeout
                        )
                        choice = await self.router.choose(model, version)
                    except (MLServeError, wire.WireError, UnicodeDecodeError) as error:
                        await responses.put(_stream_error(str(error)))
                        continue
                    call = upstreams.get(choice.server)
                    if call is None:
                        client = await self.fleet.client(choice.server)
                        call = upstreams[choice.server] = client.raw_stream("ModelStreamInfer")()
                        waiting[choice.server] = deque()
                        readers.append(
                            asyncio.create_task(read(call, choice.server, waiting[choice.server]))
                        )
                    await self.busy.enter(choice.server, model)
                    queue = waiting[choice.server]
                    entry = (model, choice.version, request, time.time(), time.perf_counter())
                    queue.append(entry)
                    try:
                        await call.write(
                            request if version else wire.with_version(request, choice.version)
                        )
                    except BaseException:
                        # Not sent: out of flight, unless the reader already counted it out.
                        if entry in queue:
                            queue.remove(entry)
                            self.busy.leave(choice.server, model)
                        raise
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


def _within(deadline: float | None, app_timeout: float | None) -> float | None:
    """Seconds a call may take: the sooner of its deadline and an app consumer's
    timeout, None when neither is set."""
    if deadline is None or app_timeout is None:
        return app_timeout if deadline is None else deadline
    return min(deadline, app_timeout)


def _header(call: Call, name: str) -> str | None:
    """One header of ``call`` (read only when a sampling key names a header)."""
    for key, value in call.invocation_metadata() or ():
        if key == name:
            return value if isinstance(value, str) else value.decode(errors="replace")
    return None


def routing_fields(method: str, request: bytes) -> tuple[str, str]:
    """The model name and version a request names; InvalidArgument when it is not a message."""
    try:
        return wire.model_name_and_version(request)
    except (wire.WireError, UnicodeDecodeError):
        raise InvalidArgument(f"the {method} request is not a valid message") from None


def _stream_error(message: str) -> bytes:
    return wire.encode(service_pb2.ModelStreamInferResponse(error_message=message))
