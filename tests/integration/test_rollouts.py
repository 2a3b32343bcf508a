"""Rollouts drop no request: against a real MLServe and its real Triton, over real
sockets, inference runs on at concurrency 8 while the deployment moves between two
versions that answer differently, ten times; and on a Triton that shares no
storage with MLServe (both versions' files pushed), four times."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton

from mlserve_api.v1 import deployment_pb2
from tests.support.mlserve import MLServeProcess, Stubs
from tests.support.models import local_triton, upload_add
from tests.support.rollouts import ANSWERS, CONCURRENCY, Outcomes, roll_to, steady_inference
from tests.support.tritons import (
    TritonProcess,
    add_inputs,
    deploy,
    register,
    remove_model,
    wait_for,
)

ROLLOUTS = 10

# Over ~20 s each (or a slow module start): `pytest -m "not slow"` leaves them out.
pytestmark = pytest.mark.slow


def upload_two_versions(stubs: Stubs, model: str) -> None:
    upload_add(stubs, model)
    upload_add(stubs, model, offset=100.0)
    deploy(stubs, model, version=1)


def roll_under_inference(
    mlserve: MLServeProcess, stubs: Stubs, model: str, rollouts: int
) -> tuple[Outcomes, int]:
    """Roll ``model`` from version 1 to 2 and back, ``rollouts`` times, while
    inference runs; returns what the callers saw and the last version."""
    with steady_inference(mlserve, model) as outcomes:
        wait_for(lambda: outcomes.count(1) or outcomes.failures, 60, "the first answers")
        assert outcomes.failures == []
        version = 1
        for _ in range(rollouts):
            version = 3 - version
            answered_before = outcomes.count(version)
            deployment = roll_to(stubs, model, version)
            assert deployment.version == version
            assert deployment.state == deployment_pb2.DEPLOYMENT_STATE_READY, deployment
            # Inference went on across the rollout: the new version answers now.
            wait_for(
                lambda v=version, n=answered_before: outcomes.count(v) > n + CONCURRENCY,
                60,
                f"answers of version {version}",
            )
    return outcomes, version


def check_no_call_failed(outcomes: Outcomes) -> None:
    assert outcomes.failures == []
    # Every answer is one of the two versions', from the version that says it served it.
    assert set(outcomes.answers) <= {(str(v), answer) for v, answer in ANSWERS.items()}


def check_only_version_serves(
    direct: triton.InferenceServerClient, model: str, version: int
) -> None:
    other = str(3 - version)
    assert direct.is_model_ready(model, str(version))
    assert not direct.is_model_ready(model, other)
    np.testing.assert_allclose(
        direct.infer(model, add_inputs()).as_numpy("OUTPUT0"), ANSWERS[version]
    )


def test_rollouts_under_steady_inference_fail_no_call(
    mlserve: MLServeProcess, stubs: Stubs, model_name: str
) -> None:
    upload_two_versions(stubs, model_name)
    try:
        outcomes, version = roll_under_inference(mlserve, stubs, model_name, ROLLOUTS)
        check_no_call_failed(outcomes)
        direct = local_triton(stubs)
        try:
            index = direct.get_model_repository_index(as_json=True)["models"]
            states = {m.get("version"): m.get("state") for m in index if m["name"] == model_name}
            assert states[str(version)] == "READY"
            assert states.get(str(3 - version)) != "READY", states
            check_only_version_serves(direct, model_name, version)
        finally:
            direct.close()
    finally:
        remove_model(stubs, model_name)


def test_rollouts_on_a_pushed_triton_fail_no_call(tmp_path: Path) -> None:
    mlserve = MLServeProcess(tmp_path / "home", "--no-embedded-triton")
    pushed = TritonProcess("p1", tmp_path, {})
    try:
        mlserve.start(wait_for_triton=False)
        pushed.start()
        stubs = mlserve.stubs()
        try:
            assert not register(stubs, "p1", pushed.address).shares_repository
            upload_two_versions(stubs, "rolled")
            outcomes, version = roll_under_inference(mlserve, stubs, "rolled", 4)
            check_no_call_failed(outcomes)
            direct = pushed.client()
            try:
                check_only_version_serves(direct, "rolled", version)
            finally:
                direct.close()
        finally:
            stubs.channel.close()
    finally:
        pushed.stop()
        mlserve.stop()
