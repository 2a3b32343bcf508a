"""Users, API keys, workspaces and apps: what the access rules read.

Every public method is a coroutine running its store work in a thread. Each
write that can change an access decision calls ``changed()``, so this
process's cached decisions are dropped at once.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import peewee as pw

from mlserve.access import rules
from mlserve.access.keys import changed, create_key_row
from mlserve.access.rules import ADMIN, COLLABORATOR, OWNER, USER_ROLES, caller
from mlserve.catalog.model_metadata import check_tags  # users' tags follow models' rules
from mlserve.core.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from mlserve.core.names import check_name
from mlserve.core.paging import Page, PageTokens, page_size
from mlserve.storage import db, tables
from mlserve.storage.db import in_thread

T = TypeVar("T")

UPDATABLE_USER_FIELDS = frozenset({"role", "tags", "display_name"})
UPDATABLE_APP_FIELDS = frozenset({"description", "retries", "timeout"})
MAX_RETRIES = 5


@dataclass(frozen=True)
class UserRecord:
    name: str
    display_name: str
    role: str
    tags: list[str]
    active: bool
    default_workspace: str
    create_time: dt.datetime
    update_time: dt.datetime


@dataclass(frozen=True)
class UserFields:
    role: str = ""
    display_name: str = ""
    tags: Sequence[str] = ()


@dataclass(frozen=True)
class KeyRecord:
    id: str
    user: str
    app: str
    consumer: str
    create_time: dt.datetime
    last_used_time: dt.datetime | None
    expire_time: dt.datetime | None
    revoked: bool
    secret: str = ""


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


@dataclass(frozen=True)
class AppRecord:
    name: str
    description: str
    retries: int
    timeout_seconds: float
    create_time: dt.datetime


@dataclass(frozen=True)
class AppFields:
    description: str = ""
    retries: int = 2
    timeout_seconds: float = 0.0


@dataclass(frozen=True)
class RouteRecord:
    app: str
    model: str
    create_time: dt.datetime


@dataclass(frozen=True)
class ConsumerRecord:
    app: str
    name: str
    create_time: dt.datetime


@dataclass(frozen=True)
class _Listing:
    """One paged query: rows in ``order`` after the token's key."""

    query: Any
    order: Any
    record: Callable[[Any], Any]
    key: Callable[[Any], Any]
    fingerprint: dict[str, Any] = field(default_factory=dict)


