"""Loads run in the background with a deadline, on the session's real embedded
Triton: a model whose initialize() outsleeps its deadline is FAILED with the
reason while the server stays READY and keeps serving the others, and
DeleteDeployment of it answers although Triton is still inside initialize()."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from mlserve_api.v1 import deployment_pb2, server_pb2
from tests.support.checks import expect_error
from tests.support.commands import mlserve_cli
from tests.support.mlserve import MLServeProcess, Stubs
from tests.support.models import (
    add_model_files,
    infer_add,
    local_triton,
    upload_add,
    with_initialize,
)
from tests.support.tritons import deploy, remove_model, wait_for
from tests.support.uploading import stream

pytestmark = pytest.mark.integration

DEADLINE = 2.0
SLEEP = 20  # initialize() outsleeps the deadline by far; the sandbox lets it only sleep
FAILED = deployment_pb2.DEPLOYMENT_STATE_FAILED
LOADING = deployment_pb2.DEPLOYMENT_STATE_LOADING


def wedged_model_files(name: str) -> dict[str, bytes]:
    """The "add" model under ``name``, whose initialize() sleeps SLEEP seconds."""
    return with_initialize(
        add_model_files(name=name), f"        import time\n        time.sleep({SLEEP})\n"
    )


@pytest.fixture
def wedged(stubs: Stubs, model_name: str) -> Iterator[str]:
    files = wedged_model_files(model_name)
    config = files.pop("config.pbtxt").decode()
    stubs.models.UploadModelVersion(
        stream(model_name, files, config=config), metadata=stubs.auth, timeout=60
    )
    yield model_name
    remove_model(stubs, model_name)


@pytest.fixture
def uploaded(stubs: Stubs, model_name: str) -> Iterator[str]:
    """Another model, "add" at version 1, that loads at once."""
    name = f"{model_name}-add"[:120]
    upload_add(stubs, name)
    yield name
    remove_model(stubs, name)


@pytest.fixture
def serving(stubs: Stubs, uploaded: str) -> str:
    deploy(stubs, uploaded)
    return uploaded


def create(stubs: Stubs, model: str, **fields: float) -> deployment_pb2.Deployment:
    """CreateDeployment without wait: it answers at once."""
    answer: deployment_pb2.Deployment = stubs.deployments.CreateDeployment(
        deployment_pb2.CreateDeploymentRequest(
            deployment=deployment_pb2.Deployment(model=model, **fields)
        ),
        metadata=stubs.auth,
        timeout=10,
    )
    return answer


def get(stubs: Stubs, name: str) -> deployment_pb2.Deployment:
    found: deployment_pb2.Deployment = stubs.deployments.GetDeployment(
        deployment_pb2.GetDeploymentRequest(name=name), metadata=stubs.auth, timeout=10
    )
    return found


def test_a_load_past_its_deadline_is_failed_and_the_server_serves_on(
    stubs: Stubs, wedged: str, serving: str
) -> None:
    created = create(stubs, wedged, load_timeout_seconds=DEADLINE)
    assert created.state == LOADING, created
    assert [target.state for target in created.targets] == [LOADING]
    assert created.load_timeout_seconds == DEADLINE

    failed = wait_for(
        lambda: (found := get(stubs, wedged)).state == FAILED and found,
        timeout=60,
        what="the wedged load to fail",
        step=0.2,
    )
    assert failed.targets[0].message == "load did not finish in 2 s", failed
    local = stubs.servers.GetServer(
        server_pb2.GetServerRequest(name="local"), metadata=stubs.auth, timeout=10
    )
    assert local.state == server_pb2.SERVER_STATE_READY, local
    client = local_triton(stubs)
    assert infer_add(client, serving).tolist() == [11, 22, 33, 44]

    # Triton may still be inside initialize() (the reconciler tries again after
    # its back-off): the delete does not wait for it.
    stubs.deployments.DeleteDeployment(
        deployment_pb2.DeleteDeploymentRequest(name=wedged), metadata=stubs.auth, timeout=10
    )
    expect_error(grpc.StatusCode.NOT_FOUND, get, stubs, wedged)
    assert infer_add(client, serving).tolist() == [11, 22, 33, 44]


def test_delete_answers_while_the_load_hangs(stubs: Stubs, wedged: str) -> None:
    """The server's default deadline (2 minutes) is far away: the delete abandons
    the load rather than waiting for it."""
    assert create(stubs, wedged).state == LOADING
    stubs.deployments.DeleteDeployment(
        deployment_pb2.DeleteDeploymentRequest(name=wedged), metadata=stubs.auth, timeout=10
    )
    expect_error(grpc.StatusCode.NOT_FOUND, get, stubs, wedged)


@pytest.mark.parametrize("timeout", [-1.0, float("nan"), float("inf")])
def test_a_bad_load_timeout_is_invalid_and_nothing_is_deployed(
    stubs: Stubs, uploaded: str, timeout: float
) -> None:
    error = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT, create, stubs, uploaded, load_timeout_seconds=timeout
    )
    assert "load_timeout_seconds" in str(error.details())
    expect_error(grpc.StatusCode.NOT_FOUND, get, stubs, uploaded)


def test_the_cli_waits_with_a_progress_line_or_returns_at_once(
    mlserve: MLServeProcess, stubs: Stubs, wedged: str, uploaded: str
) -> None:
    waited = mlserve_cli(mlserve, "deploy", uploaded)
    assert waited.returncode == 0, waited.stdout + waited.stderr
    assert f"loading {uploaded} version 1: local LOADING" in waited.stdout
    (summary,) = [line for line in waited.stdout.splitlines() if line.startswith("deploy")]
    assert summary.endswith("READY"), waited.stdout
    assert get(stubs, uploaded).state == deployment_pb2.DEPLOYMENT_STATE_READY

    at_once = mlserve_cli(mlserve, "deploy", wedged, "--no-wait")
    assert at_once.returncode == 0, at_once.stdout + at_once.stderr
    assert "loading" not in at_once.stdout
    assert "LOADING" in at_once.stdout
    undeployed = mlserve_cli(mlserve, "undeploy", wedged)
    assert undeployed.returncode == 0, undeployed.stderr
