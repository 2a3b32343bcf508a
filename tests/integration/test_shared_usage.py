"""Eviction and idle unloading read what every MLServe process sees, not one
process's own traffic: a real Triton, and two MLServe processes on one
PostgreSQL — two replicas (a with the embedded Triton, b without), or
``--workers 2`` (worker 0 with the embedded Triton and the idle unloading).

The *decider* (replica a, or worker 0 through a connection it serves) makes
the cold starts that evict and the health rounds that idle-unload; the
*other* process (replica b, or worker 1 through a connection it serves) only
forwards. A request in flight through the other process on a slow
Python-backend model keeps that model from being evicted when the decider's
cold start of another model needs room (the other's busy mark), although it
is the least recently used; a model used only through the other process is not
idle-unloaded by the decider (Triton's own last_inference), and is once unused.
"""

from __future__ import annotations

import contextlib
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psycopg2
import pytest
import tritonclient.grpc as triton
from prometheus_client.parser import text_string_to_metric_families

from mlserve.deploy.placement import DEFAULT_HEADROOM
from mlserve_api.v1 import deployment_pb2, model_pb2
from tests.deploy.test_on_demand import deploy_on_demand, get_server, set_capacity, target
from tests.support.mlserve import MLServeProcess, Stubs, free_port
from tests.support.models import local_triton, scale_model_files, upload_add
from tests.support.pipelines import upload
from tests.support.postgres import PostgresCluster
from tests.support.tritons import add_inputs, deploy, remove_model, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

COLD = deployment_pb2.DEPLOYMENT_STATE_COLD
READY = deployment_pb2.DEPLOYMENT_STATE_READY
# The slow model's one call: long enough to outlast another model's cold load
# on a busy machine while it is in flight.
SLOW_SECONDS = 40.0
IDLE_SECONDS = 10
PROBE = "probe"  # an eager model: which worker answered a connection's call


class Gateway:
    """One way into MLServe's gateway: a replica's port, or one worker's connection."""

    def __init__(self, address: str, key: str, *, pinned: bool = False) -> None:
        self.address, self.key = address, key
        # A worker is reached through one kept connection (SO_REUSEPORT spreads
        # connections, not calls); a replica through a fresh client per call.
        self._client = _own_connection(address) if pinned else None

    def infer(self, model: str, inputs: list[triton.InferInput]) -> Any:
        client = self._client or triton.InferenceServerClient(self.address)
        try:
            return client.infer(
                model, inputs, headers={"authorization": f"Bearer {self.key}"}, client_timeout=180
            )
        finally:
            if client is not self._client:
                client.close()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


@dataclass
class Shared:
    """Two MLServe processes on one PostgreSQL and one embedded Triton."""

    decider: Gateway  # its cold starts evict, its health rounds idle-unload
    other: Gateway  # a process that only forwards here
    stubs: Stubs
    home: Path  # the embedded Triton's log is there
    url: str  # the database's, for psycopg2


def _own_connection(address: str) -> triton.InferenceServerClient:
    # A subchannel pool of its own: a new TCP connection, so the kernel picks a worker.
    return triton.InferenceServerClient(
        address, channel_args=[("grpc.use_local_subchannel_pool", 1)]
    )


@contextlib.contextmanager
def two_replicas(cluster: PostgresCluster, home: Path) -> Iterator[Shared]:
    """Replica a with the embedded Triton decides; b (no Triton) only forwards."""
    database = cluster.create_database("shared_usage_replicas")
    url = cluster.url(database, max_connections=8)
    started: list[MLServeProcess] = []
    stubs: Stubs | None = None
    try:
        for name, extra in (("a", ()), ("b", ("--no-embedded-triton",))):
            process = MLServeProcess(home, "--database", url, *extra)
            process.log = home / f"mlserve-{name}.log"
            started.append(process.start(wait_for_triton=name == "a"))
        a, b = started
        stubs = a.stubs()
        yield Shared(
            Gateway(a.address, a.key), Gateway(b.address, b.key), stubs, home, cluster.url(database)
        )
    finally:
        if stubs is not None:
            stubs.channel.close()
        for process in reversed(started):
            process.stop()
        cluster.drop_database(database)


@contextlib.contextmanager
def two_workers(cluster: PostgresCluster, home: Path) -> Iterator[Shared]:
    """``--workers 2``: worker 0 (the embedded Triton, idle unloading) decides, through
    a connection it serves; worker 1 only forwards, through one it serves."""
    database = cluster.create_database("shared_usage_workers")
    metrics_port = free_port()
    process = MLServeProcess(
        home, "--workers", "2", "--metrics-listen", f"127.0.0.1:{metrics_port}",
        "--database", cluster.url(database, max_connections=8),
    )  # fmt: skip
    pinned: dict[str, Gateway] = {}
    stubs: Stubs | None = None
    try:
        process.start()
        wait_for(lambda: "2 workers serve" in process.log.read_text(), 120, "both workers")
        stubs = process.stubs()
        upload_add(stubs, PROBE)
        deploy(stubs, PROBE)
        for _ in range(200):  # connections until each worker holds one
            gateway = Gateway(process.address, process.key, pinned=True)
            before = served_per_worker(metrics_port)
            gateway.infer(PROBE, add_inputs())
            after = served_per_worker(metrics_port)
            (worker,) = (w for w, calls in after.items() if calls > before.get(w, 0.0))
            if worker in pinned:
                gateway.close()
            else:
                pinned[worker] = gateway
            if len(pinned) == 2:
                break
        assert sorted(pinned) == ["0", "1"], "the kernel never gave both workers a connection"
        yield Shared(pinned["0"], pinned["1"], stubs, home, cluster.url(database))
    finally:
        for gateway in pinned.values():
            gateway.close()
        if stubs is not None:
            remove_model(stubs, PROBE)
            stubs.channel.close()
        process.stop()
        cluster.drop_database(database)