class Directory:
    def __init__(self, tokens: PageTokens) -> None:
        self.tokens = tokens

    def _page(self, listing: _Listing, requested: int, token: str) -> Page[Any]:
        size = page_size(requested)
        after = self.tokens.decode(listing.fingerprint, token)
        query = listing.query.order_by(listing.order).limit(size + 1)
        if after is not None:
            query = query.where(listing.order > after)
        rows = list(query)
        records = [listing.record(row) for row in rows[:size]]
        last = listing.key(rows[size - 1]) if len(rows) > size else None
        return Page(records, self.tokens.encode(listing.fingerprint, last) if last else "")

    # --- users ------------------------------------------------------------------

    @in_thread
    def create_user(self, name: str, fields: UserFields) -> UserRecord:
        check_name(name, "user name")
        role = _check_role(fields.role)
        tags = check_tags(fields.tags, "user.tags")
        user = insert_user(name, role, display_name=fields.display_name, tags=tags)
        return _user_record(user)

    @in_thread
    def get_user(self, name: str) -> UserRecord:
        return _user_record(_user_row(name))

    @in_thread
    def list_users(self, requested: int, token: str) -> Page[UserRecord]:
        listing = _Listing(
            tables.User.select(), tables.User.name, _user_record, lambda row: row.name,
            {"list": "users"},
        )  # fmt: skip
        return self._page(listing, requested, token)

    @in_thread
    def update_user(self, name: str, fields: UserFields, mask: Sequence[str]) -> UserRecord:
        _check_mask(mask, UPDATABLE_USER_FIELDS)
        with db.database.atomic():
            user = _user_row(name)
            if "role" in mask:
                role = _check_role(fields.role)
                if user.role == ADMIN and role != ADMIN:
                    _refuse_last_admin(user, "demote")
                user.role = role
                tables.ApiKey.update(role=role).where(tables.ApiKey.user == user).execute()
            if "tags" in mask:
                user.tags = json.dumps(check_tags(fields.tags, "user.tags"))
            if "display_name" in mask:
                user.display_name = fields.display_name
            user.update_time = db.utcnow()
            user.save()
        changed()
        return _user_record(user)

    @in_thread
    def delete_user(self, name: str) -> None:
        with db.database.atomic():
            user = _user_row(name)
            if user.role == ADMIN:
                _refuse_last_admin(user, "delete")
            user.delete_instance(recursive=True)
        changed()

    @in_thread
    def set_active(self, name: str, active: bool) -> UserRecord:
        with db.database.atomic():
            user = _user_row(name)
            if not active and user.role == ADMIN:
                _refuse_last_admin(user, "deactivate")
            user.active = active
            user.update_time = db.utcnow()
            user.save()
        changed()
        return _user_record(user)

    # --- keys -------------------------------------------------------------------

    @in_thread
    def create_key(
        self, user: str, app: str, consumer: str, expire_time: dt.datetime | None
    ) -> KeyRecord:
        if expire_time is not None and expire_time <= db.utcnow():
            raise InvalidArgument("expire_time must be in the future")
        with db.database.atomic():
            if app or consumer:
                rules.require_admin("making a key for an app consumer")
                owner: dict[str, Any] = {"consumer": _consumer_row(app, consumer)}
            else:
                principal = caller()
                name = user or (principal.name if principal is not None else "")
                rules.check_own_user(name, "making a key")
                owner = {"user": _user_row(name)}
            plaintext, row = create_key_row(expire_time=expire_time, **owner)
        return _key_record(row, plaintext)

    @in_thread
    def list_keys(self, requested: int, token: str, user: str, app: str) -> Page[KeyRecord]:
        principal = caller()
        query = tables.ApiKey.select()
        if principal is not None and not principal.is_admin:
            if app or (user and user != principal.name):
                raise PermissionDenied("users list only their own keys; admins list every key")
            user = principal.name
        if user:
            query = query.where(tables.ApiKey.user == _user_row(user))
        if app:
            consumers = tables.AppConsumer.select().where(tables.AppConsumer.app == _app_row(app))
            query = query.where(tables.ApiKey.consumer.in_(consumers))
        # Newest first: the token holds the last id, the next page has smaller ids.
        fingerprint = {"list": "keys", "user": user, "app": app}
        size = page_size(requested)
        after = self.tokens.decode(fingerprint, token)
        if after is not None:
            query = query.where(tables.ApiKey.id < int(after))
        rows = list(query.order_by(tables.ApiKey.id.desc()).limit(size + 1))
        next_token = self.tokens.encode(fingerprint, rows[size - 1].id) if len(rows) > size else ""
        return Page([_key_record(row) for row in rows[:size]], next_token)

    @in_thread
    def revoke_key(self, key_id: str) -> KeyRecord:
        row: Any = tables.ApiKey.get_or_none(tables.ApiKey.prefix == key_id)
        principal = caller()
        mine = row is not None and (
            principal is None
            or principal.is_admin
            or (row.user_id is not None and row.user_id == principal.user_id)
        )
        if row is None or not mine:
            raise NotFound(f"API key {key_id!r} does not exist (or is not yours)")
        row.revoked = True
        row.save(only=[tables.ApiKey.revoked])
        changed()
        return _key_record(row)

    # --- workspaces --------------------------------------------------------------

    @in_thread
    def create_workspace(self, name: str) -> WorkspaceRecord:
        check_name(name, "workspace name")
        principal = caller()
        try:
            with db.database.atomic():
                row = tables.Workspace.create(name=name)
                if principal is not None and principal.user_id is not None:
                    tables.WorkspaceMember.create(workspace=row, user=principal.user_id, role=OWNER)
        except pw.IntegrityError:
            raise AlreadyExists(f"workspace {name!r} already exists") from None
        changed()
        return _workspace_record(row)

    @in_thread
    def get_workspace(self, name: str) -> WorkspaceRecord:
        return _workspace_record(_workspace_row(name))

    @in_thread
    def list_workspaces(self, requested: int, token: str) -> Page[WorkspaceRecord]:
        principal = caller()
        query = tables.Workspace.select()
        if principal is not None and not principal.is_admin:
            query = query.where(tables.Workspace.id.in_(sorted(principal.workspaces)))
        listing = _Listing(
            query, tables.Workspace.name, _workspace_record, lambda row: row.name,
            {"list": "workspaces"},
        )  # fmt: skip
        return self._page(listing, requested, token)

    @in_thread
    def archive_workspace(self, name: str) -> WorkspaceRecord:
        row = rules.check_workspace_owner(_workspace_or_none(name), name)
        row.archived = True
        row.save()
        return _workspace_record(row)

    @in_thread
    def add_member(self, workspace: str, user: str, role: str) -> MemberRecord:
        role = role or COLLABORATOR
        if role not in (OWNER, COLLABORATOR):
            raise InvalidArgument(f"member role must be owner or collaborator, not {role!r}")
        with db.database.atomic():
            space = rules.check_workspace_owner(_workspace_or_none(workspace), workspace)
            member = _user_row(user)
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
        changed()
        return _member_record(row)

    @in_thread
    def remove_member(self, workspace: str, user: str) -> None:
        with db.database.atomic():
            space = rules.check_workspace_owner(_workspace_or_none(workspace), workspace)
            row = tables.WorkspaceMember.get_or_none(
                (tables.WorkspaceMember.workspace == space)
                & (tables.WorkspaceMember.user == _user_row(user))
            )
            if row is None:
                raise NotFound(f"user {user!r} is not a member of workspace {workspace!r}")
            if row.role == OWNER:
                _refuse_last_owner(space)
            row.delete_instance()
        changed()

    @in_thread
    def list_members(self, workspace: str, requested: int, token: str) -> Page[MemberRecord]:
        space = _workspace_row(workspace)
        query = (
            tables.WorkspaceMember.select(tables.WorkspaceMember, tables.User)
            .join(tables.User)
            .where(tables.WorkspaceMember.workspace == space)
        )
        listing = _Listing(
            query, tables.User.name, _member_record, lambda row: row.user.name,
            {"list": "members", "workspace": workspace},
        )  # fmt: skip
        return self._page(listing, requested, token)

    # --- apps -------------------------------------------------------------------

    @in_thread
    def create_app(self, name: str, fields: AppFields) -> AppRecord:
        check_name(name, "app name")
        _check_app_fields(fields)
        try:
            row = tables.App.create(
                name=name,
                description=fields.description,
                retries=fields.retries,
                timeout_seconds=fields.timeout_seconds,
            )
        except pw.IntegrityError:
            raise AlreadyExists(f"app {name!r} already exists") from None
        return _app_record(row)

    @in_thread
    def get_app(self, name: str) -> AppRecord:
        return _app_record(_app_row(name))

    @in_thread
    def list_apps(self, requested: int, token: str) -> Page[AppRecord]:
        listing = _Listing(
            tables.App.select(), tables.App.name, _app_record, lambda row: row.name,
            {"list": "apps"},
        )  # fmt: skip
        return self._page(listing, requested, token)

    @in_thread
    def update_app(self, name: str, fields: AppFields, mask: Sequence[str]) -> AppRecord:
        _check_mask(mask, UPDATABLE_APP_FIELDS)
        _check_app_fields(fields)
        row = _app_row(name)
        if "description" in mask:
            row.description = fields.description
        if "retries" in mask:
            row.retries = fields.retries
        if "timeout" in mask:
            row.timeout_seconds = fields.timeout_seconds
        row.save()
        changed()
        return _app_record(row)

    @in_thread
    def delete_app(self, name: str) -> None:
        _app_row(name).delete_instance(recursive=True)
        changed()

    @in_thread
    def add_route(self, app: str, model: str) -> RouteRecord:
        with db.database.atomic():
            app_row = _app_row(app)
            model_row = tables.Model.get_or_none(tables.Model.name == check_name(model, "model"))
            if model_row is None:
                raise rules.not_found(model)
            try:
                row = tables.AppRoute.create(app=app_row, model=model)
            except pw.IntegrityError:
                raise AlreadyExists(f"app {app!r} already routes model {model!r}") from None
        changed()
        return RouteRecord(app, row.model, row.create_time)

    @in_thread
    def remove_route(self, app: str, model: str) -> None:
        deleted = (
            tables.AppRoute.delete()
            .where((tables.AppRoute.app == _app_row(app)) & (tables.AppRoute.model == model))
            .execute()
        )
        if not deleted:
            raise NotFound(f"app {app!r} has no route to model {model!r}")
        changed()

    @in_thread
    def list_routes(self, app: str, requested: int, token: str) -> Page[RouteRecord]:
        query = tables.AppRoute.select().where(tables.AppRoute.app == _app_row(app))
        visible = rules.visible_models()
        if visible is not None:  # routes to models the caller may not see are not listed
            query = query.where(
                tables.AppRoute.model.in_(tables.Model.select(tables.Model.name).where(visible))
            )
        listing = _Listing(
            query, tables.AppRoute.model,
            lambda row: RouteRecord(app, row.model, row.create_time), lambda row: row.model,
            {"list": "routes", "app": app},
        )  # fmt: skip
        return self._page(listing, requested, token)

    @in_thread
    def add_consumer(self, app: str, name: str) -> ConsumerRecord:
        check_name(name, "consumer name")
        try:
            row = tables.AppConsumer.create(app=_app_row(app), name=name)
        except pw.IntegrityError:
            raise AlreadyExists(f"app {app!r} already has a consumer {name!r}") from None
        return ConsumerRecord(app, row.name, row.create_time)

    @in_thread
    def remove_consumer(self, app: str, name: str) -> None:
        _consumer_row(app, name).delete_instance(recursive=True)
        changed()

    @in_thread
    def list_consumers(self, app: str, requested: int, token: str) -> Page[ConsumerRecord]:
        query = tables.AppConsumer.select().where(tables.AppConsumer.app == _app_row(app))
        listing = _Listing(
            query, tables.AppConsumer.name,
            lambda row: ConsumerRecord(app, row.name, row.create_time), lambda row: row.name,
            {"list": "consumers", "app": app},
        )  # fmt: skip
        return self._page(listing, requested, token)


