"""Every call passes one guard: authenticate, check the message, authorize by
the per-RPC rule table (mlserve.access.rules), record writes in the audit
trail, then map what the domain raises.

Authentication happens before the request message is read: grpc.aio calls
the interceptor with the call's metadata only, and a call refused there gets
a handler that never asks for its message, so a caller without a valid key
cannot make the server receive (and allocate) a large message. A message
that is read is checked against its method's limit (``MessageLimits``) and
decoded by the guard, so an oversized or undecodable message answers
RESOURCE_EXHAUSTED or INVALID_ARGUMENT with a sentence, never grpc's UNKNOWN.

A grpc.aio interceptor cannot see a call's outcome, so it wraps each method
handler's behaviour instead (once per method); unary and streaming handlers
get the same guard.
"""

from __future__ import annotations

import inspect
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
from google.protobuf.message import DecodeError
from grpc import aio

from mlserve.access import Access, current_principal
from mlserve.access.audit import AuditLog
from mlserve.access.rules import Rule, Who, authorize, rule_for
from mlserve.api.errors import status_code
from mlserve.core.errors import InvalidArgument, MLServeError, ResourceExhausted, Unauthenticated

log = logging.getLogger(__name__)

# Fields naming what a call is about, most specific first (audit trail).
_RESOURCE_MESSAGES = ("model", "user", "workspace", "app", "server", "deployment")
_RESOURCE_FIELDS = ("name", "model", "workspace", "app", "user", "id", "upload_id")

if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]
else:
    Handler = grpc.RpcMethodHandler

MIB = 1024 * 1024
# Management calls carry names, settings and small records.
MANAGEMENT_MESSAGE_BYTES = 4 * MIB
# What an upload message may carry besides a chunk's bytes: the field framing,
# or a header's config (at most 1 MiB) and manifest.
UPLOAD_FRAMING_BYTES = MIB
_UPLOADS = (
    "/mlserve.v1.ModelService/UploadModelVersion",
    "/mlserve.v1.ModelService/UploadArtifact",
)


@dataclass(frozen=True)
class MessageLimits:
    """The largest request message each kind of method accepts, in bytes."""

    inference: int
    """Triton's protocol: what the Tritons accept (the server's --max-message-bytes)."""
    upload: int
    """One upload chunk plus its framing, or an upload header."""
    management: int = MANAGEMENT_MESSAGE_BYTES
    """Every other call."""

    def for_method(self, method: str) -> int:
        if method.startswith(_GATEWAY):
            return self.inference
        if method in _UPLOADS:
            return self.upload
        return self.management


