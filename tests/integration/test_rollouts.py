"""Rollouts drop no request: against a real MLServe and its real Triton, over real
sockets, inference runs on at concurrency 8 while the deployment moves between two
versions that answer differently, ten times."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest

from mlserve_api.v1 import deployment_pb2
from tests.support.mlserve import MLServeProcess, Stubs
from tests.support.models import local_triton, upload_add
from tests.support.rollouts import ANSWERS, CONCURRENCY, Outcomes, infer_until, roll_to
from tests.support.tritons import add_inputs, deploy, remove_model, wait_for

ROLLOUTS = 10


@pytest.fixture
def two_versions(stubs: Stubs, model_name: str) -> Iterator[str]:
    upload_add(stubs, model_name)
    upload_add(stubs, model_name, offset=100.0)
    deploy(stubs, model_name, version=1)
    yield model_name
    remove_model(stubs, model_name)


def test_rollouts_under_steady_inference_fail_no_call(
    mlserve: MLServeProcess, stubs: Stubs, two_versions: str
) -> None:
    model = two_versions
    outcomes = Outcomes()
    stop = threading.Event()
    callers = [
        threading.Thread(target=infer_until, args=(stop, mlserve, model, outcomes))
        for _ in range(CONCURRENCY)
    ]
    for caller in callers:
        caller.start()
    try:
        wait_for(lambda: outcomes.count(1) or outcomes.failures, 60, "the first answers")
        assert outcomes.failures == []
        version = 1
        for _ in range(ROLLOUTS):
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
    finally:
        stop.set()
        for caller in callers:
            caller.join()

    assert outcomes.failures == []
    # Every answer is one of the two versions', from the version that says it served it.
    assert set(outcomes.answers) <= {(str(v), answer) for v, answer in ANSWERS.items()}
    # Only the version the last rollout went to is loaded now.
    direct = local_triton(stubs)
    try:
        index = direct.get_model_repository_index(as_json=True)["models"]
        states = {m.get("version"): m.get("state") for m in index if m["name"] == model}
        assert states[str(version)] == "READY"
        assert states.get(str(3 - version)) != "READY", states
        np.testing.assert_allclose(
            direct.infer(model, add_inputs()).as_numpy("OUTPUT0"), ANSWERS[version]
        )
    finally:
        direct.close()
