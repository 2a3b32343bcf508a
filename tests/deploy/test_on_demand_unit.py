"""On-demand decisions over scripted Triton clients: a cold start evicts the least
recently used idle model (by the Triton's own last_inference), never one with
requests in flight through any process (a busy mark another process published),
and never a min_copies one; idle copies go after idle_unload_after on the
lifecycle's clock, unless busy or their server cannot tell when they were used."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path

import peewee as pw
import pytest

from mlserve.catalog import sizing
from mlserve.core.errors import ResourceExhausted
from mlserve.core.paging import PageTokens
from mlserve.deploy import lifecycle
from mlserve.deploy.busy import ANY_SERVER, REFRESH_INTERVAL, BusyMarks
from mlserve.deploy.fleet import Fleet, ServerFields
from mlserve.deploy.lifecycle import Deployments, Placement, Wanted
from mlserve.deploy.on_demand import ON_DEMAND, Loading
from mlserve.deploy.placement import DEFAULT_HEADROOM, Capacity
from mlserve.storage.repository import LocalRepository
from tests.deploy.test_lifecycle_unit import add_versions
from tests.support.scripted_triton import ScriptedTritons

NEED = sizing.estimate(0, "python")  # what each scripted "add" version needs
MODELS = ("a", "b", "c")


class Scene:
    """Three on-demand models on one scripted server with room for two."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.tritons = ScriptedTritons()
        # Well after the load times the store records (real time): the scripted
        # uses below, not those, decide what is least recently used.
        self.now = time.time() + 1000.0
        # Another MLServe process on the same database: its requests in flight.
        self.other = BusyMarks("other-process")

    async def start(self, *, min_copies: dict[str, int] | None = None, idle: float = 0.0) -> None:
        fleet = Fleet(PageTokens(b"k" * 32), client_factory=self.tritons.client)
        room = Capacity(host_memory_bytes=math.floor((3 * NEED - 1) / (1 - DEFAULT_HEADROOM)))
        await fleet.register("s", ServerFields(address="s.test:8001", capacity=room))
        repository = LocalRepository(
            self.tmp_path / "repository", self.tmp_path / "staging", self.tmp_path / "blobs"
        )
        self.deployments = Deployments(
            fleet, repository, PageTokens(b"k" * 32), wall_clock=lambda: self.now
        )
        for model in MODELS:
            loading = Loading(ON_DEMAND, (min_copies or {}).get(model, 0), idle_unload_after=idle)
            await self.deployments.create(
                Wanted(model=model, placement=Placement(["s"]), loading=loading), wait=True
            )

    async def use(self, model: str) -> None:
        self.now += 1.0
        assert await self.deployments.warm(model)
        self.tritons["s"].last_inference[model] = self.now  # answered through anyone

    def unloaded(self) -> list[str]:
        return [model for method, model in self.tritons["s"].calls if method == "unload"]

    async def state(self, model: str) -> tuple[str, str]:
        (target,) = (await self.deployments.get(model)).targets
        return target.state, target.message


@pytest.fixture
def scene(store_db: pw.Database, tmp_path: Path) -> Scene:
    for model in MODELS:
        add_versions(model, 1)
    return Scene(tmp_path)


def test_a_cold_start_evicts_the_lru_model_but_not_one_in_flight(scene: Scene) -> None:

    async def scenario() -> tuple[list[str], tuple[str, str], tuple[str, str]]:
        await scene.start()
        await scene.use("a")
        await scene.use("b")
        await scene.other.enter("s", "a")  # a is the least recently used, but busy
        await scene.use("c")
        return scene.unloaded(), await scene.state("b"), await scene.state("a")

    unloaded, evicted, busy = asyncio.run(scenario())
    assert unloaded == ["b"]
    assert evicted[0] == "COLD"
    assert "to make room for 'c'" in evicted[1]
    assert busy == ("READY", "")


