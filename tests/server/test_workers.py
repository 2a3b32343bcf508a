"""``mlserve serve --workers 2``: one port served by two processes, a real Triton.

Each new connection lands on one of the workers (SO_REUSEPORT), so the test
opens fresh connections (a channel of its own each, no shared subchannel) until
both worker processes have answered calls, which it reads from the merged
/metrics: ``mlserve_worker_inference_requests_total`` keeps one series per
worker and pid. Every other series is summed over the workers.

The parent restarts a worker that dies (SIGKILL here) and gives up on one that
crashes at each start; two sets on one home keep their metrics apart.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
from prometheus_client.parser import text_string_to_metric_families

from mlserve_api.v1 import model_pb2
from tests.server.test_tls import make_certificate
from tests.support.checks import wait_until
from tests.support.databases import DATABASE_KINDS
from tests.support.mlserve import MLServeProcess
from tests.support.models import upload_add
from tests.support.ports import free_port
from tests.support.postgres import PostgresCluster
from tests.support.procfs import children, gone, triton_pid, tritonserver_pids
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


class _Load:
    """Calls on a model from a thread, a fresh connection every 5 calls, until stopped."""

    def __init__(self, process: MLServeProcess, model: str) -> None:
        self.process, self.model = process, model
        self.ok = self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        headers = {"authorization": f"Bearer {self.process.key}"}
        while not self._stop.is_set():
            client = _fresh_client(self.process.address)
            try:
                for _ in range(5):
                    try:
                        client.infer(self.model, add_inputs(), headers=headers, client_timeout=60)
                    except Exception:  # a call on the killed worker's connection
                        self.failed += 1
                    else:
                        self.ok += 1
            finally:
                client.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(120)


def test_a_killed_worker_is_replaced_while_calls_go_on(served: Workers) -> None:
    stubs = served.process.stubs()
    try:
        upload_add(stubs, "respawn")
        deploy(stubs, "respawn")
    finally:
        stubs.channel.close()
    assert served.process.process is not None
    parent = served.process.process.pid
    killed = next(pid for pid in served.workers if _slot_of(pid).startswith(_SLOT_1))
    load = _Load(served.process, "respawn")
    try:
        wait_until(lambda: load.ok >= 10, timeout=120)
        os.kill(killed, signal.SIGKILL)
        wait_until(lambda: "worker 1 serves again" in served.process.log.read_text(), timeout=120)
        (replacement,) = [pid for pid in children(parent) if pid not in served.workers]
        # At once: the tests after this one look for the workers the set has now.
        served.workers[:] = sorted([*(pid for pid in served.workers if pid != killed), replacement])
        assert _slot_of(replacement).startswith(_SLOT_1)
        before = load.ok
        # The kernel hands new connections to the new process too, and calls go on.
        wait_until(lambda: served.served_by().get(replacement, 0) > 0, timeout=120)
        wait_until(lambda: load.ok >= before + 20, timeout=120)
    finally:
        load.stop()
    assert "worker 1 (pid" in served.process.log.read_text()
    samples = served.samples()
    assert samples[("mlserve_worker_restarts_total", (("worker", "1"),))] >= 1
    assert samples[("mlserve_worker_restarts_total", (("worker", "0"),))] == 0
    # The dead worker's counts stay in the sums, beside its replacement's.
    by_pid = served.served_by()
    assert by_pid[killed] > 0
    assert by_pid[replacement] > 0
    ok = (("model", "respawn"), ("outcome", "ok"), ("version", "1"))
    assert samples[("mlserve_inference_requests_total", ok)] >= load.ok


def test_a_killed_worker_0_comes_back_with_a_new_embedded_triton(served: Workers) -> None:
    assert served.process.process is not None
    parent = served.process.process.pid
    killed = next(pid for pid in served.workers if _slot_of(pid).startswith(_SLOT_0))
    old_triton = tritonserver_pids(killed)
    assert old_triton
    os.kill(killed, signal.SIGKILL)
    assert gone(old_triton, within=60)  # it dies with the worker that started it
    wait_until(lambda: "worker 0 serves again" in served.process.log.read_text(), timeout=120)
    (replacement,) = [pid for pid in children(parent) if pid not in served.workers]
    served.workers[:] = sorted([*(pid for pid in served.workers if pid != killed), replacement])
    triton_pid(replacement)
    # Both workers route to the new Triton once they read its address from the store.
    wait_until(lambda: _ten_calls_succeed(served.process), timeout=180)
    wait_until(lambda: _metrics_answer(served.metrics_url), timeout=60)
    assert served.samples()[("mlserve_worker_restarts_total", (("worker", "0"),))] == 1


def _ten_calls_succeed(process: MLServeProcess) -> bool:
    headers = {"authorization": f"Bearer {process.key}"}
    for _ in range(10):
        client = _fresh_client(process.address)
        try:
            client.infer("add", add_inputs(), headers=headers, client_timeout=30)
        except triton.InferenceServerException:
            return False
        finally:
            client.close()
    return True


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


def _workers_started(process: MLServeProcess) -> list[int]:
    wait_until(lambda: "2 workers serve" in process.log.read_text(), timeout=120)
    assert process.process is not None
    return children(process.process.pid)


def _in_slot(pids: list[int], prefix: str) -> int:
    return next(pid for pid in pids if _slot_of(pid).startswith(prefix))


_SLOT_0 = "MLSERVE_WORKER_SLOT=0/"
_SLOT_1 = "MLSERVE_WORKER_SLOT=1/"


def _restarts(metrics: int | str, worker: str) -> float:
    """The restarts the merged /metrics counts (a port on 127.0.0.1, or a URL)."""
    url = metrics if isinstance(metrics, str) else f"http://127.0.0.1:{metrics}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return next(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "mlserve_worker_restarts_total" and sample.labels["worker"] == worker
    )


def _metrics_answer(metrics: int | str) -> bool:
    try:
        _restarts(metrics, "0")
    except OSError:
        return False
    return True


def test_a_worker_that_crashes_at_each_start_is_not_restarted_forever(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    cert, key = make_certificate(tmp_path)
    metrics_port = free_port()
    process = MLServeProcess(
        home, "--workers", "2", "--no-embedded-triton", "--tls-cert", str(cert),
        "--tls-key", str(key), "--metrics-listen", f"127.0.0.1:{metrics_port}", ca=cert,
    )  # fmt: skip
    try:
        process.start(wait_for_triton=False)
        workers = _workers_started(process)
        assert process.process is not None
        # Worker 0 (the /metrics one) killed: it comes back, and so does /metrics.
        os.kill(_in_slot(workers, _SLOT_0), signal.SIGKILL)
        wait_until(lambda: "worker 0 serves again" in process.log.read_text(), timeout=120)
        wait_until(lambda: _metrics_answer(metrics_port), timeout=60)
        assert _restarts(metrics_port, "0") == 1
        workers = children(process.process.pid)
        # A key that went missing: worker 1 cannot start again, however often it tries.
        key.unlink()
        os.kill(_in_slot(workers, _SLOT_1), signal.SIGKILL)
        assert process.process.wait(180) == 1
        text = process.log.read_text()
        assert "worker 1 (pid" in text
        assert "worker 1 exited 4 times in a row" in text
        assert "worker 1 serves again" not in text
        for pid in workers:
            assert not _alive(pid)
        assert list((home / "metrics").iterdir()) == []
    finally:
        process.stop()


def _metered_set(home: Path, metrics_port: int) -> MLServeProcess:
    return MLServeProcess(
        home, "--workers", "2", "--no-embedded-triton", "--metrics-listen",
        f"127.0.0.1:{metrics_port}",
    )  # fmt: skip


def test_two_sets_on_one_home_keep_their_metrics_apart(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ports = [free_port() for _ in range(3)]
    sets = [_metered_set(home, port) for port in ports]
    for number, each in enumerate(sets):
        each.log = tmp_path / f"set-{number}.log"  # not the home's one log: each its own
    first, second, third = sets
    try:
        first.start(wait_for_triton=False)
        first_workers = _workers_started(first)
        second.start(wait_for_triton=False)
        _workers_started(second)
        runs = sorted(path.name for path in (home / "metrics").iterdir() if path.is_dir())
        assert len(runs) == 2, runs
        # The second start left the first's files alone, and neither reads the other's.
        os.kill(_in_slot(first_workers, _SLOT_1), signal.SIGKILL)
        wait_until(lambda: "worker 1 serves again" in first.log.read_text(), timeout=120)
        assert _restarts(ports[0], "1") == 1
        assert _restarts(ports[1], "1") == 0
        # A parent killed outright leaves its directory; the next start removes it.
        first.kill()
        assert first.process is not None
        assert gone(first_workers, within=60)
        third.start(wait_for_triton=False)
        _workers_started(third)
        left = sorted(path.name for path in (home / "metrics").iterdir() if path.is_dir())
        assert len(left) == 2, left
        assert set(runs) & set(left) == {
            next(run for run in runs if f"-{first.process.pid}-" not in run)
        }
        assert _restarts(ports[2], "1") == 0
    finally:
        for each in sets:
            each.stop()
    assert list((home / "metrics").iterdir()) == []
