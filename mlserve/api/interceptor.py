"""Every call passes one guard: authenticate, authorize by the per-RPC rule
table (mlserve.access.rules), record writes in the audit trail, then map what
the domain raises.

A grpc.aio interceptor cannot see a call's outcome, so it wraps each method
handler's behaviour instead (once per method); unary and streaming handlers
get the same guard.
"""

from __future__ import annotations

import inspect
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
from grpc import aio

from mlserve.access import Access, current_principal
from mlserve.access.audit import AuditLog
from mlserve.access.rules import Rule, Who, authorize, rule_for
from mlserve.api.errors import status_code
from mlserve.core.errors import MLServeError

log = logging.getLogger(__name__)

# Fields naming what a call is about, most specific first (audit trail).
_RESOURCE_MESSAGES = ("model", "user", "workspace", "app", "server", "deployment")
_RESOURCE_FIELDS = ("name", "model", "workspace", "app", "user", "id", "upload_id")

if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]
else:
    Handler = grpc.RpcMethodHandler


class CallGuard(aio.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(self, access: Access, audit: AuditLog, anonymous_gateway: bool = False) -> None:
        self.access = access
        self.audit = audit
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
        return cached[1]

    async def _authenticate(self, context: aio.ServicerContext[Any, Any], method: str) -> None:
        authorization = _authorization(context)
        if authorization is None and self.anonymous_gateway and method.startswith(_GATEWAY):
            return
        principal = self.access.cached(authorization)
        if principal is None:
            principal = await self.access.authenticate(authorization)
        current_principal.set(principal)
        authorize(method, principal)

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
        incident = uuid.uuid4().hex[:12]
        log.error("unexpected error in %s (incident %s)", method, incident, exc_info=error)
        await context.abort(
            grpc.StatusCode.INTERNAL,
            f"internal error (incident {incident}); the server log has the details",
        )
        raise AssertionError("abort raises")  # pragma: no cover

    def _wrap(self, handler: Handler, method: str) -> Handler:
        serializers = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        rule = rule_for(method) or _UNKNOWN
        check = None if rule.who is Who.ANYONE else self._authenticate
        audit = self._audit if rule.audited else None
        fail = self._fail
        if handler.unary_unary or handler.stream_unary:
            inner: Any = handler.unary_unary or handler.stream_unary

            async def single_response(request: Any, context: Any) -> Any:
                try:
                    if check is not None:
                        await check(context, method)
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
                        await check(context, method)
                    return await writes(request, context)
                except Exception as error:
                    await fail(context, method, error)

        else:

            async def many_responses(request: Any, context: Any) -> Any:  # type: ignore[misc]
                try:
                    if check is not None:
                        await check(context, method)
                    async for response in streaming(request, context):
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


def _authorization(context: aio.ServicerContext[Any, Any]) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value if isinstance(value, str) else value.decode()
    return None