def test_min_copies_are_never_evicted(scene: Scene) -> None:

    async def scenario() -> list[str]:
        await scene.start(min_copies={"a": 1})  # a is loaded at create, for good
        await scene.use("b")
        await scene.use("c")  # a is older than b but kept
        return scene.unloaded()

    assert asyncio.run(scenario()) == ["b"]


def test_idle_copies_go_after_idle_unload_after(scene: Scene) -> None:

    async def scenario() -> tuple[list[str], list[str], tuple[str, str]]:
        await scene.start(idle=30.0)
        await scene.use("a")
        await scene.use("b")
        scene.now += 29.5  # a unused 30.5 s, b 29.5 s
        await scene.deployments.unload_idle()
        first = scene.unloaded()
        scene.now += 1.0
        await scene.other.enter("s", "b")  # busy: kept however long ago it started
        await scene.deployments.unload_idle()
        return first, scene.unloaded(), await scene.state("a")

    first, second, idle = asyncio.run(scenario())
    assert first == ["a"]
    assert second == ["a"]
    assert idle == ("COLD", "unloaded from s after 30 s unused")


def test_a_model_waiting_for_its_load_elsewhere_is_not_evicted(scene: Scene) -> None:
    """A mark on ANY_SERVER (requests waiting in some process for a cold load)
    keeps the model on every server."""

    async def scenario() -> list[str]:
        await scene.start()
        await scene.use("a")
        await scene.use("b")
        await scene.other.enter(ANY_SERVER, "a")
        await scene.use("c")
        return scene.unloaded()

    assert asyncio.run(scenario()) == ["b"]


def test_a_copy_used_through_another_process_is_not_idle(scene: Scene) -> None:
    """This process sent nothing; the Triton says b answered a second ago."""

    async def scenario() -> list[str]:
        await scene.start(idle=30.0)
        await scene.use("a")
        await scene.use("b")
        scene.now += 40.0
        scene.tritons["s"].last_inference["b"] = scene.now - 1.0
        await scene.deployments.unload_idle()
        return scene.unloaded()

    assert asyncio.run(scenario()) == ["a"]


def test_no_copy_is_idled_out_when_its_server_cannot_say_when_it_was_used(scene: Scene) -> None:

    async def scenario() -> list[str]:
        await scene.start(idle=30.0)
        await scene.use("a")
        scene.now += 40.0
        scene.tritons["s"].ready = False
        await scene.deployments.unload_idle()
        return scene.unloaded()

    assert asyncio.run(scenario()) == []


def test_a_cold_start_waits_for_marks_that_outlived_their_requests(
    scene: Scene, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every candidate was used through another process a moment ago: its marks
    linger until that process's refresher clears them, and the load waits."""
    monkeypatch.setattr(lifecycle, "_QUIET_WAIT", 120.0)  # however slow this machine

    async def scenario() -> list[str]:
        await scene.start()
        await scene.use("a")
        await scene.use("b")
        for model in ("a", "b"):
            async with scene.other.holding("s", model):
                pass  # ended; its mark stays for a refresh interval or two
        cold = asyncio.create_task(scene.deployments.warm("c"))
        await asyncio.sleep(0.5)
        assert not cold.done()  # it waits for the marks: nothing evicted yet
        assert scene.unloaded() == []
        for key in list(scene.other._ended_at):  # as if quiet for a refresh interval
            scene.other._ended_at[key] -= REFRESH_INTERVAL
        await scene.other.refresh()
        assert await cold
        return scene.unloaded()

    assert asyncio.run(scenario()) == ["a"]


def test_a_cold_start_without_room_but_for_busy_models_is_resource_exhausted(
    scene: Scene, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lifecycle, "_QUIET_WAIT", 0.5)

    async def scenario() -> None:
        await scene.start()
        await scene.use("a")
        await scene.use("b")
        for model in ("a", "b"):
            await scene.other.enter("s", model)  # still in flight
        with pytest.raises(ResourceExhausted, match="no server can free that much"):
            await scene.deployments.warm("c")

    asyncio.run(scenario())
    assert scene.unloaded() == []