# --- rows and records -------------------------------------------------------------


def insert_user(name: str, role: str, *, display_name: str = "", tags: Sequence[str] = ()) -> Any:
    """Create user ``name`` with its default workspace (of the same name, owned by it).

    Raises:
        AlreadyExists: a user or a workspace of that name exists.
    """
    try:
        with db.database.atomic():
            workspace = tables.Workspace.create(name=name)
            user = tables.User.create(
                name=name,
                role=role,
                display_name=display_name,
                tags=json.dumps(list(tags)),
                default_workspace=workspace,
            )
            tables.WorkspaceMember.create(workspace=workspace, user=user, role=OWNER)
    except pw.IntegrityError:
        raise AlreadyExists(
            f"user {name!r} (or a workspace of that name, its default) already exists"
        ) from None
    return user


def _user_row(name: str) -> Any:
    row = tables.User.get_or_none(tables.User.name == check_name(name, "user name"))
    if row is None:
        raise NotFound(f"user {name!r} does not exist")
    return row


def _workspace_or_none(name: str) -> Any:
    return tables.Workspace.get_or_none(tables.Workspace.name == check_name(name, "workspace name"))


def _workspace_row(name: str) -> Any:
    return rules.check_workspace_read(_workspace_or_none(name), name)


def _app_row(name: str) -> Any:
    row = tables.App.get_or_none(tables.App.name == check_name(name, "app name"))
    if row is None:
        raise NotFound(f"app {name!r} does not exist")
    return row


