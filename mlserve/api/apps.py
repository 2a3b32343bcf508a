"""mlserve.v1.AppService over the access directory."""

from __future__ import annotations

from typing import Any

from google.protobuf.empty_pb2 import Empty

from mlserve.access.directory import Directory
from mlserve.api import convert_access as convert
from mlserve_api.v1 import app_pb2, app_pb2_grpc

Context = Any


class AppService(app_pb2_grpc.AppServiceServicer):
    def __init__(self, directory: Directory) -> None:
        self.directory = directory

    async def CreateApp(self, request: app_pb2.CreateAppRequest, context: Context) -> app_pb2.App:
        fields = convert.app_fields(request.app)
        return convert.app(await self.directory.create_app(request.app.name, fields))

    async def GetApp(self, request: app_pb2.GetAppRequest, context: Context) -> app_pb2.App:
        return convert.app(await self.directory.get_app(request.name))

    async def ListApps(
        self, request: app_pb2.ListAppsRequest, context: Context
    ) -> app_pb2.ListAppsResponse:
        page = await self.directory.list_apps(request.page_size, request.page_token)
        return app_pb2.ListAppsResponse(
            apps=[convert.app(record) for record in page.items],
            next_page_token=page.next_page_token,
        )

    async def UpdateApp(self, request: app_pb2.UpdateAppRequest, context: Context) -> app_pb2.App:
        record = await self.directory.update_app(
            request.app.name, convert.app_fields(request.app), list(request.update_mask.paths)
        )
        return convert.app(record)

    async def DeleteApp(self, request: app_pb2.DeleteAppRequest, context: Context) -> Empty:
        await self.directory.delete_app(request.name)
        return Empty()

    async def AddRoute(self, request: app_pb2.AddRouteRequest, context: Context) -> app_pb2.Route:
        return convert.route(await self.directory.add_route(request.app, request.model))

    async def RemoveRoute(self, request: app_pb2.RemoveRouteRequest, context: Context) -> Empty:
        await self.directory.remove_route(request.app, request.model)
        return Empty()

    async def ListRoutes(
        self, request: app_pb2.ListRoutesRequest, context: Context
    ) -> app_pb2.ListRoutesResponse:
        page = await self.directory.list_routes(request.app, request.page_size, request.page_token)
        return app_pb2.ListRoutesResponse(
            routes=[convert.route(record) for record in page.items],
            next_page_token=page.next_page_token,
        )

    async def AddConsumer(
        self, request: app_pb2.AddConsumerRequest, context: Context
    ) -> app_pb2.Consumer:
        return convert.consumer(await self.directory.add_consumer(request.app, request.name))

    async def RemoveConsumer(
        self, request: app_pb2.RemoveConsumerRequest, context: Context
    ) -> Empty:
        await self.directory.remove_consumer(request.app, request.name)
        return Empty()

    async def ListConsumers(
        self, request: app_pb2.ListConsumersRequest, context: Context
    ) -> app_pb2.ListConsumersResponse:
        page = await self.directory.list_consumers(
            request.app, request.page_size, request.page_token
        )
        return app_pb2.ListConsumersResponse(
            consumers=[convert.consumer(record) for record in page.items],
            next_page_token=page.next_page_token,
        )
