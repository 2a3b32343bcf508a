"""Signing in with OpenID Connect tokens from a real issuer (tests/support/issuer.py)
beside API keys, against a real MLServe over a real socket: every bad token is
UNAUTHENTICATED with the check that failed, and creates nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import jwt
import pytest

from mlserve_api.v1 import model_pb2, user_pb2, workspace_pb2
from tests.support.issuer import Issuer, trusting
from tests.support.mlserve import MLServeProcess, Stubs, started_without_triton
from tests.support.users import PID


@pytest.fixture(scope="module")
def hanging_issuer() -> Iterator[Issuer]:
    with Issuer() as running:
        yield running


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, issuer: Issuer, hanging_issuer: Issuer
) -> Iterator[MLServeProcess]:
    options = (
        *trusting(issuer, hanging_issuer), "--oidc-user-claim", "preferred_username",
        "--oidc-workspaces-claim", "groups", "--oidc-fetch-timeout", "1",
    )  # fmt: skip
    with started_without_triton(tmp_path_factory.mktemp("oidc"), *options) as process:
        yield process


@pytest.fixture(scope="module")
def admin(server: MLServeProcess) -> Iterator[Stubs]:
    stubs = server.stubs()
    yield stubs
    stubs.channel.close()


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def list_models(admin: Stubs, token: str) -> model_pb2.ListModelsResponse:
    response: model_pb2.ListModelsResponse = admin.models.ListModels(
        model_pb2.ListModelsRequest(), metadata=bearer(token), timeout=30
    )
    return response


def user_names(admin: Stubs) -> set[str]:
    users = admin.users.ListUsers(user_pb2.ListUsersRequest(page_size=1000), metadata=admin.auth)
    return {user.name for user in users.users}


def refused(admin: Stubs, token: str) -> str:
    with pytest.raises(grpc.RpcError) as error:
        list_models(admin, token)
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
    return str(error.value.details())


def test_a_token_signs_in_a_new_user_and_keys_keep_working(admin: Stubs, issuer: Issuer) -> None:
    name = f"ada-{PID}"
    assert name not in user_names(admin)
    list_models(admin, issuer.token(name))
    user = admin.users.GetUser(user_pb2.GetUserRequest(name=name), metadata=admin.auth)
    assert user.role == user_pb2.ROLE_VIEWER  # no role claim: the lowest role
    list_models(admin, issuer.token(name, kid="ec-1"))  # ES256 too, the same user
    admin.models.ListModels(model_pb2.ListModelsRequest(), metadata=admin.auth)  # the key


def test_the_roles_claim_sets_the_role_and_an_unknown_role_is_a_viewer(
    admin: Stubs, issuer: Issuer
) -> None:
    name = f"grace-{PID}"
    editor = issuer.token(name, realm_access={"roles": ["offline_access", "editor"]})
    created = admin.models.CreateModel(
        model_pb2.CreateModelRequest(model=model_pb2.Model(name=f"oidc-model-{PID}")),
        metadata=bearer(editor),
    )
    assert created.name == f"oidc-model-{PID}"
    demoted = issuer.token(name, realm_access={"roles": ["uma_authorization"]})
    with pytest.raises(grpc.RpcError) as error:
        admin.models.CreateModel(
            model_pb2.CreateModelRequest(model=model_pb2.Model(name=f"oidc-other-{PID}")),
            metadata=bearer(demoted),
        )
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
    user = admin.users.GetUser(user_pb2.GetUserRequest(name=name), metadata=admin.auth)
    assert user.role == user_pb2.ROLE_VIEWER


def test_groups_naming_workspaces_make_the_user_a_collaborator(
    admin: Stubs, issuer: Issuer
) -> None:
    space, name = f"team-{PID}", f"linus-{PID}"
    admin.workspaces.CreateWorkspace(
        workspace_pb2.CreateWorkspaceRequest(workspace=workspace_pb2.Workspace(name=space)),
        metadata=admin.auth,
    )
    list_models(admin, issuer.token(name, groups=[f"/{space}", "/no-such-workspace"]))
    members = admin.workspaces.ListMembers(
        workspace_pb2.ListMembersRequest(workspace=space), metadata=admin.auth
    )
    assert [m.user for m in members.members if m.user == name] == [name]


def _hs256_with_the_public_key(issuer: Issuer) -> str:
    """The classic forgery: HS256 keyed with the issuer's public key (PyJWT refuses to
    make one, so it is put together by hand)."""
    import base64
    import hashlib
    import hmac
    import json

    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    real = jwt.decode(issuer.token("mallory"), options={"verify_signature": False})
    header = part(json.dumps({"alg": "HS256", "kid": "rsa-1", "typ": "JWT"}).encode())
    body = part(json.dumps(real).encode())
    mac = hmac.new(issuer.public_pem(), f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{part(mac)}"


def _alg_none(issuer: Issuer) -> str:
    real = jwt.decode(issuer.token("mallory"), options={"verify_signature": False})
    return jwt.encode(real, key=None, algorithm="none", headers={"kid": "rsa-1"})


BAD_TOKENS = {
    "expired": (lambda i: i.token("mallory", lifetime=-60), "expired (exp)"),
    "not yet valid": (lambda i: i.token("mallory", not_before=600), "not valid yet"),
    "wrong audience": (lambda i: i.token("mallory", audience="other-service"), "aud"),
    "wrong issuer": (lambda i: i.token("mallory", issuer="https://evil.example"), "issuer (iss)"),
    "alg none": (_alg_none, "algorithm is refused"),
    "HS256 with the public key": (_hs256_with_the_public_key, "algorithm is refused"),
    "unknown kid": (lambda i: _with_kid(i, "forged-kid"), "kid"),
    "no exp": (lambda i: i.token("mallory", omit=("exp",)), "lacks the exp claim"),
    "bad signature": (lambda i: _tampered(i), "signature does not verify"),
    "not a JWT": (lambda i: "eyJub3QiOiJhIHRva2VuIn0.eyJ.x", "not a well-formed JWT"),
}


def _with_kid(issuer: Issuer, kid: str) -> str:
    issuer.keys[kid] = issuer.keys["rsa-1"]  # signed with a key it does not publish…
    try:
        token = issuer.token("mallory", kid=kid)
    finally:
        del issuer.keys[kid]  # …and never will
    return token


def _tampered(issuer: Issuer) -> str:
    header, _body, signature = issuer.token("mallory").split(".")
    other_body = issuer.token("admin").split(".")[1]
    return f"{header}.{other_body}.{signature}"


@pytest.mark.parametrize("case", list(BAD_TOKENS))
def test_a_bad_token_is_unauthenticated_saying_which_check_failed(
    admin: Stubs, issuer: Issuer, case: str
) -> None:
    make, says = BAD_TOKENS[case]
    before = user_names(admin)
    message = refused(admin, make(issuer))
    assert says in message
    assert "mallory" not in message
    assert "BEGIN PUBLIC KEY" not in message
    assert user_names(admin) == before  # nobody was made


def test_a_kid_flood_does_not_hammer_the_issuer(admin: Stubs, issuer: Issuer) -> None:
    list_models(admin, issuer.token(f"kid-flood-{PID}"))  # keys cached
    before = issuer.jwks_requests
    for n in range(50):
        assert "kid" in refused(admin, _with_kid(issuer, f"flood-{n}"))
    assert issuer.jwks_requests - before <= 1


def test_a_hanging_key_set_is_refused_within_the_fetch_timeout(
    admin: Stubs, hanging_issuer: Issuer
) -> None:
    with hanging_issuer.hanging():
        message = refused(admin, hanging_issuer.token(f"patient-{PID}"))
    assert "could not be fetched" in message
    assert "timed out" in message


def test_a_deactivated_or_deleted_user_is_refused_at_once(admin: Stubs, issuer: Issuer) -> None:
    name = f"leaver-{PID}"
    token = issuer.token(name)
    list_models(admin, token)
    admin.users.DeactivateUser(user_pb2.DeactivateUserRequest(name=name), metadata=admin.auth)
    assert "deactivated" in refused(admin, token)
    admin.users.ActivateUser(user_pb2.ActivateUserRequest(name=name), metadata=admin.auth)
    list_models(admin, token)
    admin.users.DeleteUser(user_pb2.DeleteUserRequest(name=name), metadata=admin.auth)
    assert "deleted" in refused(admin, token)
    assert "deleted" in refused(admin, issuer.token(name))  # a fresh token: still refused
    assert name not in user_names(admin)


def test_a_token_never_takes_over_an_existing_user(admin: Stubs, issuer: Issuer) -> None:
    assert "exists already" in refused(admin, issuer.token("admin"))


def test_tokens_are_refused_where_no_issuer_is_trusted(tmp_path: Path, issuer: Issuer) -> None:
    with started_without_triton(tmp_path) as keys_only, keys_only.channel() as channel:
        stubs = Stubs(channel, keys_only.key)
        assert "trusts no OIDC issuer" in refused(stubs, issuer.token("ada"))
