"""mlserve.v1.UserService over the access domain (users and their keys)."""

from __future__ import annotations

from typing import Any

from google.protobuf.empty_pb2 import Empty

from mlserve.access.users import Users
from mlserve.api import convert_access as convert
from mlserve_api.v1 import user_pb2, user_pb2_grpc

Context = Any


class UserService(user_pb2_grpc.UserServiceServicer):
    def __init__(self, users: Users) -> None:
        self.users = users

    async def CreateUser(
        self, request: user_pb2.CreateUserRequest, context: Context
    ) -> user_pb2.User:
        fields = convert.user_fields(request.user)
        return convert.user(await self.users.create_user(request.user.name, fields))

    async def GetUser(self, request: user_pb2.GetUserRequest, context: Context) -> user_pb2.User:
        return convert.user(await self.users.get_user(request.name))

    async def ListUsers(
        self, request: user_pb2.ListUsersRequest, context: Context
    ) -> user_pb2.ListUsersResponse:
        page = await self.users.list_users(request.page_size, request.page_token)
        return user_pb2.ListUsersResponse(
            users=[convert.user(record) for record in page.items],
            next_page_token=page.next_page_token,
        )

    async def UpdateUser(
        self, request: user_pb2.UpdateUserRequest, context: Context
    ) -> user_pb2.User:
        record = await self.users.update_user(
            request.user.name, convert.user_fields(request.user), list(request.update_mask.paths)
        )
        return convert.user(record)

    async def DeleteUser(self, request: user_pb2.DeleteUserRequest, context: Context) -> Empty:
        await self.users.delete_user(request.name)
        return Empty()

    async def ActivateUser(
        self, request: user_pb2.ActivateUserRequest, context: Context
    ) -> user_pb2.User:
        return convert.user(await self.users.set_active(request.name, True))

    async def DeactivateUser(
        self, request: user_pb2.DeactivateUserRequest, context: Context
    ) -> user_pb2.User:
        return convert.user(await self.users.set_active(request.name, False))

    async def CreateApiKey(
        self, request: user_pb2.CreateApiKeyRequest, context: Context
    ) -> user_pb2.ApiKey:
        expire = convert.time_or_none(request.expire_time, request.HasField("expire_time"))
        record = await self.users.create_key(request.user, request.app, request.consumer, expire)
        return convert.api_key(record)

    async def ListApiKeys(
        self, request: user_pb2.ListApiKeysRequest, context: Context
    ) -> user_pb2.ListApiKeysResponse:
        page = await self.users.list_keys(
            request.page_size, request.page_token, request.user, request.app
        )
        return user_pb2.ListApiKeysResponse(
            keys=[convert.api_key(record) for record in page.items],
            next_page_token=page.next_page_token,
        )

    async def RevokeApiKey(
        self, request: user_pb2.RevokeApiKeyRequest, context: Context
    ) -> user_pb2.ApiKey:
        return convert.api_key(await self.users.revoke_key(request.id))
