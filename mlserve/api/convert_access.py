"""Access records (users, keys, workspaces, apps, audit) to protos and back."""

from __future__ import annotations

import datetime as dt

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from mlserve.access.apps import AppFields, AppRecord, ConsumerRecord, RouteRecord
from mlserve.access.audit import AuditRecord
from mlserve.access.users import KeyRecord, UserFields, UserRecord
from mlserve.access.workspaces import MemberRecord, WorkspaceRecord
from mlserve.api.convert import timestamp
from mlserve_api.v1 import app_pb2, audit_pb2, user_pb2, workspace_pb2

_ROLES = {
    "admin": user_pb2.ROLE_ADMIN,
    "editor": user_pb2.ROLE_EDITOR,
    "viewer": user_pb2.ROLE_VIEWER,
}
_ROLE_NAMES = {value: name for name, value in _ROLES.items()}
_MEMBER_ROLES = {
    "owner": workspace_pb2.MEMBER_ROLE_OWNER,
    "collaborator": workspace_pb2.MEMBER_ROLE_COLLABORATOR,
}
_MEMBER_ROLE_NAMES = {value: name for name, value in _MEMBER_ROLES.items()}


def user(record: UserRecord) -> user_pb2.User:
    return user_pb2.User(
        name=record.name,
        display_name=record.display_name,
        role=_ROLES.get(record.role, user_pb2.ROLE_UNSPECIFIED),
        tags=record.tags,
        active=record.active,
        default_workspace=record.default_workspace,
        create_time=timestamp(record.create_time),
        update_time=timestamp(record.update_time),
    )


def user_fields(message: user_pb2.User) -> UserFields:
    return UserFields(
        role=_ROLE_NAMES.get(message.role, ""),
        display_name=message.display_name,
        tags=list(message.tags),
    )


def api_key(record: KeyRecord) -> user_pb2.ApiKey:
    return user_pb2.ApiKey(
        id=record.id,
        user=record.user,
        app=record.app,
        consumer=record.consumer,
        secret=record.secret,
        create_time=timestamp(record.create_time),
        last_used_time=timestamp(record.last_used_time),
        expire_time=timestamp(record.expire_time),
        revoked=record.revoked,
    )


def time_or_none(message: Timestamp, present: bool) -> dt.datetime | None:
    return message.ToDatetime() if present else None


def workspace(record: WorkspaceRecord) -> workspace_pb2.Workspace:
    return workspace_pb2.Workspace(
        name=record.name, archived=record.archived, create_time=timestamp(record.create_time)
    )


def member(record: MemberRecord) -> workspace_pb2.Member:
    return workspace_pb2.Member(
        workspace=record.workspace,
        user=record.user,
        role=_MEMBER_ROLES[record.role],
        create_time=timestamp(record.create_time),
    )


def member_role(role: workspace_pb2.MemberRole.ValueType) -> str:
    return _MEMBER_ROLE_NAMES.get(role, "")


def app(record: AppRecord) -> app_pb2.App:
    timeout = Duration()
    timeout.FromNanoseconds(int(record.timeout_seconds * 1e9))
    return app_pb2.App(
        name=record.name,
        description=record.description,
        retries=record.retries,
        timeout=timeout if record.timeout_seconds else None,
        create_time=timestamp(record.create_time),
    )


def app_fields(message: app_pb2.App) -> AppFields:
    timeout = message.timeout.ToNanoseconds() / 1e9 if message.HasField("timeout") else 0.0
    return AppFields(
        description=message.description, retries=message.retries, timeout_seconds=timeout
    )


def route(record: RouteRecord) -> app_pb2.Route:
    return app_pb2.Route(
        app=record.app, model=record.model, create_time=timestamp(record.create_time)
    )


def consumer(record: ConsumerRecord) -> app_pb2.Consumer:
    return app_pb2.Consumer(
        app=record.app, name=record.name, create_time=timestamp(record.create_time)
    )


def audit_event(record: AuditRecord) -> audit_pb2.AuditEvent:
    return audit_pb2.AuditEvent(
        id=record.id,
        time=timestamp(record.time),
        actor=record.actor,
        key_id=record.key_id,
        method=record.method,
        resource=record.resource,
        outcome=record.outcome,
    )
