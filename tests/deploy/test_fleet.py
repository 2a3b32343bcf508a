"""A fleet of real Tritons behind one MLServe: registration, placement by
replicas / label selector / server list, spreading, a SIGKILL under load and
the restart the reconciler repairs, and health that follows the Tritons.

The module's MLServe runs without an embedded Triton; the tests start three
separate ``tritonserver`` processes, each with its own empty repository and
fixed loopback port, registered with ``shares_repository`` false, so every
deployment here is *push* placement (config and files sent in the load).
Tests run in file order and the last ones stop Tritons.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2
from tritonclient.utils import InferenceServerException

from mlserve_api.v1 import deployment_pb2, server_pb2
from tests.support.mlserve import MLServeProcess, Stubs, free_port
from tests.support.models import add_model_files, upload_add
from tests.support.tritons import (
    TritonProcess,
    add_inputs,
    deploy,
    ready_on,
    register,
    remove_model,
    start_all,
    wait_for,
)
from tests.support.uploading import stream

Code = grpc.StatusCode
READY = deployment_pb2.DEPLOYMENT_STATE_READY
FAILED = deployment_pb2.DEPLOYMENT_STATE_FAILED
SERVER_READY = server_pb2.SERVER_STATE_READY
SERVER_UNREACHABLE = server_pb2.SERVER_STATE_UNREACHABLE
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
HEALTH_NAMES = ("", "mlserve.v1.ModelService", "inference.GRPCInferenceService")


@dataclass
class Fleet:
    process: MLServeProcess
    stubs: Stubs
    tritons: dict[str, TritonProcess]
    gateway: triton.InferenceServerClient = field(init=False)

    def __post_init__(self) -> None:
        self.gateway = triton.InferenceServerClient(self.process.address)

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.stubs.key}"}

    def infer(self, model: str, client: triton.InferenceServerClient | None = None) -> Any:
        result = (client or self.gateway).infer(
            model, add_inputs(), headers=self.headers, client_timeout=60
        )
        np.testing.assert_allclose(result.as_numpy("OUTPUT0"), [11, 22, 33, 44])
        return result

    def servers(self) -> dict[str, server_pb2.Server]:
        response = self.stubs.servers.ListServers(
            server_pb2.ListServersRequest(), metadata=self.stubs.auth, timeout=10
        )
        return {server.name: server for server in response.servers}

    def deployment(self, name: str) -> deployment_pb2.Deployment:
        deployment: deployment_pb2.Deployment = self.stubs.deployments.GetDeployment(
            deployment_pb2.GetDeploymentRequest(name=name), metadata=self.stubs.auth, timeout=10
        )
        return deployment


def executions(tritonserver: TritonProcess, model: str) -> int:
    """Successful inferences of ``model`` as that Triton itself counts them (0 if absent)."""
    client = tritonserver.client()
    try:
        stats = client.get_inference_statistics(model).model_stats
    except InferenceServerException:
        return 0
    finally:
        client.close()
    return sum(int(s.inference_stats.success.count) for s in stats)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("fleet")
    process = MLServeProcess(root / "home", "--no-embedded-triton")
    tritons = {
        name: TritonProcess(name, root, {"zone": zone})
        for name, zone in (("a1", "a"), ("a2", "a"), ("b1", "b"))
    }
    try:
        process.start(wait_for_triton=False)
        start_all(list(tritons.values()))
        stubs = process.stubs()
        for tritonserver in tritons.values():
            registered = register(
                stubs, tritonserver.name, tritonserver.address, labels=tritonserver.labels
            )
            assert registered.state == SERVER_READY, registered
            assert not registered.shares_repository
        fleet = Fleet(process, stubs, tritons)
        yield fleet
        fleet.gateway.close()
        stubs.channel.close()
    finally:
        for tritonserver in tritons.values():
            tritonserver.stop()
        process.stop()


@pytest.fixture(scope="module")
def spread(fleet: Fleet) -> deployment_pb2.Deployment:
    """The "add" model deployed with replicas: 2 (push placement)."""
    upload_add(fleet.stubs, "spread")
    return deploy(fleet.stubs, "spread", replicas=2)


# --- registration ---------------------------------------------------------------


def test_register_server_bad_input(fleet: Fleet) -> None:
    stubs = fleet.stubs
    for address in ("no-port", "127.0.0.1:99999", "bad host:80", "[::1:80", "127.0.0.1:"):
        with pytest.raises(grpc.RpcError) as malformed:
            register(stubs, "malformed", address)
        assert malformed.value.code() == Code.INVALID_ARGUMENT, address
        assert "address" in (malformed.value.details() or "")

    with pytest.raises(grpc.RpcError) as duplicate:
        register(stubs, "a1", fleet.tritons["b1"].address)
    assert duplicate.value.code() == Code.ALREADY_EXISTS
    assert "'a1' is already registered" in (duplicate.value.details() or "")

    # Nothing answers on this port: registered anyway, shown UNREACHABLE (the
    # documented choice: a Triton may be registered before it is started).
    ghost = register(stubs, "ghost", f"127.0.0.1:{free_port()}")
    try:
        assert ghost.state == SERVER_UNREACHABLE, ghost
        assert "no answer" in ghost.status_message
        assert fleet.servers()["ghost"].state == SERVER_UNREACHABLE
    finally:
        stubs.servers.DeleteServer(
            server_pb2.DeleteServerRequest(name="ghost"), metadata=stubs.auth, timeout=10
        )
    assert sorted(fleet.servers()) == ["a1", "a2", "b1"]


# --- placement ------------------------------------------------------------------


def test_replicas_place_the_model_on_two_servers(
    fleet: Fleet, spread: deployment_pb2.Deployment
) -> None:
    servers = [target.server for target in spread.targets]
    assert len(set(servers)) == 2, spread
    assert [target.state for target in spread.targets] == [READY, READY], spread
    assert spread.state == READY
    for name, tritonserver in fleet.tritons.items():
        # Asked directly: pushed to exactly the two chosen Tritons.
        assert ready_on(tritonserver, "spread") is (name in servers), name
        assert not list(tritonserver.repository.iterdir()), "push placement writes no repository"

    # Health rounds run every 0.5 s; on a loaded machine one may come late, so wait
    # for a round that checked every server after this test began (not an age bound).
    began = time.time()

    def checked_since_began() -> dict[str, server_pb2.Server] | None:
        listed = fleet.servers()
        fresh = all(s.last_health_time.ToSeconds() >= int(began) for s in listed.values())
        return listed if fresh else None

    listed = wait_for(checked_since_began, timeout=60, what="a health round of every server")
    now = time.time()
    for server in listed.values():
        assert server.state == SERVER_READY, server
        assert server.last_health_time.ToSeconds() <= now + 1, server
        # Triton's index lists repository directories only; MLServe adds what
        # it pushed, so exactly the two chosen servers show the model.
        shown = "spread" in {model.name for model in server.loaded_models}
        assert shown is (server.name in servers), server


def test_list_servers_shows_pushed_models(fleet: Fleet, spread: deployment_pb2.Deployment) -> None:
    for target in spread.targets:
        loaded = fleet.servers()[target.server].loaded_models
        assert ("spread", 1) in {(model.name, model.version) for model in loaded}


def test_server_selector_places_on_matching_servers_only(fleet: Fleet) -> None:
    upload_add(fleet.stubs, "zoned")
    try:
        # replicas 0 with a selector: every zone-a server, although b1 is the least used.
        deployment = deploy(fleet.stubs, "zoned", server_selector={"zone": "a"})
        assert sorted(t.server for t in deployment.targets) == ["a1", "a2"], deployment
        assert deployment.state == READY
        assert not ready_on(fleet.tritons["b1"], "zoned")
        fleet.infer("zoned")
        remove_model(fleet.stubs, "zoned")
        upload_add(fleet.stubs, "zoned")
        for selector, replicas in (({"zone": "a"}, 3), ({"zone": "c"}, 0)):
            with pytest.raises(grpc.RpcError) as refused:
                deploy(fleet.stubs, "zoned", server_selector=selector, replicas=replicas)
            assert refused.value.code() == Code.FAILED_PRECONDITION, selector
            assert "match zone=" in (refused.value.details() or "")
    finally:
        remove_model(fleet.stubs, "zoned")


# --- routing ----------------------------------------------------------------------


def test_inference_spreads_over_both_replicas(
    fleet: Fleet, spread: deployment_pb2.Deployment
) -> None:
    servers = [fleet.tritons[target.server] for target in spread.targets]
    before = [executions(server, "spread") for server in servers]
    client = triton.InferenceServerClient(fleet.process.address)
    try:
        for _ in range(200):
            fleet.infer("spread", client)
    finally:
        client.close()

    def shares() -> list[int]:
        return [
            executions(server, "spread") - start
            for server, start in zip(servers, before, strict=True)
        ]

    # Triton updates its statistics just after it answers: the last call may
    # not be counted yet when the loop ends.
    wait_for(lambda: sum(shares()) >= 200, timeout=30, what="Triton to count all 200 calls")
    assert sum(shares()) == 200, shares()
    assert min(shares()) > 40, f"each replica should get over 20% of 200 requests: {shares()}"


@dataclass
class Outcome:
    start: float
    code: grpc.StatusCode | None  # None: succeeded


class SteadyLoad(threading.Thread):
    """Inferences in a loop through MLServe until stopped (or 300 s, or 20,000 calls)."""

    def __init__(self, fleet: Fleet, model: str) -> None:
        super().__init__(daemon=True)
        self.fleet = fleet
        self.model = model
        self.outcomes: list[Outcome] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        client = triton.InferenceServerClient(self.fleet.process.address)
        # Only a bound for a test that died without stopping it: on a loaded
        # machine the kill, the restart and the reload took most of a minute.
        deadline = time.monotonic() + 300
        try:
            while (
                not self.stopping.is_set()
                and time.monotonic() < deadline
                and len(self.outcomes) < 20_000
            ):
                start = time.monotonic()
                try:
                    self.fleet.infer(self.model, client)
                    code = None
                except InferenceServerException as error:
                    code = getattr(Code, str(error.status()).removeprefix("StatusCode."))
                self.outcomes.append(Outcome(start, code))
                time.sleep(0.005)
        finally:
            client.close()

    def successes_since(self, index: int) -> int:
        return sum(1 for outcome in self.outcomes[index:] if outcome.code is None)

    def stop(self) -> list[Outcome]:
        self.stopping.set()
        self.join(30)
        assert not self.is_alive()
        return self.outcomes


def test_sigkill_one_replica_under_load_then_restart(
    fleet: Fleet, spread: deployment_pb2.Deployment
) -> None:
    victim = fleet.tritons[spread.targets[0].server]
    survivor = fleet.tritons[spread.targets[1].server]
    load = SteadyLoad(fleet, "spread")
    load.start()
    try:
        wait_for(lambda: load.successes_since(0) >= 20, timeout=60, what="a steady load")
        killed_at = time.monotonic()
        victim.kill()

        def unreachable() -> bool:
            return fleet.servers()[victim.name].state == SERVER_UNREACHABLE

        wait_for(unreachable, timeout=60, what=f"{victim.name} listed UNREACHABLE")
        unreachable_at = time.monotonic()
        wait_for(
            lambda: fleet.deployment("spread").targets[0].state != READY,
            timeout=60,
            what="the victim's target no longer READY",
        )

        # From now on the survivor serves everything.
        survivor_before = executions(survivor, "spread")
        mark = len(load.outcomes)
        wait_for(lambda: load.successes_since(mark) >= 50, timeout=120, what="50 more successes")
        assert all(outcome.code is None for outcome in load.outcomes[mark:])
        # The load thread may have one call in flight across the mark: Triton
        # counted it before `survivor_before` was read, the thread recorded it
        # after. Triton also updates its statistics just after it answers.
        successes = load.successes_since(mark)
        wait_for(
            lambda: executions(survivor, "spread") - survivor_before >= successes - 1,
            timeout=60,
            what="the survivor counted every success since the mark",
        )

        # Back on the same port with an empty repository: nobody deploys
        # anything, the reconciler pushes the model again on its own.
        victim.start()
        restarted_at = time.monotonic()
        wait_for(lambda: ready_on(victim, "spread"), timeout=120, what="the model reloaded")
        reloaded_at = time.monotonic()
        wait_for(
            lambda: fleet.deployment("spread").state == READY,
            timeout=60,
            what="the deployment READY again",
        )
        assert fleet.servers()[victim.name].state == SERVER_READY
        # ... and the restarted Triton takes a share of the load again.
        wait_for(lambda: executions(victim, "spread") >= 20, timeout=120, what="victim serving")
    finally:
        outcomes = load.stop()

    failures = [outcome for outcome in outcomes if outcome.code is not None]
    assert {outcome.code for outcome in failures} <= {Code.UNAVAILABLE}, failures
    # Only requests sent around the kill may fail, none after it was noticed.
    assert all(killed_at - 1 <= f.start <= unreachable_at + 0.5 for f in failures), failures
    assert len(outcomes) - len(failures) >= 100
    print(
        f"\nkill -> UNREACHABLE {unreachable_at - killed_at:.2f}s; "
        f"restart -> model reloaded {reloaded_at - restarted_at:.2f}s; "
        f"{len(failures)} of {len(outcomes)} requests failed"
    )


# --- restarts the health rounds do not see (own MLServe processes) ---------------


@pytest.mark.slow  # over ~20 s
def test_restart_between_health_rounds_is_reconciled(tmp_path: Path) -> None:
    interval = 2.0  # MLServe's default --health-interval
    process = MLServeProcess(
        tmp_path / "home", "--no-embedded-triton", "--health-interval", str(interval)
    )
    quick = TritonProcess("quick", tmp_path, {})
    try:
        process.start(wait_for_triton=False)
        quick.start()
        stubs = process.stubs()
        register(stubs, "quick", quick.address)
        upload_add(stubs, "add")
        assert deploy(stubs, "add").state == READY
        single = Fleet(process, stubs, {"quick": quick})
        single.infer("add")

        def last_round() -> int:
            return int(single.servers()["quick"].last_health_time.ToNanoseconds())

        seen = last_round()
        # Rounds come every 2 s, later on a loaded machine: the bound is only for a hang.
        wait_for(lambda: last_round() != seen, timeout=60, what="a health round")
        round_at = time.monotonic()
        quick.kill()
        quick.start()
        if time.monotonic() - round_at > 0.85 * interval:
            pytest.skip("the restart took longer than a health interval; inconclusive")

        # No round saw Triton down, yet the model must serve again: the rounds that find
        # it READY must still find the model missing. Without that it never would serve,
        # so the bound is generous (a push load on a loaded machine), not a timing claim.
        def serving() -> bool:
            with contextlib.suppress(InferenceServerException):
                single.infer("add")
                return True
            return False

        wait_for(serving, timeout=120, what="inference after the restart", step=0.2)
        assert ready_on(quick, "add")
        single.gateway.close()
    finally:
        quick.stop()
        process.stop()


def test_failed_deploy_to_a_server_that_just_came_up_answers(tmp_path: Path) -> None:
    # No health round runs during the test: only registration and the
    # deployment itself look at the server.
    process = MLServeProcess(tmp_path / "home", "--no-embedded-triton", "--health-interval", "3600")
    late = TritonProcess("late", tmp_path, {})
    try:
        process.start(wait_for_triton=False)
        stubs = process.stubs()
        assert register(stubs, "late", late.address).state == SERVER_UNREACHABLE
        files = add_model_files(name="broken")
        config = files.pop("config.pbtxt").decode()
        files["model.py"] = b"raise RuntimeError('this model does not load')\n"
        stubs.models.UploadModelVersion(
            stream("broken", files, config=config), metadata=stubs.auth, timeout=30
        )
        late.start()  # reachable now; MLServe still has it as UNREACHABLE

        def deployed() -> deployment_pb2.Deployment | None:
            try:
                return deploy(stubs, "broken", servers=["late"], timeout=60)
            except grpc.RpcError as error:
                # MLServe's channel may still be in gRPC's reconnect backoff from
                # the refused registration check: UNAVAILABLE, nothing recorded.
                if error.code() == Code.UNAVAILABLE and "nothing was deployed" in str(
                    error.details()
                ):
                    return None
                pytest.fail(f"CreateDeployment did not answer: {error.code()} {error.details()}")

        deployment = wait_for(deployed, timeout=120, what="a deployment answer", step=0.2)
        assert deployment.state == FAILED, deployment
        assert "does not load" in deployment.targets[0].message
    finally:
        late.stop()
        process.stop()


# --- everything down (these stop the module's Tritons) -------------------------------


def test_all_replicas_down_is_unavailable(fleet: Fleet) -> None:
    upload_add(fleet.stubs, "only-b")
    deployment = deploy(fleet.stubs, "only-b", servers=["b1"])
    assert [(t.server, t.state) for t in deployment.targets] == [("b1", READY)]
    fleet.infer("only-b")
    fleet.tritons["b1"].stop()
    # At once, before any health round noticed, and after it did.
    for _ in range(2):
        with pytest.raises(InferenceServerException) as down:
            fleet.infer("only-b")
        assert str(down.value.status()) == str(Code.UNAVAILABLE), down.value
        assert "no replica of model 'only-b' is reachable" in down.value.message()
        wait_for(
            lambda: fleet.servers()["b1"].state == SERVER_UNREACHABLE,
            timeout=60,
            what="b1 UNREACHABLE",
        )
    # The other Tritons still answer, so MLServe is still SERVING.
    check = fleet.stubs.health.Check(health_pb2.HealthCheckRequest(), timeout=30)
    assert check.status == SERVING


def _health(stubs: Stubs) -> dict[str, int]:
    return {
        name: stubs.health.Check(health_pb2.HealthCheckRequest(service=name), timeout=30).status
        for name in HEALTH_NAMES
    }


def test_health_check_follows_the_tritons(fleet: Fleet) -> None:
    assert set(_health(fleet.stubs).values()) == {SERVING}
    running = [t for t in fleet.tritons.values() if t.running]
    assert running, "the earlier tests leave a1 and a2 running"
    for tritonserver in running:
        tritonserver.stop()
    stopped_at = time.monotonic()
    wait_for(
        lambda: set(_health(fleet.stubs).values()) == {NOT_SERVING},
        timeout=60,
        what="NOT_SERVING for every service name",
    )
    noticed = time.monotonic() - stopped_at
    assert fleet.gateway.is_server_live(headers=fleet.headers)
    assert not fleet.gateway.is_server_ready(headers=fleet.headers)
    with pytest.raises(InferenceServerException) as down:
        fleet.infer("spread")
    assert str(down.value.status()) == str(Code.UNAVAILABLE), down.value

    fleet.tritons["a1"].start()
    wait_for(
        lambda: set(_health(fleet.stubs).values()) == {SERVING},
        timeout=60,
        what="SERVING again with one Triton back",
    )
    print(f"\nall Tritons stopped -> NOT_SERVING after {noticed:.2f}s")


class HealthWatch(threading.Thread):
    """Reads one Health/Watch stream (no key) into a list of statuses."""

    def __init__(self, stubs: Stubs, service: str) -> None:
        super().__init__(daemon=True)
        self.statuses: list[int] = []
        self.error: grpc.RpcError | None = None
        # A bound for a stream the test forgot; two Triton starts on a loaded machine
        # can take most of a minute.
        self.call = stubs.health.Watch(health_pb2.HealthCheckRequest(service=service), timeout=300)

    def run(self) -> None:
        try:
            for response in self.call:
                self.statuses.append(response.status)
        except grpc.RpcError as error:
            self.error = error

    def stop(self) -> list[int]:
        self.call.cancel()
        self.join(10)
        return self.statuses


def test_health_watch_streams_the_changes(fleet: Fleet) -> None:
    a1 = fleet.tritons["a1"]
    # After the test above only a1 runs; make it so when this test runs alone.
    for tritonserver in fleet.tritons.values():
        if tritonserver is not a1 and tritonserver.running:
            tritonserver.stop()
    if not a1.running:
        a1.start()
    wait_for(lambda: _health(fleet.stubs)[""] == SERVING, timeout=60, what="SERVING")
    watches = [HealthWatch(fleet.stubs, name) for name in HEALTH_NAMES]
    for watch in watches:
        watch.start()
    try:

        def answered() -> bool:
            for watch in watches:
                if watch.error is not None:
                    code, details = watch.error.code(), watch.error.details()
                    pytest.fail(f"Watch failed: {code} {details}")
            return all(watch.statuses for watch in watches)

        wait_for(answered, timeout=60, what="the first Watch answers")
        a1.stop()
        wait_for(
            lambda: all(w.statuses[-1] == NOT_SERVING for w in watches),
            timeout=60,
            what="Watch streaming NOT_SERVING",
        )
        a1.start()
        wait_for(
            lambda: all(w.statuses[-1] == SERVING for w in watches),
            timeout=60,
            what="Watch streaming SERVING again",
        )
    finally:
        statuses = [watch.stop() for watch in watches]
    assert statuses == [[SERVING, NOT_SERVING, SERVING]] * len(HEALTH_NAMES)