def _consumer_row(app: str, name: str) -> Any:
    row = tables.AppConsumer.get_or_none(
        (tables.AppConsumer.app == _app_row(app))
        & (tables.AppConsumer.name == check_name(name, "consumer name"))
    )
    if row is None:
        raise NotFound(f"app {app!r} has no consumer {name!r}")
    return row


def _refuse_last_admin(user: Any, action: str) -> None:
    others = tables.User.select().where(
        (tables.User.role == ADMIN) & (tables.User.active == True) & (tables.User.id != user.id)  # noqa: E712
    )
    if not others.exists():
        raise FailedPrecondition(
            f"cannot {action} {user.name!r}: it is the last active admin; make another admin first"
        )


def _refuse_last_owner(space: Any) -> None:
    owners = tables.WorkspaceMember.select().where(
        (tables.WorkspaceMember.workspace == space) & (tables.WorkspaceMember.role == OWNER)
    )
    if owners.count() <= 1:
        raise FailedPrecondition(
            f"that is the last owner of workspace {space.name!r}; add another owner first"
        )


def _check_mask(mask: Sequence[str], updatable: frozenset[str]) -> None:
    unknown = set(mask) - updatable
    if unknown or not mask:
        raise InvalidArgument(
            f"update_mask must name some of {', '.join(sorted(updatable))}"
            + (f"; cannot update {', '.join(sorted(unknown))}" if unknown else "")
        )


