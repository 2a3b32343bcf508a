"""Every call passes one guard: authenticate, then map what the domain raises.

A grpc.aio interceptor cannot see a call's outcome, so it wraps each method
handler's behaviour instead; unary and streaming handlers get the same guard.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

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
Guard = Callable[[Any], contextlib.AbstractAsyncContextManager[None]]

# Health stays open so load balancers and orchestrators can probe without a key.
PUBLIC_SERVICES = ("/grpc.health.v1.Health/",)


class CallGuard(aio.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(self, access: Access) -> None:
        self.access = access

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method: str = handler_call_details.method
        public = method.startswith(PUBLIC_SERVICES)
        return _wrap(handler, lambda context: self._guard(context, method, public))

    @contextlib.asynccontextmanager
    async def _guard(
        self, context: aio.ServicerContext[Any, Any], method: str, public: bool
    ) -> AsyncIterator[None]:
        try:
            if not public:
                principal = await self.access.authenticate(_authorization(context))
                current_principal.set(principal)
            yield
        except MLServeError as error:
            await context.abort(status_code(error), error.message)
        except (aio.AbortError, grpc.RpcError):
            raise
        except Exception:
            incident = uuid.uuid4().hex[:12]
            log.exception("unexpected error in %s (incident %s)", method, incident)
            await context.abort(
                grpc.StatusCode.INTERNAL,
                f"internal error (incident {incident}); the server log has the details",
            )


def _authorization(context: aio.ServicerContext[Any, Any]) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value if isinstance(value, str) else value.decode()
    return None


def _wrap(handler: Handler, guard: Guard) -> Handler:
    serializers = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        inner_uu = handler.unary_unary

        async def unary_unary(request: Any, context: Any) -> Any:
            async with guard(context):
                return await inner_uu(request, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, **serializers)
    if handler.stream_unary:
        inner_su = handler.stream_unary

        async def stream_unary(requests: Any, context: Any) -> Any:
            async with guard(context):
                return await inner_su(requests, context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, **serializers)
    if handler.unary_stream:
        inner_us: Any = handler.unary_stream

        async def unary_stream(request: Any, context: Any) -> AsyncIterator[Any]:
            async with guard(context):
                async for response in inner_us(request, context):
                    yield response

        return grpc.unary_stream_rpc_method_handler(unary_stream, **serializers)
    inner_ss: Any = handler.stream_stream

    async def stream_stream(requests: Any, context: Any) -> AsyncIterator[Any]:
        async with guard(context):
            async for response in inner_ss(requests, context):
                yield response

    return grpc.stream_stream_rpc_method_handler(stream_stream, **serializers)
