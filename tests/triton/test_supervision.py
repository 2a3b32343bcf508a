"""The embedded Triton is supervised: SIGKILLed, it is restarted and its
deployments come back without anyone asking; SIGSTOPped (alive but hung), it
fails its liveness probes, is killed and restarted the same way; one that
exits at start-up stops MLServe with an error naming Triton's log. Real
MLServe and Triton processes."""

from __future__ import annotations

import contextlib
import os
import signal
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from mlserve_api.v1 import deployment_pb2, server_pb2
from tests.support.mlserve import MLServeProcess, Stubs
from tests.support.models import upload_add
from tests.support.ports import free_port
from tests.support.procfs import descendants, gone, tritonserver_pids
from tests.support.tritons import add_inputs, deploy, wait_for

pytestmark = pytest.mark.integration

READY = deployment_pb2.DEPLOYMENT_STATE_READY
SERVER_READY = server_pb2.SERVER_STATE_READY


@dataclass
class Served:
    """An MLServe with its embedded Triton, serving the "add" model deployed on it."""

    process: MLServeProcess
    stubs: Stubs
    gateway: triton.InferenceServerClient

    @property
    def pid(self) -> int:
        assert self.process.process is not None
        return self.process.process.pid

    def the_tritonserver(self) -> int:
        (pid,) = tritonserver_pids(self.pid)
        return pid

    def serves(self) -> bool:
        headers = {"authorization": f"Bearer {self.stubs.key}"}
        try:
            self.gateway.infer("add", add_inputs(), headers=headers, client_timeout=30)
        except InferenceServerException:
            return False
        return True


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    with serving_add(tmp_path / "home") as served:
        yield served


@contextlib.contextmanager
def serving_add(home: Path, *extra: str) -> Iterator[Served]:
    """An MLServe started with ``extra`` arguments, serving the "add" model."""
    process = MLServeProcess(home, *extra).start()
    stubs = process.stubs()
    gateway = triton.InferenceServerClient(process.address)
    try:
        upload_add(stubs, "add")
        assert deploy(stubs, "add").state == READY
        served = Served(process, stubs, gateway)
        assert served.serves()
        yield served
    finally:
        gateway.close()
        stubs.channel.close()
        assert process.stop() == 0


def test_a_sigkilled_triton_is_restarted_and_serves_its_deployments_again(
    served: Served,
) -> None:
    killed = served.the_tritonserver()
    os.kill(killed, signal.SIGKILL)
    killed_at = time.monotonic()
    wait_for(served.serves, 120, "inference after the SIGKILL", 0.1)
    recovered_after = time.monotonic() - killed_at

    stubs = served.stubs
    assert served.the_tritonserver() != killed
    local = stubs.servers.GetServer(
        server_pb2.GetServerRequest(name="local"), metadata=stubs.auth, timeout=30
    )
    assert local.state == SERVER_READY
    deployment = stubs.deployments.GetDeployment(
        deployment_pb2.GetDeploymentRequest(name="add"), metadata=stubs.auth, timeout=30
    )
    assert [(t.server, t.state) for t in deployment.targets] == [("local", READY)]
    log = served.process.log.read_text()
    exited = log[log.index("the embedded Triton (pid ") :]
    assert "exited (" in exited.splitlines()[0]
    assert "restarting it in 0.5s" in exited.splitlines()[0]
    # Triton's own last lines follow, from its log, which is named.
    assert f"The end of its log ({served.process.home / 'triton.log'}):" in exited
    assert "the embedded Triton is running again" in log
    print(f"\nSIGKILL -> serving again through MLServe in {recovered_after:.1f}s")


