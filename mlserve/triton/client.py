"""A small asyncio client for the Triton calls MLServe's control plane makes.

It speaks Triton's gRPC protocol through the stubs ``tritonclient`` ships
(``service_pb2``/``service_pb2_grpc``) over one reused ``grpc.aio`` channel,
and turns gRPC failures into MLServe's domain errors so nothing above this
module sees a gRPC status.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from mlserve.core.errors import (
    FailedPrecondition,
    InvalidArgument,
    MLServeError,
    NotFound,
    Unavailable,
)
from mlserve.core.names import check_relative_path

__all__ = ["IndexEntry", "TritonClient"]

# Model files pushed in a load request can be large; gRPC's 4 MiB default
# would refuse them (and large inference results).
_MAX_MESSAGE_BYTES = 2**31 - 1
# gRPC waits ever longer between reconnects to a server that refuses (1 s, times
# 1.6 each, up to 120 s) and fails calls at once meanwhile: after a 30 s outage a
# Triton that was back was seen 19 s later, health rounds every 0.5 s notwithstanding.
# Reconnecting on loopback or a LAN is cheap: try at least every 2 s.
_MAX_RECONNECT_BACKOFF_MS = 2000
_CHANNEL_OPTIONS = (
    ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
    ("grpc.max_reconnect_backoff_ms", _MAX_RECONNECT_BACKOFF_MS),
)
_UNREACHABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
# Index states that mean a version still occupies the server.
_RESIDENT_STATES = frozenset({"READY", "UNLOADING", "LOADING"})
_UNLOAD_POLL_INTERVAL = 0.05
_SERVICE = "inference.GRPCInferenceService"


@dataclass(frozen=True)
class IndexEntry:
    """One row of Triton's repository index: a model version and its state."""

    name: str
    version: int  # 0 when Triton names no version (a model it has not loaded)
    state: str  # "" (never loaded), LOADING, READY, UNLOADING, UNAVAILABLE
    reason: str


