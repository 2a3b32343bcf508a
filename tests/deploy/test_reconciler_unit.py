"""The reconcile loop's decisions: coalescing per server, one reconcile per server
at a time, back-pressure, and failures that are retried without stopping the loop.

No Triton and no database: the callbacks are the test's own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from mlserve.core.aio import Backoff
from mlserve.deploy.reconciler import Reconciler
from tests.support.aio import run, running

READY = "READY"
UNREACHABLE = "UNREACHABLE"
# Long enough that a held-back server is not retried during a test.
NEVER = Backoff(initial=3600.0, cap=3600.0)


class Recorder:
    """A callback that records its calls and can hold those of one server."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.gates: dict[str, asyncio.Event] = {}
        self.entered: dict[str, asyncio.Event] = {}
        self.failing: set[str] = set()
        self.cancelled: list[str] = []
        self._called = asyncio.Condition()

    def hold(self, server: str) -> asyncio.Event:
        self.entered[server] = asyncio.Event()
        gate = self.gates[server] = asyncio.Event()
        return gate

    async def __call__(self, server: str, state: str) -> None:
        self.calls.append((server, state))
        async with self._called:
            self._called.notify_all()
        if server in self.entered:
            self.entered[server].set()
        if server in self.gates:
            try:
                await self.gates[server].wait()
            except asyncio.CancelledError:
                self.cancelled.append(server)
                raise
        if server in self.failing:
            raise RuntimeError(f"scripted failure on {server}")

    def of(self, server: str) -> list[str]:
        return [state for name, state in self.calls if name == server]

    async def called(self, server: str, times: int) -> None:
        """Return once ``server`` has been called ``times`` times."""
        async with self._called:
            await self._called.wait_for(lambda: len(self.of(server)) >= times)


@asynccontextmanager
async def stuck_on(
    server: str, *, workers: int = 4
) -> AsyncIterator[tuple[Reconciler, Recorder, asyncio.Event]]:
    """A running reconciler whose callback is stuck on ``server`` until the event is set."""
    recorder = Recorder()
    reconciler = Reconciler(workers=workers)
    reconciler.on_change(recorder)
    gate = recorder.hold(server)
    async with running(reconciler.run()):
        reconciler.request(server, READY)
        await recorder.entered[server].wait()
        yield reconciler, recorder, gate


def test_requests_for_a_server_being_reconciled_coalesce_into_one_more_run() -> None:
    async def scenario() -> None:
        async with stuck_on("a") as (reconciler, recorder, gate):
            for round_number in range(100):  # a hundred health rounds during a slow load
                reconciler.request("a", READY if round_number % 2 else UNREACHABLE)
            reconciler.request("a", UNREACHABLE)
            assert reconciler.pending() == {"a": UNREACHABLE}
            gate.set()
            await reconciler.wait_idle()
        # The latest state asked for wins; nothing in between is replayed.
        assert recorder.of("a") == [READY, UNREACHABLE]

    run(scenario)


def test_a_queued_server_carries_only_its_latest_state() -> None:
    async def scenario() -> None:
        async with stuck_on("busy", workers=1) as (reconciler, recorder, gate):
            for state in (READY, UNREACHABLE, READY):
                reconciler.request("b", state)
            assert reconciler.pending() == {"b": READY}
            gate.set()
            await reconciler.wait_idle()
        assert recorder.calls == [("busy", READY), ("b", READY)]

    run(scenario)


def test_a_slow_server_does_not_hold_up_the_others() -> None:
    async def scenario() -> None:
        async with stuck_on("slow", workers=2) as (reconciler, recorder, gate):
            for runs in range(1, 4):
                reconciler.request("fast", READY)
                await recorder.called("fast", runs)
            assert recorder.of("slow") == [READY]  # still in its first reconcile
            gate.set()
            await reconciler.wait_idle()

    run(scenario)


def test_one_server_is_never_reconciled_twice_at_once() -> None:
    async def scenario() -> None:
        reconciler = Reconciler(workers=4)
        active: dict[str, int] = {}
        most: dict[str, int] = {}
        runs = 0

        async def reconcile(server: str, state: str) -> None:
            nonlocal runs
            runs += 1
            active[server] = active.get(server, 0) + 1
            most[server] = max(most.get(server, 0), active[server])
            for _ in range(3):
                await asyncio.sleep(0)
            active[server] -= 1

        reconciler.on_change(reconcile)
        async with running(reconciler.run()):
            for step in range(300):
                reconciler.request(f"s{step % 3}", READY)
                if step % 7 == 0:
                    await asyncio.sleep(0)
            await reconciler.wait_idle()
        assert most == {"s0": 1, "s1": 1, "s2": 1}
        assert 3 <= runs < 300  # coalesced, yet every server was reconciled

    run(scenario)


