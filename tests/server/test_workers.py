"""``mlserve serve --workers 2``: one port served by two processes, a real Triton.

Each new connection lands on one of the workers (SO_REUSEPORT), so the test
opens fresh connections (a channel of its own each, no shared subchannel) until
both worker processes have answered calls, which it reads from the merged
/metrics: ``mlserve_worker_inference_requests_total`` keeps one series per
worker and pid. Every other series is summed over the workers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
from prometheus_client.parser import text_string_to_metric_families

from mlserve_api.v1 import model_pb2
from tests.support.checks import wait_until
from tests.support.databases import DATABASE_KINDS
from tests.support.mlserve import MLServeProcess
from tests.support.models import upload_add
from tests.support.ports import free_port
from tests.support.postgres import PostgresCluster
from tests.support.procfs import children, triton_pid
from tests.support.tritons import add_inputs, deploy

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass
class Workers:
    process: MLServeProcess
    metrics_url: str
    workers: list[int]  # the two worker processes' pids

    def samples(self) -> Samples:
        with urllib.request.urlopen(self.metrics_url, timeout=10) as response:
            text = response.read().decode()
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def served_by(self) -> dict[int, float]:
        """Calls answered per worker pid, as the merged metrics count them."""
        return {
            int(dict(labels)["pid"]): value
            for (name, labels), value in self.samples().items()
            if name == "mlserve_worker_inference_requests_total"
        }


@pytest.fixture(scope="module", params=DATABASE_KINDS)
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Workers]:
    """``--workers 2`` on each store kind: SQLite (WAL) in the home, or PostgreSQL."""
    metrics_port = free_port()
    database: tuple[str, ...] = ()
    if request.param == "postgresql":
        cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
        database = ("--database", cluster.url(cluster.create_database()))
    process = MLServeProcess(
        tmp_path_factory.mktemp("workers"),
        "--workers", "2", "--metrics-listen", f"127.0.0.1:{metrics_port}", *database,
    )  # fmt: skip
    try:
        process.start()  # worker 0 answers health once its Triton is up
        wait_until(lambda: "2 workers serve" in process.log.read_text(), timeout=120)
        assert process.process is not None
        workers = sorted(children(process.process.pid))
        assert len(workers) == 2, workers
        yield Workers(process, f"http://127.0.0.1:{metrics_port}/metrics", workers)
    finally:
        process.stop()


def _fresh_client(address: str) -> triton.InferenceServerClient:
    # A subchannel pool of its own: a new TCP connection, so the kernel picks a worker again.
    return triton.InferenceServerClient(
        address, channel_args=[("grpc.use_local_subchannel_pool", 1)]
    )


def test_inference_through_the_port_is_served_by_both_workers(served: Workers) -> None:
    stubs = served.process.stubs()
    upload_add(stubs, "add")
    deploy(stubs, "add")
    headers = {"authorization": f"Bearer {served.process.key}"}
    made = 0
    for _ in range(200):
        client = _fresh_client(served.process.address)
        try:
            for _ in range(5):
                result = client.infer("add", add_inputs(), headers=headers)
                assert np.array_equal(
                    result.as_numpy("OUTPUT0"), np.array([11, 22, 33, 44], dtype=np.float32)
                )
                made += 1
        finally:
            client.close()
        if made >= 50 and len([v for v in served.served_by().values() if v > 0]) == 2:
            break
    by_pid = served.served_by()
    assert sorted(pid for pid, calls in by_pid.items() if calls > 0) == served.workers
    assert sum(by_pid.values()) == made
    # Every other series is the sum over the workers.
    ok = (("model", "add"), ("outcome", "ok"), ("version", "1"))
    samples = served.samples()
    assert samples[("mlserve_inference_requests_total", ok)] == made
    latency = (("model", "add"), ("version", "1"))
    assert samples[("mlserve_gateway_latency_seconds_count", latency)] == made
    # The counts in the store add up too (each worker flushes its own every round).
    wait_until(
        lambda: (
            stubs.models.GetModel(
                model_pb2.GetModelRequest(name="add"), metadata=stubs.auth
            ).inference_count
            == made
        ),
        timeout=30,
    )
    stubs.channel.close()


def test_admin_calls_work_through_either_worker(served: Workers) -> None:
    names = set()
    for number in range(20):
        stubs = served.process.stubs()
        try:
            upload_add(stubs, f"w{number}")
            listed = stubs.models.ListModels(model_pb2.ListModelsRequest(), metadata=stubs.auth)
            names = {model.name for model in listed.models}
        finally:
            stubs.channel.close()
    assert {f"w{number}" for number in range(20)} <= names


def test_only_worker_0_runs_the_embedded_triton(served: Workers) -> None:
    first, second = sorted(served.workers, key=lambda pid: _slot_of(pid))
    triton_pid(first)
    with pytest.raises(AssertionError):
        triton_pid(second)


def _slot_of(pid: int) -> str:
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    (slot,) = [v for v in environ if v.startswith(b"MLSERVE_WORKER_SLOT=")]
    return slot.decode()


def test_sigterm_stops_every_process_and_each_worker_logged_to_its_own_files(
    served: Workers,
) -> None:
    every = [*served.workers]
    for pid in served.workers:
        with contextlib.suppress(AssertionError):
            every.append(triton_pid(pid))
    every += [child for pid in every for child in children(pid)]
    assert served.process.stop() == 0
    for pid in every:
        assert not _alive(pid), f"process {pid} outlived mlserve serve --workers 2"
    files = [path.name for path in (served.process.home / "logs").rglob("*.parquet")]
    assert any("-w0-" in name for name in files), files
    assert any("-w1-" in name for name in files), files


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_worker_that_dies_stops_the_others_and_the_parent_exits_1(tmp_path: Path) -> None:
    process = MLServeProcess(tmp_path / "home", "--workers", "2", "--no-embedded-triton")
    try:
        process.start(wait_for_triton=False)
        wait_until(lambda: "2 workers serve" in process.log.read_text(), timeout=120)
        assert process.process is not None
        workers = children(process.process.pid)
        second = next(pid for pid in workers if _slot_of(pid).startswith("MLSERVE_WORKER_SLOT=1/"))
        os.kill(second, signal.SIGKILL)
        assert process.process.wait(60) == 1
        assert "worker 1 (pid" in process.log.read_text()
        for pid in workers:
            assert not _alive(pid)
    finally:
        process.stop()