def _check_app_fields(fields: AppFields) -> None:
    if not 0 <= fields.retries <= MAX_RETRIES:
        raise InvalidArgument(f"retries must be 0 to {MAX_RETRIES}, got {fields.retries}")
    if fields.timeout_seconds < 0:
        raise InvalidArgument("timeout must not be negative")


def _check_role(role: str) -> str:
    if role not in USER_ROLES:
        raise InvalidArgument(f"role must be one of {', '.join(USER_ROLES)}, not {role!r}")
    return role


def _user_record(row: Any) -> UserRecord:
    workspace = row.default_workspace
    return UserRecord(
        name=row.name,
        display_name=row.display_name,
        role=row.role,
        tags=json.loads(row.tags),
        active=row.active,
        default_workspace=workspace.name if workspace is not None else "",
        create_time=row.create_time,
        update_time=row.update_time,
    )


def _key_record(row: Any, secret: str = "") -> KeyRecord:
    consumer = row.consumer
    return KeyRecord(
        id=row.prefix,
        user=row.user.name if row.user_id is not None else "",
        app=consumer.app.name if consumer is not None else "",
        consumer=consumer.name if consumer is not None else "",
        create_time=row.create_time,
        last_used_time=row.last_used_time,
        expire_time=row.expire_time,
        revoked=row.revoked,
        secret=secret,
    )


def _workspace_record(row: Any) -> WorkspaceRecord:
    return WorkspaceRecord(row.name, row.archived, row.create_time)


def _member_record(row: Any) -> MemberRecord:
    return MemberRecord(row.workspace.name, row.user.name, row.role, row.create_time)


def _app_record(row: Any) -> AppRecord:
    return AppRecord(row.name, row.description, row.retries, row.timeout_seconds, row.create_time)
