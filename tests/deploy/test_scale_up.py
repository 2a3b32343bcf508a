"""A hot on-demand model gains a copy, on a real MLServe with its embedded Triton
and a second real Triton.

A slow Python-backend model (one instance, 0.2 s per call) deployed on demand on
both Tritons with max_copies 2 is loaded on one by its first call; hammered by
eight concurrent callers, its requests queue in Triton far beyond
--scale-up-queue-ms, so a later health round loads a second copy on the other
Triton (counted and audited), and never a third.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio

from mlserve_api.v1 import audit_pb2, deployment_pb2
from tests.support.mlserve import MLServeProcess, Stubs, free_port, metric
from tests.support.models import scale_model_files
from tests.support.pipelines import upload
from tests.support.tritons import TritonProcess, register, remove_model, wait_for

pytestmark = pytest.mark.integration

READY = deployment_pb2.DEPLOYMENT_STATE_READY
CALLERS = 8


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("scale-up")


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def served(home: Path, metrics_port: int) -> Iterator[MLServeProcess]:
    process = MLServeProcess(
        home,
        "--metrics-listen",
        f"127.0.0.1:{metrics_port}",
        "--health-interval",
        "0.5",
        "--scale-up-queue-ms",
        "50",
    ).start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def stubs(served: MLServeProcess) -> Iterator[Stubs]:
    stubs = served.stubs()
    try:
        yield stubs
    finally:
        stubs.channel.close()


@pytest.fixture(scope="module")
def second(home: Path, stubs: Stubs) -> Iterator[str]:
    tritonserver = TritonProcess("second", home / "tritons", {}).start()
    register(stubs, "second", tritonserver.address)
    try:
        yield "second"
    finally:
        tritonserver.stop()


def ready_servers(stubs: Stubs, model: str) -> list[str]:
    deployment = stubs.deployments.GetDeployment(
        deployment_pb2.GetDeploymentRequest(name=model), metadata=stubs.auth
    )
    return sorted(t.server for t in deployment.targets if t.state == READY)


def inputs() -> list[triton.InferInput]:
    values = np.array([1, 2, 3], dtype=np.float32)
    given = triton.InferInput("INPUT", [3], "FP32")
    given.set_data_from_numpy(values)
    return [given]


def hammer(served: MLServeProcess, stubs: Stubs, model: str, stop: threading.Event) -> None:
    """Keep CALLERS calls to ``model`` in flight through the gateway until ``stop``."""

    async def caller(client: triton_aio.InferenceServerClient) -> None:
        headers = {"authorization": f"Bearer {stubs.key}"}
        while not stop.is_set():
            await client.infer(model, inputs(), headers=headers, client_timeout=120)

    async def run() -> None:
        client = triton_aio.InferenceServerClient(served.address)
        try:
            await asyncio.gather(*(caller(client) for _ in range(CALLERS)))
        finally:
            await client.close()

    asyncio.run(run())


def test_a_hot_model_gains_a_copy_on_the_other_server_up_to_max_copies(
    served: MLServeProcess, stubs: Stubs, second: str, metrics_port: int, model_name: str
) -> None:
    upload(stubs, scale_model_files(model_name, 2.0, sleep=0.2), model_name)
    try:
        stubs.deployments.CreateDeployment(
            deployment_pb2.CreateDeploymentRequest(
                wait=True,
                deployment=deployment_pb2.Deployment(
                    model=model_name,
                    servers=["local", second],
                    loading=deployment_pb2.LOADING_MODE_ON_DEMAND,
                    max_copies=2,
                ),
            ),
            metadata=stubs.auth,
            timeout=120,
        )
        assert ready_servers(stubs, model_name) == []
        before = metric(metrics_port, "mlserve_scale_ups_total")
        stop = threading.Event()
        load = threading.Thread(target=hammer, args=(served, stubs, model_name, stop))
        load.start()
        try:
            wait_for(
                lambda: len(ready_servers(stubs, model_name)) == 2,
                timeout=180,
                what=f"a second copy of {model_name}",
                step=0.2,
            )
        finally:
            stop.set()
            load.join()
        assert ready_servers(stubs, model_name) == sorted(["local", second])
        assert metric(metrics_port, "mlserve_scale_ups_total") - before == 1
        events = stubs.audit.ListAuditEvents(
            audit_pb2.ListAuditEventsRequest(resource=model_name), metadata=stubs.auth
        ).events
        scaled = [e for e in events if e.method.endswith("/ScaleUp")]
        assert len(scaled) == 1
        assert "mean queue time per request" in scaled[0].outcome
    finally:
        remove_model(stubs, model_name)
