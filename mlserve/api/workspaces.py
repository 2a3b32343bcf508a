"""mlserve.v1.WorkspaceService over the access domain (workspaces and their members)."""

from __future__ import annotations

from typing import Any

from google.protobuf.empty_pb2 import Empty

from mlserve.access.workspaces import Workspaces
from mlserve.api import convert_access as convert
from mlserve_api.v1 import workspace_pb2, workspace_pb2_grpc

Context = Any


class WorkspaceService(workspace_pb2_grpc.WorkspaceServiceServicer):
    def __init__(self, workspaces: Workspaces) -> None:
        self.workspaces = workspaces

    async def CreateWorkspace(
        self, request: workspace_pb2.CreateWorkspaceRequest, context: Context
    ) -> workspace_pb2.Workspace:
        return convert.workspace(await self.workspaces.create_workspace(request.workspace.name))

    async def GetWorkspace(
        self, request: workspace_pb2.GetWorkspaceRequest, context: Context
    ) -> workspace_pb2.Workspace:
        return convert.workspace(await self.workspaces.get_workspace(request.name))

    async def ListWorkspaces(
        self, request: workspace_pb2.ListWorkspacesRequest, context: Context
    ) -> workspace_pb2.ListWorkspacesResponse:
        page = await self.workspaces.list_workspaces(request.page_size, request.page_token)
        return workspace_pb2.ListWorkspacesResponse(
            workspaces=[convert.workspace(record) for record in page.items],
            next_page_token=page.next_page_token,
        )

    async def ArchiveWorkspace(
        self, request: workspace_pb2.ArchiveWorkspaceRequest, context: Context
    ) -> workspace_pb2.Workspace:
        return convert.workspace(await self.workspaces.archive_workspace(request.name))

    async def AddMember(
        self, request: workspace_pb2.AddMemberRequest, context: Context
    ) -> workspace_pb2.Member:
        record = await self.workspaces.add_member(
            request.workspace, request.user, convert.member_role(request.role)
        )
        return convert.member(record)

    async def RemoveMember(
        self, request: workspace_pb2.RemoveMemberRequest, context: Context
    ) -> Empty:
        await self.workspaces.remove_member(request.workspace, request.user)
        return Empty()

    async def ListMembers(
        self, request: workspace_pb2.ListMembersRequest, context: Context
    ) -> workspace_pb2.ListMembersResponse:
        page = await self.workspaces.list_members(
            request.workspace, request.page_size, request.page_token
        )
        return workspace_pb2.ListMembersResponse(
            members=[convert.member(record) for record in page.items],
            next_page_token=page.next_page_token,
        )