class TritonClient:
    """Control-plane calls to one Triton server.

    ``name`` is the server's name in MLServe; it appears in every error so the
    person reading one knows which registered server misbehaved.
    """

    def __init__(self, name: str, address: str) -> None:
        self._name = name
        self._address = address
        self._channel: grpc.aio.Channel | None = None
        self._stub: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._raw: dict[tuple[str, str], Any] = {}  # raw callables on the current channel

    @property
    def name(self) -> str:
        return self._name

    @property
    def address(self) -> str:
        return self._address

    async def close(self) -> None:
        """Close the channel; the client reopens it if used again."""
        channel, self._channel, self._stub, self._loop = self._channel, None, None, None
        if channel is not None:
            await channel.close(grace=None)

    async def is_live(self, timeout: float = 2.0) -> bool:
        """True if the server answers ServerLive with live; False, never an error, if it
        does not answer within ``timeout`` seconds (hung, stopped, gone)."""
        try:
            live = await self._call("ServerLive", service_pb2.ServerLiveRequest(), timeout)
        except (grpc.aio.AioRpcError, asyncio.TimeoutError):
            return False
        return bool(live.live)

    async def is_ready(self, timeout: float = 2.0) -> bool:
        """True if the server is live and ready; False, never an error, if unreachable.

        Beware: a Triton running with its default ``--strict-readiness=true``
        answers "not ready" from the first failed model load on, even after
        that model is unloaded. The embedded launcher turns that off.
        """
        try:
            live = await self._call("ServerLive", service_pb2.ServerLiveRequest(), timeout)
            if not live.live:
                return False
            ready = await self._call("ServerReady", service_pb2.ServerReadyRequest(), timeout)
        except (grpc.aio.AioRpcError, asyncio.TimeoutError):
            return False
        return bool(ready.ready)

    async def index(self, timeout: float = 5.0) -> list[IndexEntry]:
        """Every model version the server knows of, loaded or not."""
        request = service_pb2.RepositoryIndexRequest(ready=False)
        try:
            response = await self._call("RepositoryIndex", request, timeout)
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc, "list the models of") from None
        return [
            IndexEntry(
                name=model.name,
                version=int(model.version) if model.version else 0,
                state=model.state,
                reason=model.reason,
            )
            for model in response.models
        ]

    async def load(
        self,
        model: str,
        *,
        config_json: str | None = None,
        files: Mapping[str, bytes] | None = None,
        timeout: float = 120.0,
    ) -> None:
        """Load (or reload) ``model`` and return once Triton has finished.

        ``config_json`` replaces the repository's ``config.pbtxt`` (it is a
        ModelConfig in protobuf's JSON form). ``files`` maps paths relative to
        the model directory (``"1/model.py"``) to their bytes; Triton then
        loads from those alone, not from its repository, and requires
        ``config_json`` alongside them.
        """
        if files and config_json is None:
            # Triton would answer only "failed to poll from model repository".
            raise InvalidArgument(
                f"loading model '{model}' from pushed files needs its config as well"
            )
        request = service_pb2.RepositoryModelLoadRequest(model_name=model)
        if config_json is not None:
            request.parameters["config"].string_param = config_json
        for path, content in (files or {}).items():
            request.parameters["file:" + check_relative_path(path)].bytes_param = content
        try:
            await self._call("RepositoryModelLoad", request, timeout)
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc, "load", model) from None

    async def unload(self, model: str, timeout: float = 60.0) -> None:
        """Unload every version of ``model`` and wait until Triton has let go of it.

        Raises NotFound if Triton knows no model of that name. Triton answers
        the unload request while the model is still UNLOADING (about a second
        for a Python-backend model), so the index is polled until it is gone
        and the caller may reload or free its files at once.
        """
        deadline = time.monotonic() + timeout
        # Triton returns OK for unloading a name it never heard of, so ask
        # first. Models loaded from pushed files never appear in the index
        # (it lists repository directories only), hence the readiness check.
        listed = any(entry.name == model for entry in await self.index(timeout))
        if not listed and not await self.model_ready(model, timeout=_remaining(deadline)):
            raise NotFound(f"Triton server '{self._name}' has no model '{model}' to unload")
        request = service_pb2.RepositoryModelUnloadRequest(model_name=model)
        try:
            await self._call("RepositoryModelUnload", request, _remaining(deadline))
            # A pushed model cannot be watched: once it is not ready, which
            # happens at once, Triton shows nothing more.
            if listed:
                await self._wait_until_gone(model, deadline)
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc, "unload", model) from None

    async def model_ready(self, model: str, version: int = 0, timeout: float = 5.0) -> bool:
        """True if ``model`` (``version``, or Triton's choice when 0) can serve requests."""
        request = service_pb2.ModelReadyRequest(name=model, version=str(version) if version else "")
        try:
            response = await self._call("ModelReady", request, timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in _UNREACHABLE:
                raise self._error(exc, "query", model) from None
            # Triton answers NOT_FOUND-like errors for models it never heard of.
            return False
        return bool(response.ready)

    async def _wait_until_gone(self, model: str, deadline: float) -> None:
        while True:
            if not await self._resident(model, deadline):
                return
            await asyncio.sleep(_UNLOAD_POLL_INTERVAL)

    async def _resident(self, model: str, deadline: float) -> bool:
        if time.monotonic() >= deadline:
            raise Unavailable(
                f"Triton server '{self._name}' at {self._address} did not finish "
                f"unloading model '{model}' in time"
            )
        entries = await self._call(
            "RepositoryIndex", service_pb2.RepositoryIndexRequest(ready=False), _remaining(deadline)
        )
        return any(e.name == model and e.state in _RESIDENT_STATES for e in entries.models)

    async def inference_totals(
        self, model: str, timeout: float = 5.0
    ) -> dict[int, tuple[int, int, int]]:
        """Triton's cumulative successful inferences of ``model``: version -> (count, ns,
        queue ns): how many, the time they took (queue and compute) and the part of it
        they waited in the queue.

        Raises:
            Unavailable: the server does not answer (a model it does not serve
                answers an empty dict).
        """
        request = service_pb2.ModelStatisticsRequest(name=model)
        try:
            response = await self._call("ModelStatistics", request, timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in _UNREACHABLE:
                raise self._error(exc, "query", model) from None
            return {}
        return {
            int(stats.version): (
                int(stats.inference_stats.success.count),
                int(stats.inference_stats.success.ns),
                int(stats.inference_stats.queue.ns),
            )
            for stats in response.model_stats
            if stats.version.isdigit()
        }

    async def last_inferences(self, timeout: float = 5.0) -> dict[str, float]:
        """When each model this server has loaded last answered an inference, any
        version, as Triton's statistics say (``last_inference``, on the server's
        clock): model -> seconds since the epoch; a model never used is absent.
        One call for every model: whichever MLServe process (or client) sent the
        inferences, this is the same answer.

        Raises:
            Unavailable: the server does not answer.
        """
        request = service_pb2.ModelStatisticsRequest()
        try:
            response = await self._call("ModelStatistics", request, timeout)
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc, "query") from None
        last: dict[str, float] = {}
        for stats in response.model_stats:
            if stats.last_inference:
                seconds = stats.last_inference / 1000
                last[stats.name] = max(last.get(stats.name, 0.0), seconds)
        return last

    async def reported_memory(self, model: str, version: int, timeout: float = 5.0) -> int:
        """The bytes Triton's model statistics report ``model`` ``version`` holding
        (its ``memory_usage``, summed over host and device); 0 when the backend
        reports none (the Python backend, for one) or the server has no such model.

        Raises:
            Unavailable: the server does not answer.
        """
        request = service_pb2.ModelStatisticsRequest(name=model, version=str(version))
        try:
            response = await self._call("ModelStatistics", request, timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in _UNREACHABLE:
                raise self._error(exc, "query", model) from None
            return 0
        return sum(
            int(usage.byte_size) for stats in response.model_stats for usage in stats.memory_usage
        )

    def raw_unary(self, method: str) -> Any:
        """A bytes-in, bytes-out callable for one unary method of Triton's service.

        The gateway forwards requests and responses as the bytes it received,
        so tensors are never parsed or re-serialised on the way through.
        """
        return self._raw_callable("unary_unary", method)

    def raw_stream(self, method: str) -> Any:
        """A bytes-in, bytes-out callable for a bidirectional streaming method."""
        return self._raw_callable("stream_stream", method)

    def _raw_callable(self, kind: str, method: str) -> Any:
        self._stub_for_running_loop()
        callable_ = self._raw.get((kind, method))
        if callable_ is None:
            factory = getattr(self._channel, kind)
            callable_ = factory(f"/{_SERVICE}/{method}", None, None)
            self._raw[(kind, method)] = callable_
        return callable_

    async def _call(self, method: str, request: Any, timeout: float) -> Any:
        stub = self._stub_for_running_loop()
        return await getattr(stub, method)(request, timeout=timeout)

    def _stub_for_running_loop(self) -> Any:
        # grpc.aio channels belong to the event loop they were made on.
        # Callers (tests, CLI commands) may use successive asyncio.run calls,
        # so a channel from a finished loop is replaced rather than reused.
        loop = asyncio.get_running_loop()
        if self._channel is None or self._loop is not loop:
            self._channel = grpc.aio.insecure_channel(self._address, options=_CHANNEL_OPTIONS)
            self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
            self._raw.clear()
            self._loop = loop
        return self._stub

    def _error(self, exc: grpc.aio.AioRpcError, action: str, model: str = "") -> MLServeError:
        """Translate a failed call into the domain error a caller can act on."""
        code = exc.code()
        details = _tidy(exc.details() or code.name, model)
        if code in _UNREACHABLE:
            return Unavailable(
                f"Triton server '{self._name}' at {self._address} is unreachable: {details}"
            )
        if action == "unload" and code in (
            grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.INVALID_ARGUMENT,
        ):
            return NotFound(
                f"Triton server '{self._name}' has no model '{model}' to unload: {details}"
            )
        if action == "load":
            return FailedPrecondition(
                f"Triton server '{self._name}' could not load model '{model}': {details}"
            )
        target = f" model '{model}' on" if model else ""
        return FailedPrecondition(
            f"could not {action}{target} Triton server '{self._name}': {details}"
        )


def _tidy(details: str, model: str) -> str:
    # Triton wraps its reason as "load failed for model 'x': <reason>;\n";
    # our message names the model already.
    details = details.strip().removesuffix(";").rstrip()
    return details.removeprefix(f"load failed for model '{model}': ")


def _remaining(deadline: float) -> float:
    # A small floor so a nearly spent budget still makes one real attempt.
    return max(deadline - time.monotonic(), 0.1)
