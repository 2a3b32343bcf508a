"""Users made for a test: a user with a role, and stubs that send its key."""

from __future__ import annotations

import os

from mlserve_api.v1 import user_pb2
from tests.support.mlserve import Stubs

ROLES = {
    "admin": user_pb2.ROLE_ADMIN,
    "editor": user_pb2.ROLE_EDITOR,
    "viewer": user_pb2.ROLE_VIEWER,
}


def as_key(stubs: Stubs, key: str) -> Stubs:
    """Stubs on the same channel that send ``key``."""
    return Stubs(stubs.channel, key)


def make_user(admin: Stubs, name: str, role: str) -> Stubs:
    admin.users.CreateUser(
        user_pb2.CreateUserRequest(user=user_pb2.User(name=name, role=ROLES[role])),
        metadata=admin.auth,
    )
    key = admin.users.CreateApiKey(user_pb2.CreateApiKeyRequest(user=name), metadata=admin.auth)
    assert key.secret.startswith(f"mls_{key.id}_")
    return as_key(admin, key.secret)


PID = os.getpid() % 1000
