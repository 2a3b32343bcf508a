"""The health loop over scripted Triton clients: it observes and queues, never
waits for a reconcile, and one slow server does not hold up the others.

The fleet is real (its registry in a fresh SQLite store); only the Triton
clients are scripted, through the fleet's client factory."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from mlserve.deploy.fleet import READY, UNREACHABLE, Fleet
from mlserve.deploy.health import HealthLoop
from mlserve.storage import tables
from mlserve.storage.db import in_thread
from tests.support.aio import run, running
from tests.support.scripted_triton import ScriptedTritons, scripted_fleet

INTERVAL = 0.05


# The registry's database plays no part in what is tested: SQLite only, for speed.
pytestmark = [
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
    pytest.mark.usefixtures("store_db"),
]


def seen(fleet: Fleet, name: str) -> dt.datetime:
    time = fleet.status(name).last_health_time
    assert time is not None, f"{name} was never seen ready"
    return time


def test_rounds_go_on_while_a_reconcile_is_stuck() -> None:
    async def scenario() -> None:
        tritons = ScriptedTritons()
        fleet = await scripted_fleet(tritons, "a", "b")
        stuck = asyncio.Event()
        release = asyncio.Event()

        async def slow_load(server: str, state: str) -> None:
            if server == "a":
                stuck.set()
                await release.wait()  # a model whose initialize() sleeps

        fleet.on_change(slow_load)
        rounds = HealthLoop(fleet, INTERVAL)
        async with running(fleet.reconciler.run()):
            await stuck.wait()
            before = {name: seen(fleet, name) for name in ("a", "b")}
            for _ in range(3):
                await asyncio.sleep(0.002)  # lets the clock move on
                await rounds.round()
            after = {name: seen(fleet, name) for name in ("a", "b")}
            assert all(after[name] > before[name] for name in before), (before, after)
            assert fleet.status("a").state == READY
            # Three rounds asked for "a" again: it waits once, for after the load.
            assert fleet.reconciler.pending() == {"a": READY}
            release.set()
            await fleet.reconciler.wait_idle()

    run(scenario)


def test_a_server_slow_to_answer_does_not_hold_up_the_round() -> None:
    async def scenario() -> None:
        tritons = ScriptedTritons()
        fleet = await scripted_fleet(tritons, "hung", "fine")
        gate = tritons["hung"].hold("is_ready")
        rounds = HealthLoop(fleet, INTERVAL)
        before = seen(fleet, "fine")
        for _ in range(3):
            await asyncio.sleep(0.002)
            await rounds.round()  # returns after at most one interval
        assert seen(fleet, "fine") > before
        # One check of the hung server at a time, however many rounds pass.
        assert tritons["hung"].calls.count(("is_ready", "")) == 2  # registration + one
        gate.set()
        await fleet.refresh_all()
        assert fleet.status("hung").state == READY

    run(scenario)


def test_leaving_ready_is_reported_once_and_coming_back_every_round() -> None:
    async def scenario() -> None:
        tritons = ScriptedTritons()
        fleet = await scripted_fleet(tritons, "a")
        states: list[str] = []

        async def record(server: str, state: str) -> None:
            states.append(state)

        fleet.on_change(record)
        rounds = HealthLoop(fleet, INTERVAL)
        async with running(fleet.reconciler.run()):
            await fleet.reconciler.wait_idle()
            tritons["a"].ready = False
            for _ in range(3):
                await rounds.round()
                await fleet.reconciler.wait_idle()
            status = fleet.status("a")
            assert status.state == UNREACHABLE
            assert status.message == "no answer from a.test:8001"
            tritons["a"].ready = True
            for _ in range(2):
                await rounds.round()
                await fleet.reconciler.wait_idle()
        # Registration, the one round that saw it go, the two that saw it back.
        assert states == [READY, UNREACHABLE, READY, READY]

    run(scenario)


def test_a_server_that_cannot_list_its_models_is_unreachable() -> None:
    async def scenario() -> None:
        tritons = ScriptedTritons()
        fleet = await scripted_fleet(tritons, "a")
        tritons["a"].loaded = {"m": 1}
        await fleet.refresh_all()
        assert [entry.name for entry in fleet.status("a").loaded] == ["m"]
        last_ready = seen(fleet, "a")

        async def broken_index(timeout: float = 5.0) -> list[object]:
            raise RuntimeError("index exploded")

        tritons["a"].index = broken_index  # type: ignore[method-assign,assignment]
        await fleet.refresh_all()
        status = fleet.status("a")
        assert (status.state, status.message) == (UNREACHABLE, "index exploded")
        assert status.last_health_time == last_ready  # the last time it was seen ready

    run(scenario)


def test_a_failing_hook_skips_nothing_and_the_loop_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        tritons = ScriptedTritons()
        fleet = await scripted_fleet(tritons, "a")
        later_runs = 0
        enough = asyncio.Event()

        async def failing() -> None:
            raise RuntimeError("the database is away")

        async def later() -> None:
            nonlocal later_runs
            later_runs += 1
            if later_runs == 3:
                enough.set()

        loop = asyncio.create_task(HealthLoop(fleet, 0.001, hooks=(failing, later)).run())
        await enough.wait()
        loop.cancel()
        with pytest.raises(asyncio.CancelledError):
            await loop

    run(scenario)
    assert caplog.text.count("the database is away") >= 3


def test_a_deleted_server_leaves_nothing_for_the_reconciler() -> None:
    async def scenario() -> None:
        tritons = ScriptedTritons()
        fleet = await scripted_fleet(tritons, "a")
        assert fleet.reconciler.pending() == {"a": READY}  # nothing drains it here
        await fleet.delete("a")
        assert fleet.reconciler.pending() == {}
        await HealthLoop(fleet, INTERVAL).round()
        assert fleet.reconciler.pending() == {}

    run(scenario)


def test_a_round_follows_an_address_another_process_changed_in_the_store() -> None:
    async def scenario() -> None:
        tritons = ScriptedTritons()
        fleet = await scripted_fleet(tritons, "a")
        assert fleet.cached_client("a") is not None
        # What another process's supervisor writes after restarting its Triton.
        await in_thread(
            lambda: (
                tables.Server.update(address="a.test:9001")
                .where(tables.Server.name == "a")
                .execute()
            )
        )()
        del tritons.by_name["a"]  # the scripted factory hands out a new client
        await HealthLoop(fleet, INTERVAL).round()
        client = fleet.cached_client("a")
        assert client is not None
        assert client.address == "a.test:9001"
        assert fleet.status("a").state == READY

    run(scenario)
