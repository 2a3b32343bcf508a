"""Gateway throughput with ``--workers 1`` against ``--workers 2``, one run.

Two MLServes, each with its own embedded Triton, started alike but for
``--workers``. The load: small 1x4 FP32 calls on "add" from
``CLIENT_PROCESSES`` client processes, each with ``CONNECTIONS`` connections
of its own (a channel each, no shared subchannel, so the kernel spreads them
over the workers) and ``PER_CONNECTION`` calls in flight on each; interleaved
rounds of the same length. The split of calls between the two workers is read
from the merged /metrics (``mlserve_worker_inference_requests_total``).
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
import urllib.request
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import tritonclient.grpc.aio as triton_aio
from prometheus_client.parser import text_string_to_metric_families

from bench.common import RESULTS_DIR, MLServeProcess, Report, Table, free_port
from tests.support.models import upload_add
from tests.support.tritons import deploy

DEFAULT_SECONDS = 4.0
DEFAULT_ROUNDS = 3
CLIENT_PROCESSES = 2
CONNECTIONS = 4  # per client process
PER_CONNECTION = 4  # calls in flight on each connection


def run(seconds: float = DEFAULT_SECONDS, rounds: int = DEFAULT_ROUNDS) -> Report:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    rows: list[list[str]] = []
    with tempfile.TemporaryDirectory(dir=RESULTS_DIR) as work:
        metrics_port = free_port()
        servers = {
            1: MLServeProcess(Path(work) / "one", "--workers", "1"),
            2: MLServeProcess(
                Path(work) / "two", "--workers", "2", "--metrics-listen",
                f"127.0.0.1:{metrics_port}",
            ),
        }  # fmt: skip
        rates: dict[int, list[float]] = {count: [] for count in servers}
        try:
            for server in servers.values():
                server.start()
                _wait_for_workers(server)
                stubs = server.stubs()
                upload_add(stubs, "add")
                deploy(stubs, "add")
                stubs.channel.close()
            with ProcessPoolExecutor(CLIENT_PROCESSES) as clients:
                for _ in range(rounds):
                    for count, server in servers.items():
                        rates[count].append(_load(clients, server, seconds))
            split = _split(f"http://127.0.0.1:{metrics_port}/metrics")
        finally:
            for server in servers.values():
                server.stop()
    one, two = statistics.median(rates[1]), statistics.median(rates[2])
    ratios = [b / a for a, b in zip(rates[1], rates[2], strict=True)]
    rows.append([
        f"small 1x4, {CLIENT_PROCESSES}x{CONNECTIONS} connections x {PER_CONNECTION} in flight",
        f"{one:.0f}", f"{two:.0f}", f"{statistics.median(ratios):.2f}",
        f"{min(ratios):.2f}-{max(ratios):.2f}", split,
    ])  # fmt: skip
    header = ["case", "--workers 1 req/s", "--workers 2 req/s", "ratio 2/1", "ratio range",
              "calls per worker (2)"]  # fmt: skip
    notes = [
        f"{rounds} interleaved rounds of {seconds:.0f} s; medians; each MLServe with its own "
        "embedded Triton; client, Triton(s) and gateway processes share the machine's cores",
    ]
    return Report("workers: gateway throughput, --workers 1 vs --workers 2", [Table(header, rows)],
                  notes)  # fmt: skip


def _wait_for_workers(server: MLServeProcess) -> None:
    """Until the parent logged that every worker serves (``--workers 1`` has no parent)."""
    if "--workers" in server.extra and server.extra[server.extra.index("--workers") + 1] == "1":
        return
    deadline = time.monotonic() + 120
    while "workers serve" not in server.log.read_text():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the workers did not start:\n{server.log.read_text()[-3000:]}")
        time.sleep(0.2)


def _load(clients: ProcessPoolExecutor, server: MLServeProcess, seconds: float) -> float:
    headers = {"authorization": f"Bearer {server.key}"}
    futures = [
        clients.submit(_client_process, server.address, headers, seconds)
        for _ in range(CLIENT_PROCESSES)
    ]
    return sum(future.result() for future in futures) / seconds


def _client_process(address: str, headers: dict[str, str], seconds: float) -> int:
    return asyncio.run(_connections(address, headers, seconds))


async def _connections(address: str, headers: dict[str, str], seconds: float) -> int:
    own = [("grpc.use_local_subchannel_pool", 1)]
    clients = [
        triton_aio.InferenceServerClient(address, channel_args=own) for _ in range(CONNECTIONS)
    ]
    data = np.ones(4, dtype=np.float32)
    inputs = [triton_aio.InferInput(name, [4], "FP32") for name in ("INPUT0", "INPUT1")]
    for tensor in inputs:
        tensor.set_data_from_numpy(data)
    for client in clients:
        await client.infer("add", inputs, headers=headers)  # connect before the clock
    done = 0
    stop = time.monotonic() + seconds

    async def caller(client: triton_aio.InferenceServerClient) -> None:
        nonlocal done
        while time.monotonic() < stop:
            await client.infer("add", inputs, headers=headers)
            done += 1

    await asyncio.gather(*(caller(c) for c in clients for _ in range(PER_CONNECTION)))
    for client in clients:
        await client.close()
    return done


def _split(metrics_url: str) -> str:
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    served = {
        sample.labels["worker"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "mlserve_worker_inference_requests_total"
    }
    total = sum(served.values()) or 1
    return " / ".join(f"w{w}: {served[w] / total:.0%}" for w in sorted(served))
