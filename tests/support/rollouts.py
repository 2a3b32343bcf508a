"""Steady inference through MLServe while a deployment rolls between versions of
"add" (the rollout test and ``bench rollout`` share it)."""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import tritonclient.grpc as triton
from google.protobuf import field_mask_pb2
from tritonclient.utils import InferenceServerException

from mlserve_api.v1 import deployment_pb2
from tests.support.mlserve import MLServeProcess, Stubs
from tests.support.tritons import add_inputs

CONCURRENCY = 8
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
                # Bounded: a caller stuck on a hung call would keep the join below,
                # and the test process, from ever ending.
                result = client.infer(model, add_inputs(), headers=headers, client_timeout=60)
            except InferenceServerException as error:
                outcomes.failed(error)
                continue
            output = tuple(float(x) for x in result.as_numpy("OUTPUT0"))
            outcomes.answered(result.get_response().model_version, output)
    finally:
        client.close()


@contextlib.contextmanager
def steady_inference(mlserve: MLServeProcess, model: str) -> Iterator[Outcomes]:
    """``CONCURRENCY`` threads calling ModelInfer on ``model`` through ``mlserve``
    until the block ends; yields what they see."""
    outcomes = Outcomes()
    stop = threading.Event()
    callers = [
        threading.Thread(target=infer_until, args=(stop, mlserve, model, outcomes), daemon=True)
        for _ in range(CONCURRENCY)
    ]
    for caller in callers:
        caller.start()
    try:
        yield outcomes
    finally:
        stop.set()
        for caller in callers:
            caller.join(120)


def roll_to(stubs: Stubs, model: str, version: int) -> deployment_pb2.Deployment:
    """UpdateDeployment of ``model`` to ``version``; returns once it has loaded."""
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
