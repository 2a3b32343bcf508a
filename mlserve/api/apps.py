"""mlserve.v1.AppService over the access domain (apps, their routes and consumers)."""

from __future__ import annotations

from typing import Any

from google.protobuf.empty_pb2 import Empty

from mlserve.access.apps import Apps
from mlserve.api import convert_access as convert
from mlserve_api.v1 import app_pb2, app_pb2_grpc

Context = Any


class AppService(app_pb2_grpc.AppServiceServicer):
    def __init__(self, apps: Apps) -> None:
        self.apps = apps

    async def CreateApp(self, request: app_pb2.CreateAppRequest, context: Context) -> app_pb2.App:
        fields = convert.app_fields(request.app)
        return convert.app(await self.apps.create_app(request.app.name, fields))

    async def GetApp(self, request: app_pb2.GetAppRequest, context: Context) -> app_pb2.App:
        return convert.app(await self.apps.get_app(request.name))

    async def ListApps(
        self, request: app_pb2.ListAppsRequest, context: Context
    ) -> app_pb2.ListAppsResponse:
        page = await self.apps.list_apps(request.page_size, request.page_token)
        return app_pb2.ListAppsResponse(
            apps=[convert.app(record) for record in page.items],
            next_page_token=page.next_page_token,
        )

    async def UpdateApp(self, request: app_pb2.UpdateAppRequest, context: Context) -> app_pb2.App:
        record = await self.apps.update_app(
            request.app.name, convert.app_fields(request.app), list(request.update_mask.paths)
        )
        return convert.app(record)

    async def DeleteApp(self, request: app_pb2.DeleteAppRequest, context: Context) -> Empty:
        await self.apps.delete_app(request.name)
        return Empty()

    async def AddRoute(self, request: app_pb2.AddRouteRequest, context: Context) -> app_pb2.Route:
        return convert.route(await self.apps.add_route(request.app, request.model))

    async def RemoveRoute(self, request: app_pb2.RemoveRouteRequest, context: Context) -> Empty:
        await self.apps.remove_route(request.app, request.model)
        return Empty()

    async def ListRoutes(
        self, request: app_pb2.ListRoutesRequest, context: Context
    ) -> app_pb2.ListRoutesResponse:
        page = await self.apps.list_routes(request.app, request.page_size, request.page_token)
        return app_pb2.ListRoutesResponse(
            routes=[convert.route(record) for record in page.items],
            next_page_token=page.next_page_token,
        )

    async def AddConsumer(
        self, request: app_pb2.AddConsumerRequest, context: Context
    ) -> app_pb2.Consumer:
        return convert.consumer(await self.apps.add_consumer(request.app, request.name))

    async def RemoveConsumer(
        self, request: app_pb2.RemoveConsumerRequest, context: Context
    ) -> Empty:
        await self.apps.remove_consumer(request.app, request.name)
        return Empty()

    async def ListConsumers(
        self, request: app_pb2.ListConsumersRequest, context: Context
    ) -> app_pb2.ListConsumersResponse:
        page = await self.apps.list_consumers(request.app, request.page_size, request.page_token)
        return app_pb2.ListConsumersResponse(
            consumers=[convert.consumer(record) for record in page.items],
            next_page_token=page.next_page_token,
        )
