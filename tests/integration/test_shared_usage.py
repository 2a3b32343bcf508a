"""Eviction and idle unloading read what every MLServe process sees, not one
process's own traffic: two real replicas on one PostgreSQL, one real Triton.

Replica a runs the embedded Triton and decides (its cold starts evict, its
health rounds idle-unload); replica b has no Triton and only forwards. A
request in flight through b on a slow Python-backend model keeps that model
from being evicted when a's cold start of another model needs room (b's busy
mark), although it is the least recently used; a model used only through b is
not idle-unloaded by a (Triton's own last_inference), and is once unused.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psycopg2
import pytest
import tritonclient.grpc as triton

from mlserve.deploy.placement import DEFAULT_HEADROOM
from mlserve_api.v1 import deployment_pb2, model_pb2
from tests.deploy.test_on_demand import deploy_on_demand, get_server, set_capacity, target
from tests.support.mlserve import MLServeProcess, Stubs
from tests.support.models import local_triton, scale_model_files, upload_add
from tests.support.pipelines import upload
from tests.support.postgres import PostgresCluster
from tests.support.tritons import add_inputs, remove_model, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

COLD = deployment_pb2.DEPLOYMENT_STATE_COLD
READY = deployment_pb2.DEPLOYMENT_STATE_READY
# The slow model's one call: long enough to outlast another model's cold load
# on a busy machine while it is in flight.
SLOW_SECONDS = 40.0
IDLE_SECONDS = 10


@dataclass
class Replicas:
    a: MLServeProcess  # the embedded Triton; the one that decides here
    b: MLServeProcess  # no Triton: only forwards
    a_stubs: Stubs
    url: str  # the database's, for psycopg2

    def infer(self, through: MLServeProcess, model: str, inputs: list[triton.InferInput]) -> Any:
        client = triton.InferenceServerClient(through.address)
        try:
            return client.infer(
                model,
                inputs,
                headers={"authorization": f"Bearer {through.key}"},
                client_timeout=180,
            )
        finally:
            client.close()


@pytest.fixture(scope="module")
def replicas(
    postgres_cluster: PostgresCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Replicas]:
    database = postgres_cluster.create_database("shared_usage")
    url = postgres_cluster.url(database, max_connections=8)
    home = tmp_path_factory.mktemp("shared-usage")
    started: list[MLServeProcess] = []
    stubs: Stubs | None = None
    try:
        for name, extra in (("a", ()), ("b", ("--no-embedded-triton",))):
            process = MLServeProcess(home, "--database", url, *extra)
            process.log = home / f"mlserve-{name}.log"
            started.append(process.start(wait_for_triton=name == "a"))
        stubs = started[0].stubs()
        yield Replicas(started[0], started[1], stubs, postgres_cluster.url(database))
    finally:
        if stubs is not None:
            stubs.channel.close()
        for process in reversed(started):
            process.stop()
        postgres_cluster.drop_database(database)


def marked_busy(replicas: Replicas, model: str, server: str) -> bool:
    """Whether some process has an unexpired busy mark for ``model`` on ``server``."""
    with psycopg2.connect(replicas.url) as connection, connection.cursor() as cursor:
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


def test_a_request_in_flight_through_another_replica_keeps_its_model(
    replicas: Replicas, model_name: str
) -> None:
    stubs = replicas.a_stubs
    slow, other, third = (f"{model_name}-{n}" for n in ("slow", "other", "third"))
    capacity = get_server(stubs).capacity.host_memory_bytes
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        upload(stubs, scale_model_files(slow, 2.0, sleep=SLOW_SECONDS), slow)
        for name in (other, third):
            upload_add(stubs, name)
        for name in (slow, other, third):
            deploy_on_demand(stubs, name)
        # Through b: slow is loaded on demand, and its one call stays in flight.
        slow_call = pool.submit(replicas.infer, replicas.b, slow, slow_inputs())
        wait_for(lambda: marked_busy(replicas, slow, "local"), 120, "b's busy mark on slow")
        assert target(stubs, slow).state == READY
        # Through a: other is used after slow was loaded, so slow is the least
        # recently used of the two (Triton has recorded no inference of it yet).
        replicas.infer(replicas.a, other, add_inputs())
        # Room for the two loaded but not a third: loading it must evict one.
        usable = need(stubs, slow) + need(stubs, other) + need(stubs, third) - 1
        set_capacity(stubs, int(usable / (1 - DEFAULT_HEADROOM)))
        assert get_server(stubs).free_memory_bytes < need(stubs, third)

        replicas.infer(replicas.a, third, add_inputs())  # a decides what to evict

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


def test_a_model_used_through_another_replica_is_not_idle(
    replicas: Replicas, model_name: str
) -> None:
    stubs = replicas.a_stubs
    try:
        upload_add(stubs, model_name)
        deploy_on_demand(stubs, model_name, idle_unload_after_seconds=IDLE_SECONDS)
        # Used only through b for three idle periods: a never sends it anything.
        ends = time.monotonic() + 3 * IDLE_SECONDS
        while time.monotonic() < ends:
            replicas.infer(replicas.b, model_name, add_inputs())
            time.sleep(0.5)
        assert triton_loads(replicas.a.home, model_name) == 1  # never idled out meanwhile
        assert target(stubs, model_name).state == READY
        # Unused now, it is idled out. (Its target's message may be the reconciler's
        # "not loaded" instead of "unloaded after …": the other replica's reconciler
        # can see the copy gone before the unloading one records why.)
        wait_for(
            lambda: target(stubs, model_name).state == COLD, 120, "the idle copy to be unloaded"
        )
        assert not local_triton(stubs).is_model_ready(model_name)
    finally:
        remove_model(stubs, model_name)
