"""Every call passes one guard: authenticate, then map what the domain raises.

A grpc.aio interceptor cannot see a call's outcome, so it wraps each method
handler's behaviour instead (once per method); unary and streaming handlers
get the same guard.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
from grpc import aio

from mlserve.access import Access, Principal
from mlserve.api.errors import status_code
from mlserve.errors import MLServeError

log = logging.getLogger(__name__)

# The caller of the RPC being served; access rules of later issues read it.
current_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "current_principal", default=None
)

if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]
else:
    Handler = grpc.RpcMethodHandler

# Health stays open so load balancers and orchestrators can probe without a key.
PUBLIC_SERVICES = ("/grpc.health.v1.Health/",)


class CallGuard(aio.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(self, access: Access) -> None:
        self.access = access
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

    async def _authenticate(self, context: aio.ServicerContext[Any, Any]) -> None:
        authorization = _authorization(context)
        principal = self.access.cached(authorization)
        if principal is None:
            principal = await self.access.authenticate(authorization)
        current_principal.set(principal)

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
        check = None if method.startswith(PUBLIC_SERVICES) else self._authenticate
        fail = self._fail
        if handler.unary_unary or handler.stream_unary:
            inner: Any = handler.unary_unary or handler.stream_unary

            async def single_response(request: Any, context: Any) -> Any:
                try:
                    if check is not None:
                        await check(context)
                    return await inner(request, context)
                except Exception as error:
                    await fail(context, method, error)

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
                        await check(context)
                    return await writes(request, context)
                except Exception as error:
                    await fail(context, method, error)

        else:

            async def many_responses(request: Any, context: Any) -> Any:  # type: ignore[misc]
                try:
                    if check is not None:
                        await check(context)
                    async for response in streaming(request, context):
                        yield response
                except Exception as error:
                    await fail(context, method, error)

        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(many_responses, **serializers)
        return grpc.stream_stream_rpc_method_handler(many_responses, **serializers)


def _authorization(context: aio.ServicerContext[Any, Any]) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value if isinstance(value, str) else value.decode()
    return None
