"""A grpc.aio server that serves every service through generic handlers.

Generated ``add_*Servicer_to_server`` functions register a service twice: as a
generic handler and as "registered methods". grpc.aio keeps one pending
request-call per registered method and, for every call it accepts, hands all
of them to ``asyncio.wait`` (``_server_main_loop`` in grpc's
``server.pyx.pxi``), so each call costs time in proportion to the number of
methods on the port. MLServe serves about a hundred; on the gateway that was
about 150 µs of CPU per inference call, a quarter of the gateway's cost
(``python -m bench gateway``, bench/README.md). Through generic handlers
alone there is one pending request-call whatever the number of methods, and a
method is found by one dictionary lookup per service.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
from grpc import aio


class GenericHandlersOnly(aio.Server):
    """Wraps a grpc.aio server; drops "registered method" registrations.

    Nothing is lost: the generated code passes the same handlers to
    ``add_generic_rpc_handlers`` as well.
    """

    def __init__(self, server: aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(
        self, generic_rpc_handlers: Iterable[grpc.GenericRpcHandler[Any, Any]]
    ) -> None:
        self._server.add_generic_rpc_handlers(generic_rpc_handlers)

    def add_registered_method_handlers(self, service_name: str, method_handlers: Any) -> None:
        """Ignored: the same handlers arrive through ``add_generic_rpc_handlers``."""

    def add_insecure_port(self, address: str) -> int:
        return self._server.add_insecure_port(address)

    def add_secure_port(self, address: str, server_credentials: grpc.ServerCredentials) -> int:
        return self._server.add_secure_port(address, server_credentials)

    async def start(self) -> None:
        await self._server.start()

    async def stop(self, grace: float | None = None) -> None:
        await self._server.stop(grace)

    async def wait_for_termination(self, timeout: float | None = None) -> bool:
        return await self._server.wait_for_termination(timeout)
