"""TLS on MLServe's one port, with a certificate the test makes (openssl)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from mlserve_api.v1 import model_pb2, user_pb2
from mlserve_client import Client
from tests.support.commands import GRPCURL
from tests.support.mlserve import MLServeProcess


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (it is its own CA): (cert, key)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is needed to make the test certificate")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLServeProcess]:
    home = tmp_path_factory.mktemp("tls-home")
    cert, key = make_certificate(home)
    process = MLServeProcess(
        home, "--no-embedded-triton", "--tls-cert", str(cert), "--tls-key", str(key), ca=cert
    )
    try:
        yield process.start(wait_for_triton=False)
    finally:
        process.stop()


def test_python_client_over_tls(secure: MLServeProcess) -> None:
    assert secure.ca is not None
    with Client(secure.address, secure.key, ca=secure.ca) as client:
        admin = client.users.GetUser(user_pb2.GetUserRequest(name="admin"))
        assert admin.role == user_pb2.ROLE_ADMIN
        assert list(client.list_models()) == []


def test_plaintext_is_refused_on_a_tls_port(secure: MLServeProcess) -> None:
    with grpc.insecure_channel(secure.address) as channel:
        call = channel.unary_unary("/mlserve.v1.ModelService/ListModels")
        with pytest.raises(grpc.RpcError) as failure:
            call(model_pb2.ListModelsRequest().SerializeToString(), timeout=10)
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE


def test_cli_and_grpcurl_take_the_ca(secure: MLServeProcess) -> None:
    assert secure.ca is not None
    listed = subprocess.run(
        [sys.executable, "-m", "mlserve", "--home", str(secure.home), "users", "list",
         "--address", secure.address, "--ca", str(secure.ca)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert "admin" in listed.stdout
    curl = subprocess.run(
        [GRPCURL, "-cacert", str(secure.ca), "-H", f"authorization: Bearer {secure.key}",
         secure.address, "mlserve.v1.WorkspaceService/ListWorkspaces"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert curl.returncode == 0, curl.stderr
    assert '"admin"' in curl.stdout


def test_a_missing_ca_is_named_and_the_log_says_tls_on(secure: MLServeProcess) -> None:
    plain = subprocess.run(
        [sys.executable, "-m", "mlserve", "--home", str(secure.home), "users", "list",
         "--address", secure.address],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert plain.returncode == 1
    assert "UNAVAILABLE" in plain.stderr
    assert "the server speaks TLS: pass --ca" in plain.stderr
    assert f"MLServe listening on {secure.address} (TLS on)" in secure.log.read_text()
    assert f"ready: serving on {secure.address}, TLS on;" in secure.log.read_text()


def test_a_ca_for_a_plaintext_server_is_named(mlserve: MLServeProcess, tmp_path: Path) -> None:
    cert, _ = make_certificate(tmp_path)
    tls = subprocess.run(
        [sys.executable, "-m", "mlserve", "--home", str(mlserve.home), "users", "list",
         "--address", mlserve.address, "--ca", str(cert)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert tls.returncode == 1
    assert "the server speaks plaintext, not TLS: leave out --ca" in tls.stderr


def test_python_client_takes_the_ca_as_a_str(secure: MLServeProcess) -> None:
    assert secure.ca is not None
    with Client(secure.address, home=str(secure.home), ca=str(secure.ca)) as client:
        assert client.users.GetUser(user_pb2.GetUserRequest(name="admin")).name == "admin"


def test_the_python_client_names_a_missing_ca(secure: MLServeProcess) -> None:
    with Client(secure.address, secure.key) as client, pytest.raises(grpc.RpcError) as failure:
        client.users.GetUser(user_pb2.GetUserRequest(name="admin"))
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "the server speaks TLS: pass --ca (ca= in Python)" in failure.value.details()
