"""Inference through MLServe vs straight to Triton: same model, same client
(``tritonclient.grpc.aio``), same run, interleaved so noise hits both.

Small tensors: the 1x4 FP32 "add" model at concurrency 1 and 16 (throughput
ratio, added p50/p99). Large tensors: 4 MiB per input at concurrency 1 and 8.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tritonclient.grpc.aio as triton_aio

from bench.common import RESULTS_DIR, MLServeProcess, Report, Table, cpu_seconds
from mlserve_api.v1 import deployment_pb2, server_pb2
from tests.test_lifecycle import upload_add

DEFAULT_SECONDS = 6.0
# (label, FP32 elements per input, concurrency)
CASES = (
    ("small 1x4, c=1", 4, 1),
    ("small 1x4, c=16", 4, 16),
    ("large 4 MiB, c=1", 1024 * 1024, 1),
    ("large 4 MiB, c=8", 1024 * 1024, 8),
)


@dataclass(frozen=True)
class Run:
    rate: float  # requests per second
    p50_ms: float
    p99_ms: float


async def load(address: str, headers: dict[str, str], elements: int, concurrency: int,
                seconds: float) -> Run:  # fmt: skip
    client = triton_aio.InferenceServerClient(address)
    data = np.ones(elements, dtype=np.float32)
    inputs = [
        triton_aio.InferInput("INPUT0", [elements], "FP32"),
        triton_aio.InferInput("INPUT1", [elements], "FP32"),
    ]
    for tensor in inputs:
        tensor.set_data_from_numpy(data)
    await client.infer("add", inputs, headers=headers)  # warm the connection
    latencies: list[float] = []
    stop = time.monotonic() + seconds

    async def worker() -> None:
        while time.monotonic() < stop:
            began = time.perf_counter()
            await client.infer("add", inputs, headers=headers)
            latencies.append(time.perf_counter() - began)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    await client.close()
    latencies.sort()
    return Run(
        len(latencies) / seconds,
        latencies[len(latencies) // 2] * 1000,
        latencies[int(len(latencies) * 0.99)] * 1000,
    )


def run(seconds: float = DEFAULT_SECONDS) -> Report:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=RESULTS_DIR) as work:
        server = MLServeProcess(Path(work) / "home").start()
        try:
            stubs = server.stubs()
            upload_add(stubs, "add")
            stubs.deployments.CreateDeployment(
                deployment_pb2.CreateDeploymentRequest(
                    deployment=deployment_pb2.Deployment(model="add")
                ),
                metadata=stubs.auth,
            )
            direct = stubs.servers.GetServer(
                server_pb2.GetServerRequest(name="local"), metadata=stubs.auth
            ).address
            headers = {"authorization": f"Bearer {server.key}"}
            rows: list[list[str]] = []
            assert server.process is not None
            for label, elements, concurrency in CASES:
                straight = asyncio.run(load(direct, {}, elements, concurrency, seconds))
                cpu_before = cpu_seconds(server.process.pid)
                through = asyncio.run(load(server.address, headers, elements, concurrency, seconds))
                cpu_used = cpu_seconds(server.process.pid) - cpu_before
                per_request = cpu_used / max(through.rate * seconds, 1) * 1e6
                rows.append([
                    label,
                    f"{straight.rate:.0f}", f"{through.rate:.0f}",
                    f"{through.rate / straight.rate:.2f}",
                    f"{through.p50_ms - straight.p50_ms:+.2f}",
                    f"{through.p99_ms - straight.p99_ms:+.2f}",
                    f"{per_request:.0f}",
                ])  # fmt: skip
            stubs.channel.close()
        finally:
            server.stop()
    header = ["case", "direct req/s", "MLServe req/s", "ratio", "added p50 ms", "added p99 ms",
              "MLServe CPU us/req"]  # fmt: skip
    notes = [
        f"{seconds:.0f} s per measurement; direct then through MLServe, one gateway process",
        "client, MLServe and Triton share this machine's cores: the ratio includes the CPU "
        "the gateway takes from the client and Triton",
    ]
    return Report("gateway: tritonclient.grpc.aio direct vs through MLServe", [Table(header, rows)],
                  notes)  # fmt: skip