def served_per_worker(metrics_port: int) -> dict[str, float]:
    """Inference calls each worker answered (by its ``worker`` label), merged /metrics."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        sample.labels["worker"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "mlserve_worker_inference_requests_total"
    }


@pytest.fixture(scope="module", params=["replicas", "workers"])
def shared(
    request: pytest.FixtureRequest,
    postgres_cluster: PostgresCluster,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Shared]:
    start = two_replicas if request.param == "replicas" else two_workers
    with start(postgres_cluster, tmp_path_factory.mktemp(f"shared-{request.param}")) as found:
        yield found


def marked_busy(shared: Shared, model: str, server: str) -> bool:
    """Whether some process has an unexpired busy mark for ``model`` on ``server``."""
    with psycopg2.connect(shared.url) as connection, connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM busy_mark WHERE model = %s AND server = %s "
            "AND expire_time > (now() AT TIME ZONE 'utc')",
            (model, server),
        )
        (count,) = cursor.fetchone()
    return bool(count)


def need(stubs: Stubs, model: str) -> int:
    version = stubs.models.GetModelVersion(
        model_pb2.GetModelVersionRequest(model=model), metadata=stubs.auth
    )
    return int(version.memory.bytes)


def slow_inputs() -> list[triton.InferInput]:
    given = triton.InferInput("INPUT", [3], "FP32")
    given.set_data_from_numpy(np.array([1, 2, 3], dtype=np.float32))
    return [given]


def triton_loads(home: Path, model: str) -> int:
    """How many times Triton itself says it loaded ``model`` (its log)."""
    return (home / "triton.log").read_text(errors="replace").count(f"successfully loaded '{model}'")


def test_a_request_in_flight_through_another_process_keeps_its_model(
    shared: Shared, model_name: str
) -> None:
    stubs = shared.stubs
    slow, other, third = (f"{model_name}-{n}" for n in ("slow", "other", "third"))
    capacity = get_server(stubs).capacity.host_memory_bytes
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        upload(stubs, scale_model_files(slow, 2.0, sleep=SLOW_SECONDS), slow)
        for name in (other, third):
            upload_add(stubs, name)
        for name in (slow, other, third):
            deploy_on_demand(stubs, name)
        # Through the other process: slow is loaded on demand, its one call stays
        # in flight.
        slow_call = pool.submit(shared.other.infer, slow, slow_inputs())
        wait_for(lambda: marked_busy(shared, slow, "local"), 120, "the busy mark on slow")
        assert target(stubs, slow).state == READY
        # Through the decider: other is used after slow was loaded, so slow is the least
        # recently used of the two (Triton has recorded no inference of it yet).
        shared.decider.infer(other, add_inputs())
        # Room for the two loaded but not a third: loading it must evict one.
        # (With --workers, an eager probe model is loaded there too.)
        usable = get_server(stubs).used_memory_bytes + need(stubs, third) - 1
        set_capacity(stubs, int(usable / (1 - DEFAULT_HEADROOM)))
        assert get_server(stubs).free_memory_bytes < need(stubs, third)

        shared.decider.infer(third, add_inputs())  # the decider evicts

        evicted = target(stubs, other)
        assert evicted.state == COLD, evicted
        assert f"to make room for '{third}'" in evicted.message
        assert target(stubs, slow).state == READY
        assert target(stubs, third).state == READY
        answer = slow_call.result(timeout=SLOW_SECONDS + 180)
        np.testing.assert_allclose(answer.as_numpy("OUTPUT"), [2, 4, 6])
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        set_capacity(stubs, capacity)
        for name in (slow, other, third):
            remove_model(stubs, name)


def test_a_model_used_through_another_process_is_not_idle(shared: Shared, model_name: str) -> None:
    stubs = shared.stubs
    try:
        upload_add(stubs, model_name)
        deploy_on_demand(stubs, model_name, idle_unload_after_seconds=IDLE_SECONDS)
        # Used only through the other process for three idle periods: the decider
        # never sends it anything.
        ends = time.monotonic() + 3 * IDLE_SECONDS
        while time.monotonic() < ends:
            shared.other.infer(model_name, add_inputs())
            time.sleep(0.5)
        assert triton_loads(shared.home, model_name) == 1  # never idled out meanwhile
        assert target(stubs, model_name).state == READY
        # Unused now, it is idled out. (Its target's message may be the reconciler's
        # "not loaded" instead of "unloaded after …": another replica's reconciler
        # can see the copy gone before the unloading one records why.)
        wait_for(
            lambda: target(stubs, model_name).state == COLD, 120, "the idle copy to be unloaded"
        )
        assert not local_triton(stubs).is_model_ready(model_name)
    finally:
        remove_model(stubs, model_name)
