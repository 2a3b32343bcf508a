"""From a shell with no key: grpcurl resolves health through reflection, which
is public (the API's schema is in the repository); every other call still
needs a key."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.support.commands import GRPCURL
from tests.support.mlserve import MLServeProcess


def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [GRPCURL, "-plaintext", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_health_check_prints_serving(mlserve: MLServeProcess) -> None:
    result = grpcurl(mlserve.address, "grpc.health.v1.Health/Check")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"status": "SERVING"}


def test_health_of_one_service(mlserve: MLServeProcess) -> None:
    request = json.dumps({"service": "mlserve.v1.ModelService"})
    result = grpcurl("-d", request, mlserve.address, "grpc.health.v1.Health/Check")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"status": "SERVING"}


def test_list_and_describe_need_no_key(mlserve: MLServeProcess) -> None:
    listed = grpcurl(mlserve.address, "list")
    assert listed.returncode == 0, listed.stderr
    assert {
        "grpc.health.v1.Health",
        "mlserve.v1.ModelService",
        "inference.GRPCInferenceService",
    } <= set(listed.stdout.split())
    described = grpcurl(mlserve.address, "describe", "mlserve.v1.UploadHeader")
    assert described.returncode == 0, described.stderr
    assert "// UploadHeader names the model" in described.stdout


@pytest.mark.parametrize(
    "method",
    [
        "mlserve.v1.ModelService/ListModels",
        "mlserve.v1.UserService/ListUsers",
        "inference.GRPCInferenceService/RepositoryIndex",
    ],
)
def test_every_other_call_still_needs_a_key(mlserve: MLServeProcess, method: str) -> None:
    result = grpcurl("-d", "{}", mlserve.address, method)
    assert result.returncode != 0
    assert "Code: Unauthenticated" in result.stderr, result.stderr
    assert "missing API key" in result.stderr
