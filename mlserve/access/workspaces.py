"""Workspaces and their members: who may see and change the models in each.

Every public method is a coroutine running its store work in a thread. Each
write that can change an access decision calls ``forget_decisions()``, so this
process's cached decisions are dropped at once.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import peewee as pw

from mlserve.access import rules
from mlserve.access.keys import forget_decisions
from mlserve.access.rules import COLLABORATOR, OWNER, caller
from mlserve.access.users import user_row
from mlserve.core.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from mlserve.core.names import check_name
from mlserve.core.paging import Listing, Page, PageTokens
from mlserve.storage import db, tables
from mlserve.storage.db import in_thread


@dataclass(frozen=True)
class WorkspaceRecord:
    name: str
    archived: bool
    create_time: dt.datetime


@dataclass(frozen=True)
class MemberRecord:
    workspace: str
    user: str
    role: str
    create_time: dt.datetime


class Workspaces:
    def __init__(self, tokens: PageTokens) -> None:
        self.tokens = tokens

    @in_thread
    def create_workspace(self, name: str) -> WorkspaceRecord:
        """Create workspace ``name``, owned by the calling user.

        Raises:
            InvalidArgument: a bad name.
            AlreadyExists: a workspace has that name.
        """
        check_name(name, "workspace name")
        principal = caller()
        try:
            with db.database.atomic():
                row = tables.Workspace.create(name=name)
                if principal is not None and principal.user_id is not None:
                    tables.WorkspaceMember.create(workspace=row, user=principal.user_id, role=OWNER)
        except pw.IntegrityError:
            raise AlreadyExists(f"workspace {name!r} already exists") from None
        forget_decisions()
        return _workspace_record(row)

    @in_thread
    def get_workspace(self, name: str) -> WorkspaceRecord:
        """Workspace ``name``; NotFound alike when absent or not the caller's."""
        return _workspace_record(_readable_workspace(name))

    @in_thread
    def list_workspaces(self, requested: int, token: str) -> Page[WorkspaceRecord]:
        """The workspaces the caller belongs to (admins: every one), by name."""
        principal = caller()
        query = tables.Workspace.select()
        if principal is not None and not principal.is_admin:
            query = query.where(tables.Workspace.id.in_(sorted(principal.workspaces)))
        listing = Listing(
            query, tables.Workspace.name, _workspace_record, lambda row: row.name,
            {"list": "workspaces"},
        )  # fmt: skip
        return self.tokens.page(listing, requested, token)

    @in_thread
    def archive_workspace(self, name: str) -> WorkspaceRecord:
        """Mark the workspace archived (its owners and admins only)."""
        row = rules.check_workspace_owner(_workspace_or_none(name), name)
        row.archived = True
        row.save()
        return _workspace_record(row)

    @in_thread
    def add_member(self, workspace: str, user: str, role: str) -> MemberRecord:
        """Make ``user`` an owner or collaborator (default) of ``workspace``, or change
        its role there (the workspace's owners and admins only).

        Raises:
            InvalidArgument: a role other than owner or collaborator.
            FailedPrecondition: it would demote the workspace's last owner.
        """
        role = role or COLLABORATOR
        if role not in (OWNER, COLLABORATOR):
            raise InvalidArgument(f"member role must be owner or collaborator, not {role!r}")
        with db.database.atomic():
            space = rules.check_workspace_owner(_workspace_or_none(workspace), workspace)
            member = user_row(user)
            row = tables.WorkspaceMember.get_or_none(
                (tables.WorkspaceMember.workspace == space)
                & (tables.WorkspaceMember.user == member)
            )
            if row is None:
                row = tables.WorkspaceMember.create(workspace=space, user=member, role=role)
            elif row.role != role:
                if row.role == OWNER:
                    _refuse_last_owner(space)
                row.role = role
                row.save()
        forget_decisions()
        return _member_record(row)

    @in_thread
    def remove_member(self, workspace: str, user: str) -> None:
        """Remove ``user`` from ``workspace``; FailedPrecondition for its last owner."""
        with db.database.atomic():
            space = rules.check_workspace_owner(_workspace_or_none(workspace), workspace)
            row = tables.WorkspaceMember.get_or_none(
                (tables.WorkspaceMember.workspace == space)
                & (tables.WorkspaceMember.user == user_row(user))
            )
            if row is None:
                raise NotFound(f"user {user!r} is not a member of workspace {workspace!r}")
            if row.role == OWNER:
                _refuse_last_owner(space)
            row.delete_instance()
        forget_decisions()

    @in_thread
    def list_members(self, workspace: str, requested: int, token: str) -> Page[MemberRecord]:
        """The workspace's members by user name, if the caller may see the workspace."""
        space = _readable_workspace(workspace)
        query = (
            tables.WorkspaceMember.select(tables.WorkspaceMember, tables.User)
            .join(tables.User)
            .where(tables.WorkspaceMember.workspace == space)
        )
        listing = Listing(
            query, tables.User.name, _member_record, lambda row: row.user.name,
            {"list": "members", "workspace": workspace},
        )  # fmt: skip
        return self.tokens.page(listing, requested, token)


def workspace_id_query(name: str) -> Any:
    """A query of the id of workspace ``name`` (no rows when there is none), to filter
    other tables by (blocking)."""
    check_name(name, "workspace name")
    return tables.Workspace.select(tables.Workspace.id).where(tables.Workspace.name == name)


def workspace_names(ids: Iterable[int]) -> dict[int, str]:
    """The names of the workspaces with ``ids``, by id, in one query (blocking)."""
    query = tables.Workspace.select(tables.Workspace.id, tables.Workspace.name).where(
        tables.Workspace.id.in_(sorted(set(ids)))
    )
    return {row.id: row.name for row in query}


def _workspace_or_none(name: str) -> Any:
    return tables.Workspace.get_or_none(tables.Workspace.name == check_name(name, "workspace name"))


def _readable_workspace(name: str) -> Any:
    return rules.check_workspace_read(_workspace_or_none(name), name)


def _refuse_last_owner(space: Any) -> None:
    owners = tables.WorkspaceMember.select().where(
        (tables.WorkspaceMember.workspace == space) & (tables.WorkspaceMember.role == OWNER)
    )
    if owners.count() <= 1:
        raise FailedPrecondition(
            f"that is the last owner of workspace {space.name!r}; add another owner first"
        )


def _workspace_record(row: Any) -> WorkspaceRecord:
    return WorkspaceRecord(row.name, row.archived, row.create_time)


def _member_record(row: Any) -> MemberRecord:
    return MemberRecord(row.workspace.name, row.user.name, row.role, row.create_time)
