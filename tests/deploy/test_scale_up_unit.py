"""Scale-up decisions (``placement.scale_up_to``): a hot on-demand model gains one
copy when every loaded copy's mean queue time over the round is above the
threshold, up to its allowed copies, only where there is room."""

from __future__ import annotations

import asyncio
from pathlib import Path

import peewee as pw
from prometheus_client import CollectorRegistry

from mlserve.core.paging import PageTokens
from mlserve.deploy.fleet import Fleet, ServerFields
from mlserve.deploy.lifecycle import Deployments, Placement, Wanted
from mlserve.deploy.on_demand import ON_DEMAND, Loading
from mlserve.deploy.placement import Capacity, QueueGrowth, Room, scale_up_to
from mlserve.storage.repository import LocalRepository
from tests.deploy.test_lifecycle_unit import add_versions
from tests.support.scripted_triton import ScriptedTritons

MIB = 1024**2
THRESHOLD_NS = 50e6  # 50 ms
HOT = QueueGrowth(requests=10, queue_ns=10 * 80_000_000)  # 80 ms each
COOL = QueueGrowth(requests=10, queue_ns=10 * 20_000_000)  # 20 ms each
IDLE = QueueGrowth(requests=0, queue_ns=0)


def room(server: str, memory_mib: int, used_mib: int = 0) -> Room:
    return Room(server, Capacity(host_memory_bytes=memory_mib * MIB), used_mib * MIB)


ROOMS = [room("a", 1000, 500), room("b", 1000, 100), room("c", 1000, 300)]


def decide(
    loaded: dict[str, QueueGrowth], rooms: list[Room] = ROOMS, allowed: int = 3
) -> str | None:
    return scale_up_to(loaded, rooms, 200 * MIB, allowed, THRESHOLD_NS, 0.10)


def test_a_queue_above_the_threshold_on_every_copy_adds_one_on_the_freest_server() -> None:
    assert decide({"a": HOT}) == "b"  # b has the most free memory
    assert decide({"a": HOT, "b": HOT}) == "c"


def test_no_copy_is_added_while_any_copy_queues_at_or_under_the_threshold() -> None:
    assert decide({"a": COOL}) is None
    assert decide({"a": HOT, "b": COOL}) is None
    assert decide({"a": HOT, "b": IDLE}) is None  # a copy without traffic can take more
    at_threshold = QueueGrowth(requests=4, queue_ns=int(4 * THRESHOLD_NS))
    assert decide({"a": at_threshold}) is None


def test_max_copies_caps_the_copies() -> None:
    assert decide({"a": HOT, "b": HOT}, allowed=2) is None
    assert decide({"a": HOT}, allowed=1) is None


def test_a_cold_model_is_left_to_the_cold_start() -> None:
    assert decide({}) is None


def test_no_room_means_no_new_copy_and_nothing_evicted() -> None:
    full = [room("a", 1000, 500), room("b", 1000, 800), room("c", 1000, 850)]
    assert decide({"a": HOT}, rooms=full) is None


def test_one_new_copy_per_round_however_many_servers_have_room() -> None:
    assert decide({"a": HOT}, rooms=[*ROOMS, room("d", 1000)]) == "d"  # one name, not a list


def test_a_server_without_stated_capacity_has_room() -> None:
    unstated = Room("u", Capacity(), 10**15)
    assert decide({"a": HOT}, rooms=[room("a", 1000), room("b", 1000, 850), unstated]) == "u"


def test_a_zero_threshold_turns_scaling_off() -> None:
    assert scale_up_to({"a": HOT}, ROOMS, 200 * MIB, 3, 0, 0.10) is None


# --- Deployments.scale_up over scripted Triton clients ------------------------


def _scaled(registry: CollectorRegistry, server: str) -> float | None:
    return registry.get_sample_value("mlserve_scale_ups_total", {"server": server})


def test_a_hot_model_gains_one_copy_per_round_up_to_max_copies(
    store_db: pw.Database, tmp_path: Path
) -> None:
    add_versions("m", 1)
    tritons = ScriptedTritons()
    registry = CollectorRegistry()

    async def scenario() -> list[list[str]]:
        fleet = Fleet(PageTokens(b"k" * 32), client_factory=tritons.client)
        for name, memory in (("s1", 900), ("s2", 500), ("s3", 700)):
            memory_bytes = Capacity(host_memory_bytes=memory * MIB)
            await fleet.register(
                name, ServerFields(address=f"{name}.test:8001", capacity=memory_bytes)
            )
        repository = LocalRepository(tmp_path / "repo", tmp_path / "staging", tmp_path / "blobs")
        deployments = Deployments(fleet, repository, PageTokens(b"k" * 32), registry=registry)
        loading = Loading(ON_DEMAND, max_copies=2)
        await deployments.create(
            Wanted(model="m", placement=Placement(["s1", "s2", "s3"]), loading=loading),
            wait=True,
        )
        assert await deployments.warm("m")  # the cold start: s1, the most free
        seen = []

        async def round_with(queue: dict[str, QueueGrowth]) -> None:
            await deployments.scale_up({("m", s): g for s, g in queue.items()}, 50.0)
            targets = (await deployments.get("m")).targets
            seen.append([t.server for t in targets if t.state == "READY"])

        await round_with({"s1": COOL})  # short queue: nothing
        await round_with({"s1": HOT})  # hot: one more, on s3 (more free than s2)
        await round_with({"s1": HOT})  # s3 has no traffic yet: nothing
        await round_with({"s1": HOT, "s3": HOT})  # at max_copies 2: nothing
        await deployments.scale_up({("m", "s1"): HOT}, 0.0)  # 0 ms: off
        return seen

    seen = asyncio.run(scenario())
    assert seen == [["s1"], ["s1", "s3"], ["s1", "s3"], ["s1", "s3"]]
    assert _scaled(registry, "s3") == 1
    assert _scaled(registry, "s2") is None
    loads = [model for method, model in tritons["s3"].calls if method == "load"]
    assert loads == ["m"]
