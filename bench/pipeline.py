"""Pipelines: a 3-step ensemble vs the same three models called one after
another by the client, and dynamic batching on vs off; one MLServe with its
embedded Triton, every call through the gateway with ``tritonclient.grpc.aio``.

1. preprocess (x2) -> add (+B) -> postprocess (+100), Python-backend models:
   one ensemble call vs three client round trips, at concurrency 1 and 8.
2. A model with a fixed 5 ms cost per execute call (max_batch_size 16), two
   copies of the same version: one deployed plain, one deployed with dynamic
   batching (a serving setting at deploy time); batch-1 requests at
   concurrency 16.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tritonclient.grpc.aio as triton_aio

from bench.common import RESULTS_DIR, MLServeProcess, Report, Table
from mlserve_api.v1 import deployment_pb2, pipeline_pb2
from tests.support.mlserve import Stubs
from tests.support.models import add_model_files, scale_model_files
from tests.support.pipelines import chain, upload

DEFAULT_SECONDS = 5.0
SLEEP = 0.005
Call = Callable[[], Awaitable[object]]


@dataclass(frozen=True)
class Run:
    rate: float  # calls per second
    p50_ms: float


async def _measure(call: Call, concurrency: int, seconds: float) -> Run:
    await call()  # warm the connection and the models
    latencies: list[float] = []
    stop = time.monotonic() + seconds

    async def worker() -> None:
        while time.monotonic() < stop:
            began = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - began)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    latencies.sort()
    return Run(len(latencies) / seconds, latencies[len(latencies) // 2] * 1000)


def _tensor(name: str, data: np.ndarray) -> triton_aio.InferInput:
    tensor = triton_aio.InferInput(name, list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    return tensor


async def _compare_chain(address: str, headers: dict[str, str], seconds: float) -> list[list[str]]:
    client = triton_aio.InferenceServerClient(address)
    a = np.arange(4, dtype=np.float32)
    b = np.full(4, 10, dtype=np.float32)
    expected = 2 * a + b + 100

    async def ensemble() -> object:
        result = await client.infer("chain", [_tensor("A", a), _tensor("B", b)], headers=headers)
        assert (result.as_numpy("OUT") == expected).all()
        return result

    async def one_by_one() -> object:
        pre = await client.infer("pre", [_tensor("INPUT", a)], headers=headers)
        added = await client.infer(
            "add",
            [_tensor("INPUT0", pre.as_numpy("OUTPUT")), _tensor("INPUT1", b)],
            headers=headers,
        )
        post = await client.infer(
            "post", [_tensor("INPUT", added.as_numpy("OUTPUT0"))], headers=headers
        )
        assert (post.as_numpy("OUTPUT") == expected).all()
        return post

    rows = []
    for concurrency in (1, 8):
        separate = await _measure(one_by_one, concurrency, seconds)
        together = await _measure(ensemble, concurrency, seconds)
        rows.append([
            f"c={concurrency}",
            f"{separate.rate:.0f}", f"{together.rate:.0f}",
            f"{together.rate / separate.rate:.2f}",
            f"{separate.p50_ms:.2f}", f"{together.p50_ms:.2f}",
            f"{separate.p50_ms / together.p50_ms:.2f}",
        ])  # fmt: skip
    await client.close()
    return rows


async def _compare_batching(
    address: str, headers: dict[str, str], seconds: float
) -> list[list[str]]:
    client = triton_aio.InferenceServerClient(address)
    x = np.ones((1, 4), dtype=np.float32)

    def caller(model: str) -> Call:
        return lambda: client.infer(model, [_tensor("INPUT", x)], headers=headers)

    rows = []
    for concurrency in (1, 16):
        plain = await _measure(caller("slow-plain"), concurrency, seconds)
        batched = await _measure(caller("slow-batched"), concurrency, seconds)
        rows.append([
            f"c={concurrency}",
            f"{plain.rate:.0f}", f"{batched.rate:.0f}",
            f"{batched.rate / plain.rate:.2f}",
            f"{plain.p50_ms:.2f}", f"{batched.p50_ms:.2f}",
        ])  # fmt: skip
    await client.close()
    return rows


def run(seconds: float = DEFAULT_SECONDS) -> Report:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=RESULTS_DIR) as work:
        server = MLServeProcess(Path(work) / "home").start()
        try:
            stubs = server.stubs()
            upload(stubs, scale_model_files("pre", factor=2.0), "pre")
            upload(stubs, add_model_files(name="add"), "add")
            upload(stubs, scale_model_files("post", offset=100.0), "post")
            stubs.pipelines.CreatePipeline(
                pipeline_pb2.CreatePipelineRequest(pipeline=chain("chain", ("pre", "add", "post"))),
                metadata=stubs.auth,
            )
            _deploy(stubs, deployment_pb2.Deployment(pipeline="chain"))
            batching = pipeline_pb2.ServingSettings(
                dynamic_batching=pipeline_pb2.DynamicBatching(
                    preferred_batch_sizes=[8, 16], max_queue_delay_microseconds=2000
                )
            )
            for name, settings in (("slow-plain", None), ("slow-batched", batching)):
                files = scale_model_files(name, sleep=SLEEP, max_batch_size=16, dims=(4,))
                upload(stubs, files, name)
                _deploy(stubs, deployment_pb2.Deployment(model=name, serving=settings))
            headers = {"authorization": f"Bearer {server.key}"}
            chain_rows = asyncio.run(_compare_chain(server.address, headers, seconds))
            batch_rows = asyncio.run(_compare_batching(server.address, headers, seconds))
            stubs.channel.close()
        finally:
            server.stop()
    chain_header = ["concurrency", "3 calls/s", "ensemble/s", "throughput ratio",
                    "3 calls p50 ms", "ensemble p50 ms", "latency ratio"]  # fmt: skip
    batch_header = ["concurrency", "plain req/s", "batched req/s", "throughput ratio",
                    "plain p50 ms", "batched p50 ms"]  # fmt: skip
    notes = [
        f"{seconds:.0f} s per measurement, through MLServe's gateway; client, MLServe and "
        "Triton share this machine's cores",
        "3 calls: pre, add, post called one after another by the client (the members of the "
        "deployed pipeline, routed by the gateway); ensemble: one call to the pipeline",
        f"batching: a model costing {SLEEP * 1000:.0f} ms per execute call, batch-1 requests; "
        "dynamic batching (preferred 8,16; 2 ms queue delay) set at deploy time",
    ]
    return Report(
        "pipeline: ensemble vs three calls; dynamic batching on vs off",
        [Table(chain_header, chain_rows), Table(batch_header, batch_rows)],
        notes,
    )


def _deploy(stubs: Stubs, deployment: deployment_pb2.Deployment) -> None:
    created = stubs.deployments.CreateDeployment(
        deployment_pb2.CreateDeploymentRequest(wait=True, deployment=deployment),
        metadata=stubs.auth,
        timeout=180,
    )
    assert created.state == deployment_pb2.DEPLOYMENT_STATE_READY, created