class CallGuard(aio.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(
        self,
        access: Access,
        audit: AuditLog,
        limits: MessageLimits,
        anonymous_gateway: bool = False,
    ) -> None:
        self.access = access
        self.audit = audit
        self.limits = limits
        # Benchmark mode only (``--bench-anonymous-gateway``): keyless gateway calls pass.
        self.anonymous_gateway = anonymous_gateway
        # method -> (the handler as served, its guarded twin); wrapping once
        # per method keeps the per-call cost to the guard itself.
        self._guarded: dict[str, tuple[Handler, Handler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method: str = handler_call_details.method
        cached = self._guarded.get(method)
        if cached is None or cached[0] is not handler:
            cached = (handler, self._wrap(handler, method))
            self._guarded[method] = cached
        if (rule_for(method) or _UNKNOWN).who is not Who.ANYONE:
            try:
                await self._authenticate(handler_call_details.invocation_metadata, method)
            except Exception as error:
                return self._refusal(handler, method, error)
        return cached[1]

    async def _authenticate(self, metadata: Sequence[Any] | None, method: str) -> None:
        """Set ``current_principal`` for this call (its task) from its metadata, or raise.

        The handler runs in the same task as the interceptor, so it sees it.
        """
        authorization = _authorization(metadata)
        if authorization is None and self.anonymous_gateway and method.startswith(_GATEWAY):
            return
        principal = self.access.cached(authorization)
        if principal is None:
            principal = await self.access.authenticate(authorization)
        current_principal.set(principal)

    def _authorize(self, method: str) -> None:
        principal = current_principal.get()
        if principal is None:
            if self.anonymous_gateway and method.startswith(_GATEWAY):
                return
            raise Unauthenticated("the call was not authenticated")  # pragma: no cover
        authorize(method, principal)

    def _decoder(self, handler: Handler, method: str) -> tuple[Callable[[bytes], Any] | None, bool]:
        """The request deserializer the guarded handler uses, and whether it checks anything.

        Checking costs nothing on the gateway's raw-bytes handlers when their
        limit is the server's own (grpc has already refused anything larger).
        """
        deserializer = handler.request_deserializer
        limit = self.limits.for_method(method)
        if deserializer is None and limit >= self.limits.inference:
            return None, False
        kind = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
        kind_name = getattr(kind, "full_name", "")

        def decode(data: bytes) -> Any:
            if len(data) > limit:
                return _Refused(
                    ResourceExhausted(
                        f"{method} takes messages of at most {limit} bytes; "
                        f"this one has {len(data)}"
                        + (": send smaller chunks" if method in _UPLOADS else "")
                    )
                )
            if deserializer is None:
                return data
            try:
                return deserializer(data)
            except Exception:
                return _Refused(InvalidArgument(_undecodable(method, kind_name)))

        return decode, True

    def _refusal(self, handler: Handler, method: str, error: Exception) -> Handler:
        """A handler that answers ``error`` without reading a single request message.

        A request-streaming handler receives messages only when it asks, so
        refusing through one leaves the caller's message unread.
        """
        fail = self._fail

        async def refuse(requests: Any, context: aio.ServicerContext[Any, Any]) -> None:
            await fail(context, method, error)

        if handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(refuse)
        return grpc.stream_unary_rpc_method_handler(refuse)

    async def _audit(self, method: str, request: Any, response: Any, outcome: str) -> None:
        principal = current_principal.get()
        if principal is None:
            return  # refused before anyone was known: not a write by someone
        try:
            resource = _resource(request) or _resource(response)
            await self.audit.record(principal, method, resource, outcome)
        except Exception:
            log.exception("could not record %s by %s in the audit trail", method, principal.name)

    async def _fail(
        self, context: aio.ServicerContext[Any, Any], method: str, error: Exception
    ) -> NoReturn:
        """Turn what a call raised into its status: the one place errors meet codes."""
        if isinstance(error, MLServeError):
            await context.abort(status_code(error), error.message)
        if isinstance(error, (aio.AbortError, grpc.RpcError)):
            raise error
        if isinstance(error, DecodeError):
            # Only requests are decoded in handlers: Tritons' answers pass as bytes.
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _undecodable(method))
        incident = uuid.uuid4().hex[:12]
        log.error("unexpected error in %s (incident %s)", method, incident, exc_info=error)
        await context.abort(
            grpc.StatusCode.INTERNAL,
            f"internal error (incident {incident}); the server log has the details",
        )
        raise AssertionError("abort raises")  # pragma: no cover

    def _wrap(self, handler: Handler, method: str) -> Handler:
        decode, checked = self._decoder(handler, method)
        admit = _admit_stream if handler.request_streaming else _admit
        if not checked:
            admit = _as_is
        serializers = {
            "request_deserializer": decode,
            "response_serializer": handler.response_serializer,
        }
        rule = rule_for(method) or _UNKNOWN
        check = None if rule.who is Who.ANYONE else self._authorize
        audit = self._audit if rule.audited else None
        fail = self._fail
        if handler.unary_unary or handler.stream_unary:
            inner: Any = handler.unary_unary or handler.stream_unary

            async def single_response(request: Any, context: Any) -> Any:
                try:
                    if check is not None:
                        check(method)
                    request = admit(request)
                    response = await inner(request, context)
                except Exception as error:
                    if audit is not None:
                        await audit(method, request, None, _outcome(error))
                    await fail(context, method, error)
                if audit is not None:
                    await audit(method, request, response, "OK")
                return response

            if handler.unary_unary:
                return grpc.unary_unary_rpc_method_handler(single_response, **serializers)
            return grpc.stream_unary_rpc_method_handler(single_response, **serializers)

        streaming: Any = handler.unary_stream or handler.stream_stream
        if not inspect.isasyncgenfunction(streaming):
            # A streaming handler may also be a coroutine that writes through
            # context.write() (the health service's Watch does).
            writes = streaming

            async def many_responses(request: Any, context: Any) -> Any:
                try:
                    if check is not None:
                        check(method)
                    return await writes(admit(request), context)
                except Exception as error:
                    await fail(context, method, error)

        else:

            async def many_responses(request: Any, context: Any) -> Any:  # type: ignore[misc]
                try:
                    if check is not None:
                        check(method)
                    async for response in streaming(admit(request), context):
                        yield response
                except Exception as error:
                    await fail(context, method, error)

        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(many_responses, **serializers)
        return grpc.stream_stream_rpc_method_handler(many_responses, **serializers)


_GATEWAY = "/inference.GRPCInferenceService/"
# A method missing from the rule table is authenticated, then refused by
# authorize(): nothing is allowed by default.
_UNKNOWN = Rule(Who.ANY_KEY)


def _outcome(error: Exception) -> str:
    if isinstance(error, MLServeError):
        return status_code(error).name
    if isinstance(error, aio.AbortError):
        return "ABORTED"
    return "INTERNAL"


def _resource(message: Any) -> str:
    """The name of what ``message`` is about, or "" (iterators and unknown shapes)."""
    if message is None or not hasattr(message, "DESCRIPTOR"):
        return ""
    fields = message.DESCRIPTOR.fields_by_name
    for name in _RESOURCE_MESSAGES:
        if name in fields and fields[name].message_type is not None and message.HasField(name):
            inner = _resource(getattr(message, name))
            if inner:
                return inner
    for name in _RESOURCE_FIELDS:
        if name in fields and fields[name].message_type is None:
            value = getattr(message, name)
            if value:
                return str(value)
    return ""


def _authorization(metadata: Sequence[Any] | None) -> str | None:
    """The call's one ``authorization`` value, stripped (perf_analyzer sends ': Bearer …').

    Two values are refused: which one a proxy or the server would pick
    differs, and the key checked must be the key the caller meant.
    """
    values = [value for key, value in metadata or () if key == "authorization"]
    if len(values) > 1:
        raise Unauthenticated(
            f"the call has {len(values)} 'authorization' headers: send exactly one, "
            "'authorization: Bearer <key>'"
        )
    if not values:
        return None
    value = values[0]
    return (value if isinstance(value, str) else value.decode("utf-8", "replace")).strip()


@dataclass(frozen=True)
class _Refused:
    """What the guard's decoder returns for a message it will not hand on."""

    error: MLServeError


def _admit(request: Any) -> Any:
    if isinstance(request, _Refused):
        raise request.error
    return request


async def _admit_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        yield _admit(request)


def _as_is(request: Any) -> Any:
    return request


def _undecodable(method: str, kind: str = "") -> str:
    what = f"a valid {kind} message" if kind else "a valid protobuf message"
    return f"the {method} request could not be decoded: send {what}"
