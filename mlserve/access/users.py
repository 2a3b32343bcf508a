"""Users and their API keys (and the keys of app consumers).

Every public method is a coroutine running its store work in a thread. Each
write that can change an access decision calls ``forget_decisions()``, so this
process's cached decisions are dropped at once.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import peewee as pw

from mlserve.access import rules
from mlserve.access.apps import app_row, consumer_row
from mlserve.access.keys import create_key_row, forget_decisions
from mlserve.access.rules import ADMIN, OWNER, USER_ROLES, caller
from mlserve.core.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from mlserve.core.names import check_name, check_tags, check_update_mask
from mlserve.core.paging import Listing, Page, PageTokens
from mlserve.storage import db, tables
from mlserve.storage.db import in_thread

UPDATABLE_USER_FIELDS = frozenset({"role", "tags", "display_name"})


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


class Users:
    def __init__(self, tokens: PageTokens) -> None:
        self.tokens = tokens

    @in_thread
    def create_user(self, name: str, fields: UserFields) -> UserRecord:
        """Create user ``name`` with a default workspace of the same name, which it owns.

        Raises:
            InvalidArgument: a bad name, role or tag.
            AlreadyExists: a user, or a workspace, has that name.
        """
        check_name(name, "user name")
        role = _check_role(fields.role)
        tags = check_tags(fields.tags, "user.tags")
        user = insert_user(name, role, display_name=fields.display_name, tags=tags)
        return _user_record(user)

    @in_thread
    def get_user(self, name: str) -> UserRecord:
        """User ``name``, or NotFound."""
        return _user_record(user_row(name))

    @in_thread
    def list_users(self, requested: int, token: str) -> Page[UserRecord]:
        """Every user, by name."""
        listing = Listing(
            tables.User.select(), tables.User.name, _user_record, lambda row: row.name,
            {"list": "users"},
        )  # fmt: skip
        return self.tokens.page(listing, requested, token)

    @in_thread
    def update_user(self, name: str, fields: UserFields, mask: Sequence[str]) -> UserRecord:
        """Change the fields ``mask`` names (role, tags, display_name); a new role
        applies to the user's keys at once.

        Raises:
            FailedPrecondition: the change would leave no active admin.
        """
        check_update_mask(mask, UPDATABLE_USER_FIELDS)
        with db.database.atomic():
            user = user_row(name)
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
        forget_decisions()
        return _user_record(user)

    @in_thread
    def delete_user(self, name: str) -> None:
        """Delete the user, its keys and memberships; FailedPrecondition for the last admin."""
        with db.database.atomic():
            user = user_row(name)
            if user.role == ADMIN:
                _refuse_last_admin(user, "delete")
            user.delete_instance(recursive=True)
        forget_decisions()

    @in_thread
    def set_active(self, name: str, active: bool) -> UserRecord:
        """(De)activate the user; an inactive user's keys are refused at once.
        FailedPrecondition when it would deactivate the last active admin."""
        with db.database.atomic():
            user = user_row(name)
            if not active and user.role == ADMIN:
                _refuse_last_admin(user, "deactivate")
            user.active = active
            user.update_time = db.utcnow()
            user.save()
        forget_decisions()
        return _user_record(user)

    @in_thread
    def create_key(
        self, user: str, app: str, consumer: str, expire_time: dt.datetime | None
    ) -> KeyRecord:
        """A new key for ``user`` (default: the caller), or for ``app``'s ``consumer``
        (admins only). The record carries the secret; it is never shown again.

        Raises:
            InvalidArgument: ``expire_time`` is not in the future.
            PermissionDenied: a key for another user (non-admins), or for a consumer.
            NotFound: no such user, app or consumer.
        """
        if expire_time is not None and expire_time <= db.utcnow():
            raise InvalidArgument("expire_time must be in the future")
        with db.database.atomic():
            if app or consumer:
                rules.require_admin("making a key for an app consumer")
                owner: dict[str, Any] = {"consumer": consumer_row(app, consumer)}
            else:
                principal = caller()
                name = user or (principal.name if principal is not None else "")
                rules.check_own_user(name, "making a key")
                owner = {"user": user_row(name)}
            plaintext, row = create_key_row(expire_time=expire_time, **owner)
        return _key_record(row, plaintext)

    @in_thread
    def list_keys(self, requested: int, token: str, user: str, app: str) -> Page[KeyRecord]:
        """Keys newest first, of ``user`` or of ``app``'s consumers when given; a
        non-admin sees only its own (PermissionDenied when asking for others')."""
        principal = caller()
        query = tables.ApiKey.select()
        if principal is not None and not principal.is_admin:
            if app or (user and user != principal.name):
                raise PermissionDenied("users list only their own keys; admins list every key")
            user = principal.name
        if user:
            query = query.where(tables.ApiKey.user == user_row(user))
        if app:
            consumers = tables.AppConsumer.select().where(tables.AppConsumer.app == app_row(app))
            query = query.where(tables.ApiKey.consumer.in_(consumers))
        listing = Listing(
            query, tables.ApiKey.id, _key_record, lambda row: row.id,
            {"list": "keys", "user": user, "app": app}, descending=True,
        )  # fmt: skip
        return self.tokens.page(listing, requested, token)

    @in_thread
    def revoke_key(self, key_id: str) -> KeyRecord:
        """Revoke the key with id ``key_id``: refused from the next call on. NotFound
        alike for no such key and for another user's key (non-admins)."""
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
        forget_decisions()
        return _key_record(row)


def user_row(name: str) -> Any:
    """The store row of user ``name``, or NotFound (blocking)."""
    row = tables.User.get_or_none(tables.User.name == check_name(name, "user name"))
    if row is None:
        raise NotFound(f"user {name!r} does not exist")
    return row


def user_names(ids: Iterable[int]) -> dict[int, str]:
    """The names of the users with ``ids``, by id, in one query (blocking)."""
    query = tables.User.select(tables.User.id, tables.User.name).where(
        tables.User.id.in_(sorted(set(ids)))
    )
    return {row.id: row.name for row in query}


def _refuse_last_admin(user: Any, action: str) -> None:
    others = tables.User.select().where(
        (tables.User.role == ADMIN) & (tables.User.active == True) & (tables.User.id != user.id)  # noqa: E712
    )
    if not others.exists():
        raise FailedPrecondition(
            f"cannot {action} {user.name!r}: it is the last active admin; make another admin first"
        )


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