def test_requests_never_wait_and_the_queue_holds_one_entry_per_server() -> None:
    async def scenario() -> None:
        async with stuck_on("first", workers=1) as (reconciler, recorder, gate):
            # The only worker is stuck; ten rounds over a thousand servers.
            for _ in range(10):
                for number in range(1000):
                    reconciler.request(f"server-{number}", READY)
            assert len(reconciler.pending()) == 1000
            gate.set()
            await reconciler.wait_idle()
        assert len(recorder.calls) == 1 + 1000

    run(scenario)


def test_a_failing_callback_is_logged_and_the_loop_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        recorder = Recorder()
        second = Recorder()
        reconciler = Reconciler(workers=1, retry=NEVER)
        reconciler.on_change(recorder)
        reconciler.on_change(second)
        recorder.failing.add("bad")
        async with running(reconciler.run()):
            reconciler.request("bad", READY)
            reconciler.request("good", READY)
            await second.called("good", 1)
            # Held back for its retry: a new request waits for the back-off.
            reconciler.request("bad", UNREACHABLE)
            reconciler.request("good", UNREACHABLE)
            await second.called("good", 2)
            assert recorder.of("good") == [READY, UNREACHABLE]
            assert recorder.of("bad") == [READY]
            assert reconciler.pending() == {"bad": UNREACHABLE}
        # The callback after the failing one still ran for the failing server.
        assert [server for server, _ in second.calls[:2]] == ["bad", "good"]

    run(scenario)
    assert "reconciling server bad (READY) failed" in caplog.text
    assert "scripted failure on bad" in caplog.text
    assert "retrying the reconcile of server bad in 3600s" in caplog.text


def test_a_failed_server_is_retried_with_growing_delays_until_it_succeeds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        recorder = Recorder()
        reconciler = Reconciler(retry=Backoff(initial=0.01, cap=0.04))
        reconciler.on_change(recorder)
        recorder.failing.add("flaky")
        async with running(reconciler.run()):
            reconciler.request("flaky", READY)  # asked once; every retry is the loop's own
            await recorder.called("flaky", 5)
            recorder.failing.clear()
            await reconciler.wait_idle()
            runs = len(recorder.of("flaky"))
            # Recovered: the failure count starts over.
            recorder.failing.add("flaky")
            reconciler.request("flaky", READY)
            await recorder.called("flaky", runs + 2)
            recorder.failing.clear()
            await reconciler.wait_idle()

    run(scenario)
    delays = [
        record.getMessage().rsplit(" in ", 1)[1]
        for record in caplog.records
        if record.getMessage().startswith("retrying the reconcile of server flaky")
    ]
    # Four failures in a row, a success, then the count starts over.
    assert delays[:5] == ["0.01s", "0.02s", "0.04s", "0.04s", "0.04s"]
    assert delays[-2:] == ["0.01s", "0.02s"]


def test_the_back_off_doubles_up_to_its_cap() -> None:
    backoff = Backoff(initial=0.5, cap=30.0)
    assert [backoff.delay(n) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert backoff.delay(10_000) == 30.0


def test_a_forgotten_server_is_not_retried() -> None:
    async def scenario() -> None:
        recorder = Recorder()
        last = Recorder()
        reconciler = Reconciler(retry=NEVER)
        reconciler.on_change(recorder)
        reconciler.on_change(last)
        recorder.failing.add("gone")
        async with running(reconciler.run()):
            reconciler.request("gone", READY)
            await last.called("gone", 1)
            assert reconciler.pending() == {"gone": READY}  # held for its retry
            reconciler.forget("gone")
            assert reconciler.pending() == {}
            await reconciler.wait_idle()

    run(scenario)


def test_a_server_deleted_while_being_reconciled_is_not_retried() -> None:
    async def scenario() -> None:
        recorder = Recorder()
        reconciler = Reconciler(retry=NEVER)
        reconciler.on_change(recorder)
        recorder.failing.add("gone")
        gate = recorder.hold("gone")
        async with running(reconciler.run()):
            reconciler.request("gone", READY)
            await recorder.entered["gone"].wait()
            reconciler.request("gone", READY)
            reconciler.forget("gone")
            gate.set()
            await reconciler.wait_idle()
            assert reconciler.pending() == {}
        assert recorder.of("gone") == [READY]

    run(scenario)


def test_cancelling_the_loop_stops_a_reconcile_in_progress() -> None:
    async def scenario() -> Recorder:
        async with stuck_on("stuck") as (_, recorder, _gate):
            pass  # leaving the block cancels the loop
        return recorder

    assert run(scenario).cancelled == ["stuck"]
