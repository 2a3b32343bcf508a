"""Rollouts drop no request: against a real MLServe and its real Triton, over real
sockets, inference runs on at concurrency 8 while the deployment moves between two
versions that answer differently, ten times."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pytest
import tritonclient.grpc as triton
from google.protobuf import field_mask_pb2
from tritonclient.utils import InferenceServerException

from mlserve_api.v1 import deployment_pb2
from tests.support.mlserve import MLServeProcess, Stubs
from tests.support.models import local_triton, upload_add
from tests.support.tritons import add_inputs, deploy, remove_model, wait_for

CONCURRENCY = 8
ROLLOUTS = 10
# What "add" answers for the default inputs, by version: version 2 adds 100.
ANSWERS = {1: (11.0, 22.0, 33.0, 44.0), 2: (111.0, 122.0, 133.0, 144.0)}


@dataclass
class Outcomes:
    """What the callers saw, shared by their threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    answers: Counter[tuple[str, tuple[float, ...]]] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    def answered(self, version: str, output: tuple[float, ...]) -> None:
        with self.lock:
            self.answers[(version, output)] += 1

    def failed(self, error: InferenceServerException) -> None:
        with self.lock:
            self.failures.append(f"{error.status()}: {error.message()}")

    def count(self, version: int) -> int:
        with self.lock:
            return sum(n for (served, _), n in self.answers.items() if served == str(version))


def infer_until(
    stop: threading.Event, mlserve: MLServeProcess, model: str, outcomes: Outcomes
) -> None:
    client = triton.InferenceServerClient(mlserve.address)
    headers = {"authorization": f"Bearer {mlserve.key}"}
    try:
        while not stop.is_set():
            try:
                result = client.infer(model, add_inputs(), headers=headers)
            except InferenceServerException as error:
                outcomes.failed(error)
                continue
            output = tuple(float(x) for x in result.as_numpy("OUTPUT0"))
            outcomes.answered(result.get_response().model_version, output)
    finally:
        client.close()


@pytest.fixture
def two_versions(stubs: Stubs, model_name: str) -> Iterator[str]:
    upload_add(stubs, model_name)
    upload_add(stubs, model_name, offset=100.0)
    deploy(stubs, model_name, version=1)
    yield model_name
    remove_model(stubs, model_name)


def roll_to(stubs: Stubs, model: str, version: int) -> deployment_pb2.Deployment:
    deployment: deployment_pb2.Deployment = stubs.deployments.UpdateDeployment(
        deployment_pb2.UpdateDeploymentRequest(
            wait=True,
            deployment=deployment_pb2.Deployment(name=model, version=version),
            update_mask=field_mask_pb2.FieldMask(paths=["version"]),
        ),
        metadata=stubs.auth,
        timeout=120,
    )
    return deployment


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
