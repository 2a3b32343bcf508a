"""The access module's rules and directory, against a fresh migrated store."""

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
from mlserve.access.directory import AppFields, Directory, UserFields
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


@pytest.fixture
def directory(store_db: pw.Database) -> Iterator[Directory]:
    token = current_principal.set(None)
    yield Directory(PageTokens(b"x" * 32))
    current_principal.reset(token)


def test_legacy_sha256_key_still_works_and_is_rehashed(directory: Directory) -> None:
    run(directory.create_user("old", UserFields(role="admin")))
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


def test_the_last_admin_cannot_be_removed_or_demoted(directory: Directory) -> None:
    run(directory.create_user("root", UserFields(role="admin")))
    for attempt in (
        lambda: directory.delete_user("root"),
        lambda: directory.update_user("root", UserFields(role="editor"), ["role"]),
        lambda: directory.set_active("root", False),
    ):
        with pytest.raises(FailedPrecondition, match="last active admin"):
            run(attempt())
    assert tables.User.get(tables.User.name == "root").role == "admin"
    run(directory.create_user("second", UserFields(role="admin")))
    run(directory.update_user("root", UserFields(role="editor"), ["role"]))
    with pytest.raises(FailedPrecondition):
        run(directory.delete_user("second"))


def test_duplicate_names_already_exist(directory: Directory) -> None:
    run(directory.create_user("ann", UserFields(role="viewer")))
    with pytest.raises(AlreadyExists):
        run(directory.create_user("ann", UserFields(role="editor")))
    with pytest.raises(AlreadyExists):
        run(directory.create_workspace("ann"))  # her default workspace
    assert tables.User.select().count() == 1
    run(directory.create_app("shop", keys_fields()))
    with pytest.raises(AlreadyExists):
        run(directory.create_app("shop", keys_fields()))


def keys_fields() -> object:

    return AppFields()


def test_private_models_are_not_found_for_non_members(directory: Directory) -> None:
    run(directory.create_user("ann", UserFields(role="editor")))
    run(directory.create_user("bob", UserFields(role="editor")))
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
