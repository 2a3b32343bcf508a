"""The access module's rules, users, workspaces and apps, against a fresh migrated store."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator

import peewee as pw
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health
from grpc_reflection.v1alpha import reflection
from tritonclient.grpc import service_pb2  # noqa: F401  # registers inference.*

from mlserve.access import current_principal, keys, rules
from mlserve.access.apps import AppFields, Apps
from mlserve.access.users import UserFields, Users
from mlserve.access.workspaces import Workspaces
from mlserve.core.errors import (
    AlreadyExists,
    FailedPrecondition,
    NotFound,
    PermissionDenied,
)
from mlserve.core.paging import PageTokens
from mlserve.server import SERVICES
from mlserve.storage import tables

run = asyncio.run


def _served_methods() -> list[str]:
    """Every full method name of every service the server registers."""
    pool = descriptor_pool.Default()
    names: list[str] = []
    for service in (*SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME):
        try:
            descriptor = pool.FindServiceByName(service)
        except KeyError:
            pytest.fail(f"{service} is served but its descriptor is not loaded")
        names += [f"/{service}/{method.name}" for method in descriptor.methods]
    return names


def test_every_served_method_has_an_access_rule() -> None:
    missing = [method for method in _served_methods() if rules.rule_for(method) is None]
    assert not missing, f"classify these in mlserve/access/rules.py RULES: {missing}"


def test_an_unknown_method_is_denied_to_everyone() -> None:
    admin = rules.Principal("k", "root", rules.ADMIN)
    with pytest.raises(PermissionDenied, match="no access rule"):
        rules.authorize("/mlserve.v1.NewService/Anything", admin)


@pytest.mark.parametrize(
    ("role", "method", "allowed"),
    [
        ("viewer", "/mlserve.v1.ModelService/ListModels", True),
        ("viewer", "/mlserve.v1.ModelService/CreateModel", False),
        ("editor", "/mlserve.v1.ModelService/CreateModel", True),
        ("editor", "/mlserve.v1.ServerService/RegisterServer", False),
        ("editor", "/mlserve.v1.UserService/CreateUser", False),
        ("admin", "/mlserve.v1.UserService/CreateUser", True),
        ("consumer", "/mlserve.v1.ModelService/ListModels", False),
        ("consumer", "/inference.GRPCInferenceService/ModelInfer", True),
        ("consumer", "/inference.GRPCInferenceService/RepositoryModelLoad", False),
        ("viewer", "/inference.GRPCInferenceService/ModelInfer", True),
    ],
)
def test_roles(role: str, method: str, allowed: bool) -> None:
    principal = rules.Principal("k", "someone", role)
    if allowed:
        rules.authorize(method, principal)
    else:
        with pytest.raises(PermissionDenied):
            rules.authorize(method, principal)


def test_scrypt_hash_verifies_only_its_secret() -> None:
    stored = keys.hash_secret("s3cret")
    assert stored.startswith("scrypt$")
    assert "s3cret" not in stored
    assert keys.verify_secret("s3cret", stored, keys.SCRYPT)
    assert not keys.verify_secret("s3creT", stored, keys.SCRYPT)
    assert not keys.verify_secret("s3cret", "scrypt$garbage", keys.SCRYPT)
    legacy = hashlib.sha256(b"old").hexdigest()
    assert keys.verify_secret("old", legacy, "sha256")
    assert not keys.verify_secret("new", legacy, "sha256")


TOKENS = PageTokens(b"x" * 32)


@pytest.fixture
def users(store_db: pw.Database) -> Iterator[Users]:
    """Users on a fresh store, called as MLServe's own work (no principal)."""
    token = current_principal.set(None)
    yield Users(TOKENS)
    current_principal.reset(token)


@pytest.fixture
def workspaces(users: Users) -> Workspaces:
    return Workspaces(TOKENS)


@pytest.fixture
def apps(users: Users) -> Apps:
    return Apps(TOKENS)


def test_legacy_sha256_key_still_works_and_is_rehashed(users: Users) -> None:
    run(users.create_user("old", UserFields(role="admin")))
    user = tables.User.get(tables.User.name == "old")
    tables.ApiKey.create(
        prefix="abc",
        secret_hash=hashlib.sha256(b"secret").hexdigest(),
        owner="old",
        role="admin",
        user=user,
    )
    principal = run(keys.Access().authenticate("Bearer mls_abc_secret"))
    assert (principal.name, principal.role) == ("old", "admin")
    row = tables.ApiKey.get(tables.ApiKey.prefix == "abc")
    assert row.algorithm == keys.SCRYPT
    assert keys.verify_secret("secret", row.secret_hash, keys.SCRYPT)


def test_the_last_admin_cannot_be_removed_or_demoted(users: Users) -> None:
    run(users.create_user("root", UserFields(role="admin")))
    for attempt in (
        lambda: users.delete_user("root"),
        lambda: users.update_user("root", UserFields(role="editor"), ["role"]),
        lambda: users.set_active("root", False),
    ):
        with pytest.raises(FailedPrecondition, match="last active admin"):
            run(attempt())
    assert tables.User.get(tables.User.name == "root").role == "admin"
    run(users.create_user("second", UserFields(role="admin")))
    run(users.update_user("root", UserFields(role="editor"), ["role"]))
    with pytest.raises(FailedPrecondition):
        run(users.delete_user("second"))


def test_duplicate_names_already_exist(users: Users, workspaces: Workspaces, apps: Apps) -> None:
    run(users.create_user("ann", UserFields(role="viewer")))
    with pytest.raises(AlreadyExists):
        run(users.create_user("ann", UserFields(role="editor")))
    with pytest.raises(AlreadyExists):
        run(workspaces.create_workspace("ann"))  # her default workspace
    assert tables.User.select().count() == 1
    run(apps.create_app("shop", keys_fields()))
    with pytest.raises(AlreadyExists):
        run(apps.create_app("shop", keys_fields()))


def keys_fields() -> object:

    return AppFields()


def test_private_models_are_not_found_for_non_members(users: Users) -> None:
    run(users.create_user("ann", UserFields(role="editor")))
    run(users.create_user("bob", UserFields(role="editor")))
    ann_space = tables.Workspace.get(tables.Workspace.name == "ann")
    private = tables.Model.create(name="secret", workspace=ann_space)
    public = tables.Model.create(name="shared", workspace=ann_space, visibility="public")
    bob_principal = rules.Principal(
        "b", "bob", "editor", workspaces={tables.Workspace.get(name="bob").id: "owner"}
    )
    token = current_principal.set(bob_principal)
    try:
        with pytest.raises(NotFound) as hidden:
            rules.check_model_read(private)
        assert hidden.value.message == rules.not_found("secret").message
        rules.check_model_read(public)
        with pytest.raises(PermissionDenied, match="another workspace"):
            rules.check_model_write(public)
    finally:
        current_principal.reset(token)
