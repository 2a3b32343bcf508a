"""Inference through MLServe vs straight to Triton: same model, same client
(``tritonclient.grpc.aio``), same run, interleaved so noise hits both.

Small tensors: the 1x4 FP32 "add" model at concurrency 1 and 16 (throughput
ratio, added p50/p99). Large tensors: 4 MiB per input at concurrency 1 and 8.

Each case runs in rounds (direct, then through MLServe) and the table shows
medians over the rounds, in two CPU layouts:

- *shared*: client, Triton and MLServe on all cores, competing for them;
- *own core*: the client and Triton confined to CPU 0 for both columns, the
  gateway alone on CPU 1 — a gateway deployed beside, not on top of, the
  machines it routes for. Needs at least two CPUs.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tritonclient.grpc.aio as triton_aio

from bench.common import RESULTS_DIR, MLServeProcess, Report, Table, cpu_seconds, pin_threads
from mlserve_api.v1 import server_pb2
from tests.support.models import upload_add
from tests.support.tritons import deploy

DEFAULT_SECONDS = 4.0
DEFAULT_ROUNDS = 3
GATEWAY_WORKERS = 1  # gateway processes serving the port in this benchmark
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


def run(seconds: float = DEFAULT_SECONDS, rounds: int = DEFAULT_ROUNDS) -> Report:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    tables: list[Table] = []
    with tempfile.TemporaryDirectory(dir=RESULTS_DIR) as work:
        server = MLServeProcess(Path(work) / "home").start()
        try:
            stubs = server.stubs()
            upload_add(stubs, "add")
            deploy(stubs, "add")
            direct = stubs.servers.GetServer(
                server_pb2.GetServerRequest(name="local"), metadata=stubs.auth
            ).address
            stubs.channel.close()
            assert server.process is not None
            endpoints = _Endpoints(
                direct, server.address, f"Bearer {server.key}", server.process.pid
            )
            tables.append(endpoints.measure("shared", seconds, rounds))
            if _cpu_count() >= 2:
                with _own_core_for(server.process.pid):
                    tables.append(endpoints.measure("own core", seconds, rounds))
        finally:
            server.stop()
    notes = [
        f"{rounds} rounds of {seconds:.0f} s per case and column, direct then through MLServe; "
        f"medians over the rounds (ratio: median of the per-round ratios); "
        f"{GATEWAY_WORKERS} gateway process",
        "shared: client, Triton and MLServe compete for all cores, so the ratio includes the CPU "
        "the gateway takes from the client and Triton",
        "own core: client and Triton pinned to one CPU in both columns, MLServe alone on another",
    ]
    return Report("gateway: tritonclient.grpc.aio direct vs through MLServe", tables, notes)


@dataclass(frozen=True)
class _Endpoints:
    direct: str
    gateway: str
    authorization: str
    gateway_pid: int

    def measure(self, layout: str, seconds: float, rounds: int) -> Table:
        rows: list[list[str]] = []
        headers = {"authorization": self.authorization}
        for label, elements, concurrency in CASES:
            ratios, added_p50, added_p99, cpu, rates = [], [], [], [], []
            for _ in range(rounds):
                straight = asyncio.run(load(self.direct, {}, elements, concurrency, seconds))
                cpu_before = cpu_seconds(self.gateway_pid)
                through = asyncio.run(load(self.gateway, headers, elements, concurrency, seconds))
                cpu_used = cpu_seconds(self.gateway_pid) - cpu_before
                ratios.append(through.rate / straight.rate)
                added_p50.append(through.p50_ms - straight.p50_ms)
                added_p99.append(through.p99_ms - straight.p99_ms)
                cpu.append(cpu_used / max(through.rate * seconds, 1) * 1e6)
                rates.append((straight.rate, through.rate))
            median = statistics.median
            rows.append([
                label,
                f"{median(r[0] for r in rates):.0f}", f"{median(r[1] for r in rates):.0f}",
                f"{median(ratios):.2f}", f"{min(ratios):.2f}-{max(ratios):.2f}",
                f"{median(added_p50):+.2f}", f"{median(added_p99):+.2f}",
                f"{median(cpu):.0f}",
            ])  # fmt: skip
        header = [f"{layout}: case", "direct req/s", "MLServe req/s", "ratio", "ratio range",
                  "added p50 ms", "added p99 ms", "MLServe CPU us/req"]  # fmt: skip
        return Table(header, rows)


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0))


@contextmanager
def _own_core_for(gateway_pid: int) -> Iterator[None]:
    """Pin this process (the client) and Triton to one CPU, the gateway to another."""
    every_cpu = os.sched_getaffinity(0)
    first, second = sorted(every_cpu)[:2]
    triton = _descendants(gateway_pid)
    for pid in (os.getpid(), *triton):
        pin_threads(pid, {first})
    pin_threads(gateway_pid, {second})
    time.sleep(0.5)
    try:
        yield
    finally:
        for pid in (os.getpid(), gateway_pid, *triton):
            pin_threads(pid, every_cpu)


def _descendants(pid: int) -> list[int]:
    """The processes below ``pid``: the embedded Triton and its Python-backend stubs."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    found: list[int] = []
    for child in map(int, children):
        found += [child, *_descendants(child)]
    return found
