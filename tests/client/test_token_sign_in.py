"""Signing in with an OIDC token from the test issuer through the Python client,
the CLI (``--token`` and ``MLSERVE_TOKEN``) and grpcurl, against a real MLServe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from mlserve_api.v1 import model_pb2
from mlserve_client import Client
from tests.support.commands import GRPCURL
from tests.support.issuer import Issuer, trusting
from tests.support.mlserve import MLServeProcess, started_without_triton
from tests.support.users import PID


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, issuer: Issuer) -> Iterator[MLServeProcess]:
    with started_without_triton(
        tmp_path_factory.mktemp("oidc-client"), *trusting(issuer)
    ) as process:
        yield process


def cli(server: MLServeProcess, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    # A home without admin.key: whatever signs in is the token.
    home = server.home / "elsewhere"
    return subprocess.run(
        [sys.executable, "-m", "mlserve", "--home", str(home), "--address", server.address, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "MLSERVE_HOME": str(home), **env},
    )


def test_the_python_client_signs_in_with_a_token(server: MLServeProcess, issuer: Issuer) -> None:
    token = issuer.token(f"py-{PID}", realm_access={"roles": ["editor"]})
    with Client(server.address, token=token) as client:
        client.models.CreateModel(
            model_pb2.CreateModelRequest(model=model_pb2.Model(name=f"from-token-{PID}"))
        )
        assert f"from-token-{PID}" in [m.name for m in client.list_models()]
    expired = issuer.token("x", lifetime=-60)
    with Client(server.address, token=expired) as client, pytest.raises(grpc.RpcError) as error:
        list(client.list_models())
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_key_and_a_token_together_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not both"):
        Client("127.0.0.1:1", "mls_a_b", token="eyJ.a.b")


def test_the_cli_signs_in_with_token_or_mlserve_token(
    server: MLServeProcess, issuer: Issuer
) -> None:
    token = issuer.token(f"cli-{PID}")
    flag = cli(server, "models", "list", "--token", token)
    assert flag.returncode == 0, flag.stderr
    variable = cli(server, "models", "list", MLSERVE_TOKEN=token)
    assert variable.returncode == 0, variable.stderr
    expired = cli(server, "models", "list", MLSERVE_TOKEN=issuer.token("y", lifetime=-60))
    assert expired.returncode == 1
    assert "expired" in expired.stderr
    assert token not in expired.stderr


def test_grpcurl_signs_in_with_a_token(server: MLServeProcess, issuer: Issuer) -> None:
    token = issuer.token(f"curl-{PID}")
    result = subprocess.run(
        [GRPCURL, "-plaintext", "-H", f"authorization: Bearer {token}", "-d", "{}",
         server.address, "mlserve.v1.ModelService/ListModels"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert isinstance(json.loads(result.stdout), dict)
