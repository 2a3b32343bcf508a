"""A reconcile that takes 25 s (a model whose initialize() sleeps) holds up neither
the health rounds nor the route reloads. Real processes: one Triton, MLServe
replica ``a`` that reconciles it, and replica ``b`` on the same database that
changes a deployment behind ``a``'s back."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import tritonclient.grpc as triton
from google.protobuf.timestamp_pb2 import Timestamp
from tritonclient.utils import InferenceServerException

from mlserve_api.v1 import deployment_pb2, server_pb2
from tests.support.mlserve import MLServeProcess, Stubs
from tests.support.models import add_model_files, upload_add, with_initialize
from tests.support.tritons import (
    TritonProcess,
    add_inputs,
    deploy,
    ready_on,
    register,
    wait_for,
)
from tests.support.uploading import stream

# Over ~20 s each (or a slow module start): `pytest -m "not slow"` leaves them out.
pytestmark = [pytest.mark.integration, pytest.mark.slow]

INTERVAL = 1.0  # a's --health-interval
LOAD_SECONDS = 25
# Held up behind the slow reconcile, a health round or a route reload would wait
# for most of LOAD_SECONDS; on time, it comes every INTERVAL, later on a loaded
# 2-core machine. The bounds sit between the two with room on both sides.
FRESH = 6.0  # the oldest last_health_time a round on time can show
CHECKED_FOR = 15.0  # seconds after the slow load began that the ages are watched
SLOW_LOADS = "MLSERVE_TEST_SLOW_LOADS"  # set in the restarted Triton's environment
READY = deployment_pb2.DEPLOYMENT_STATE_READY


def sleepy_model_files() -> dict[str, bytes]:
    """The "add" model named "sleepy", whose initialize() sleeps when its Triton's
    environment has ``SLOW_LOADS``. The environment, not a file, says when: the
    sandboxed Triton sees none of the test's files, but keeps the variables it is
    started with. (A clock made the test wait out a fixed time before the restart.)"""
    return with_initialize(
        add_model_files(name="sleepy"),
        "        import os, time\n"
        f"        if os.environ.get({SLOW_LOADS!r}):\n"
        f"            time.sleep({LOAD_SECONDS})\n",
    )


def age(stamp: Timestamp) -> float:
    """Seconds since ``stamp`` (MLServe and the test share this host's clock)."""
    return time.time() - stamp.ToNanoseconds() / 1e9


def health_ages(stubs: Stubs, server: str) -> list[float]:
    """How old ``server``'s last health check is, as ListServers and GetServer tell it."""
    listed = stubs.servers.ListServers(
        server_pb2.ListServersRequest(), metadata=stubs.auth, timeout=30
    )
    got = stubs.servers.GetServer(
        server_pb2.GetServerRequest(name=server), metadata=stubs.auth, timeout=30
    )
    (row,) = [s for s in listed.servers if s.name == server]
    return [age(row.last_health_time), age(got.last_health_time)]


def test_health_and_routes_stay_fresh_during_a_25_second_reconcile(tmp_path: Path) -> None:
    home = tmp_path / "home"
    a = MLServeProcess(home, "--no-embedded-triton", "--health-interval", str(INTERVAL))
    # b never runs a health round of its own: it only changes a deployment.
    b = MLServeProcess(home, "--no-embedded-triton", "--health-interval", "3600")
    b.log = home / "mlserve-b.log"
    slowpoke = TritonProcess("slowpoke", tmp_path, {})
    gateway: triton.InferenceServerClient | None = None
    try:
        a.start(wait_for_triton=False)
        slowpoke.start()
        stubs = a.stubs()
        register(stubs, "slowpoke", slowpoke.address)
        # Deployed in this order, reconciled in this order: quick, then sleepy.
        upload_add(stubs, "quick")
        assert deploy(stubs, "quick").state == READY
        files = sleepy_model_files()
        config = files.pop("config.pbtxt").decode()
        stubs.models.UploadModelVersion(
            stream("sleepy", files, config=config), metadata=stubs.auth, timeout=30
        )
        assert deploy(stubs, "sleepy").state == READY
        b.start(wait_for_triton=False)

        # Triton restarts with nothing loaded; a's reconciler loads both again,
        # and sleepy's load now takes LOAD_SECONDS.
        slowpoke.kill()
        slowpoke.environment = {SLOW_LOADS: "1"}
        slowpoke.start()
        wait_for(lambda: ready_on(slowpoke, "quick"), timeout=60, what="quick reloaded")
        load_started = time.monotonic()
        assert not ready_on(slowpoke, "sleepy")

        # Replica b undeploys quick; only a's health loop reloads a's routes.
        other = b.stubs()
        other.deployments.DeleteDeployment(
            deployment_pb2.DeleteDeploymentRequest(name="quick"), metadata=other.auth, timeout=30
        )
        gateway = triton.InferenceServerClient(a.address)
        headers = {"authorization": f"Bearer {stubs.key}"}
        ages: list[float] = []

        def routes_reloaded() -> bool:
            ages.extend(health_ages(stubs, "slowpoke"))
            try:
                assert gateway is not None
                gateway.infer("quick", add_inputs(), headers=headers, client_timeout=10)
            except InferenceServerException as error:
                return "model 'quick' is not deployed" in (error.message() or "")
            return False

        wait_for(
            routes_reloaded, timeout=LOAD_SECONDS / 2, what="a's routes to drop quick", step=0.2
        )
        while time.monotonic() - load_started < CHECKED_FOR:
            ages.extend(health_ages(stubs, "slowpoke"))
            time.sleep(0.2)
        assert not ready_on(slowpoke, "sleepy"), "the load was over before the checks were"
        assert max(ages) <= FRESH, f"last_health_time ages seen: {sorted(ages)[-5:]}"

        # The slow reconcile finishes on its own, and sleepy serves through a.
        def sleepy_serves() -> bool:
            assert gateway is not None
            try:
                gateway.infer("sleepy", add_inputs(), headers=headers, client_timeout=10)
            except InferenceServerException:
                return False
            return True

        wait_for(sleepy_serves, timeout=LOAD_SECONDS + 90, what="sleepy serving", step=0.5)
        print(f"\nlast_health_time age during the slow load: max {max(ages):.2f}s")
    finally:
        if gateway is not None:
            gateway.close()
        b.stop()
        a.stop()
        slowpoke.stop()