def test_a_restart_that_fails_at_start_up_is_tried_again(served: Served) -> None:
    first = served.the_tritonserver()
    os.kill(first, signal.SIGKILL)
    # Kill each Triton the supervisor starts, before it is ready, until a
    # restart is reported failed (the launcher itself retries once after a
    # signal it sees, so that may take two).
    killed = {first}
    while "could not be restarted" not in served.process.log.read_text():
        assert len(killed) <= 3, "three restarts killed at start-up, none reported failed"
        for pid in set(tritonserver_pids(served.pid)) - killed:
            os.kill(pid, signal.SIGKILL)
            killed.add(pid)
        time.sleep(0.005)
    wait_for(served.serves, 120, "inference after the restarts", 0.1)
    log = served.process.log.read_text()
    failed = log[log.index("the embedded Triton could not be restarted; trying again in") :]
    assert "Triton exited during startup" in failed.splitlines()[0]
    assert f"the end of its log ({served.process.home / 'triton.log'})" in failed


def test_a_triton_that_exits_at_start_up_stops_mlserve_naming_its_log(tmp_path: Path) -> None:
    home = tmp_path / "home"
    # A second repository that does not exist: Triton refuses to start.
    process = MLServeProcess(home, "--triton-args=--model-repository=/nonexistent/models")
    with pytest.raises(RuntimeError, match="mlserve exited early"):
        process.start()
    assert process.process is not None
    assert process.process.wait(30) == 1
    log = process.log.read_text()
    assert (
        "MLServe could not start: the embedded Triton could not start: Triton exited during "
        f"startup (exit code 1); the end of its log ({home / 'triton.log'}):"
    ) in log
    assert "failed to stat file /nonexistent/models" in log  # Triton's own words
    assert "Traceback" not in log


def test_a_stopped_triton_is_killed_restarted_and_serves_its_deployments_again(
    tmp_path: Path,
) -> None:
    metrics_port = free_port()
    probed_often = (
        "--triton-liveness-interval", "0.5", "--triton-liveness-failures", "3",
        "--metrics-listen", f"127.0.0.1:{metrics_port}",
    )  # fmt: skip
    with serving_add(tmp_path / "home", *probed_often) as served:
        stopped = served.the_tritonserver()
        os.kill(stopped, signal.SIGSTOP)  # alive, but answers nothing: hung
        stopped_at = time.monotonic()
        try:
            wait_for(
                lambda: stopped not in tritonserver_pids(served.pid),
                60,
                "the stopped Triton to be killed",
                0.1,
            )
            wait_for(served.serves, 60, "inference after the SIGSTOP", 0.1)
            recovered_after = time.monotonic() - stopped_at
            assert gone([stopped]), "the stopped Triton is still there"
            assert not stopped_processes(served.pid)
            assert served.the_tritonserver() != stopped
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(stopped, signal.SIGKILL)  # never leave it behind if the test fails

        log = served.process.log.read_text()
        hung = next(line for line in log.splitlines() if " is hung: " in line)
        assert "is hung: it failed 3 liveness probes in a row" in hung
        assert "killing its process group with SIGKILL" in hung
        assert "after a hang; restarts so far: 1 (exits 0, hangs 1)" in log
        with urllib.request.urlopen(
            f"http://127.0.0.1:{metrics_port}/metrics", timeout=10
        ) as response:
            metrics = response.read().decode()
        assert 'mlserve_triton_restarts_total{reason="hung"} 1.0' in metrics
        assert 'mlserve_triton_restarts_total{reason="exited"} 0.0' in metrics
        local = served.stubs.servers.GetServer(
            server_pb2.GetServerRequest(name="local"), metadata=served.stubs.auth, timeout=30
        )
        assert local.state == SERVER_READY
        print(f"\nSIGSTOP -> serving again through MLServe in {recovered_after:.1f}s (probes 0.5s)")


def stopped_processes(mlserve_pid: int) -> list[int]:
    """The processes below an MLServe in the stopped state (T)."""
    found = []
    for pid in descendants(mlserve_pid):
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            if stat.rpartition(")")[2].split()[0] in ("T", "t"):
                found.append(pid)
    return found
