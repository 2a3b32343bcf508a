"""mlserve.v1.ServerService over the fleet."""

from __future__ import annotations

from typing import Any

from google.protobuf.empty_pb2 import Empty

from mlserve.api import convert
from mlserve.deploy.fleet import Fleet, ServerRecord
from mlserve.deploy.lifecycle import Deployments
from mlserve.deploy.targets import NO_MEMORY
from mlserve_api.v1 import server_pb2, server_pb2_grpc

Context = Any


class ServerService(server_pb2_grpc.ServerServiceServicer):
    def __init__(self, fleet: Fleet, deployments: Deployments) -> None:
        self.fleet = fleet
        self.deployments = deployments

    async def _servers(self, records: list[ServerRecord]) -> list[server_pb2.Server]:
        """``records`` with what is served on each and its used and free memory."""
        serving = await self.deployments.serving()
        memory = await self.deployments.placer.memory()
        return [
            convert.server(record, serving.get(record.name, ()), memory.get(record.name, NO_MEMORY))
            for record in records
        ]

    async def _server(self, record: ServerRecord) -> server_pb2.Server:
        (found,) = await self._servers([record])
        return found

    async def RegisterServer(
        self, request: server_pb2.RegisterServerRequest, context: Context
    ) -> server_pb2.Server:
        record = await self.fleet.register(
            request.server.name, convert.server_fields(request.server)
        )
        return await self._server(record)

    async def GetServer(
        self, request: server_pb2.GetServerRequest, context: Context
    ) -> server_pb2.Server:
        return await self._server(await self.fleet.get(request.name))

    async def ListServers(
        self, request: server_pb2.ListServersRequest, context: Context
    ) -> server_pb2.ListServersResponse:
        page = await self.fleet.list_servers(request.page_size, request.page_token)
        return server_pb2.ListServersResponse(
            servers=await self._servers(page.items),
            next_page_token=page.next_page_token,
        )

    async def UpdateServer(
        self, request: server_pb2.UpdateServerRequest, context: Context
    ) -> server_pb2.Server:
        record = await self.fleet.update(
            request.server.name,
            convert.server_fields(request.server),
            list(request.update_mask.paths),
        )
        return await self._server(record)

    async def DeleteServer(
        self, request: server_pb2.DeleteServerRequest, context: Context
    ) -> Empty:
        await self.fleet.delete(request.name)
        return Empty()
