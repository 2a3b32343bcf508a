"""Placement by memory as pure functions: capacity checks, choosing servers with
room, the smallest LRU eviction set, and where an on-demand load goes."""

from __future__ import annotations

import pytest

from mlserve.catalog import sizing
from mlserve.core.errors import InvalidArgument, ResourceExhausted
from mlserve.deploy.placement import (
    Capacity,
    Host,
    LoadPlan,
    Resident,
    Room,
    check_named,
    choose,
    evictions,
    free_bytes,
    plan_load,
)

GIB = 1024**3


@pytest.mark.parametrize(
    ("capacity", "field"),
    [
        (Capacity(gpu_count=-1), "server.capacity.gpu_count"),
        (Capacity(gpu_count=5000), "server.capacity.gpu_count"),
        (Capacity(gpu_count=1, gpu_memory_bytes=-5), "server.capacity.gpu_memory_bytes"),
        (Capacity(gpu_count=1, gpu_memory_bytes=17 * 1024**4), "server.capacity.gpu_memory_bytes"),
        (Capacity(host_memory_bytes=-1), "server.capacity.host_memory_bytes"),
        (Capacity(host_memory_bytes=2 * 1024**5), "server.capacity.host_memory_bytes"),
        (Capacity(gpu_memory_bytes=GIB), "server.capacity.gpu_memory_bytes"),
    ],
)
def test_capacity_out_of_range_names_the_field(capacity: Capacity, field: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        capacity.checked()
    assert raised.value.message.startswith(field)


def test_free_memory_keeps_the_headroom() -> None:
    assert free_bytes(Capacity(host_memory_bytes=10 * GIB), 4 * GIB, 0.1) == 5 * GIB
    assert free_bytes(Capacity(host_memory_bytes=10 * GIB), 12 * GIB, 0.1) == 0
    assert free_bytes(Capacity(), 12 * GIB, 0.1) is None  # not stated: no limit


def test_choose_skips_servers_without_room_and_keeps_the_callers_order() -> None:
    rooms = [
        Room("full", Capacity(host_memory_bytes=10 * GIB), 8 * GIB),
        Room("b", Capacity(host_memory_bytes=10 * GIB), 1 * GIB),
        Room("unstated", Capacity(), 100 * GIB),
        Room("c", Capacity(host_memory_bytes=10 * GIB), 0),
    ]
    assert choose(rooms, 2 * GIB, 2, 0.1) == ["b", "unstated"]
    assert choose(rooms, 2 * GIB, 3, 0.1) == ["b", "unstated", "c"]


def test_choose_names_the_need_and_the_largest_free_space() -> None:
    rooms = [
        Room("a", Capacity(host_memory_bytes=10 * GIB), 8 * GIB),
        Room("b", Capacity(host_memory_bytes=10 * GIB), 6 * GIB),
    ]
    with pytest.raises(ResourceExhausted) as raised:
        choose(rooms, 4 * GIB, 1, 0.1)
    message = raised.value.message
    assert f"need {4 * GIB} bytes" in message
    assert f"largest free space is {3 * GIB} bytes" in message
    assert "'b'" in message


def test_named_servers_are_each_checked_for_room() -> None:
    roomy = Room("a", Capacity(host_memory_bytes=10 * GIB), 0)
    full = Room("b", Capacity(host_memory_bytes=10 * GIB), 8 * GIB)
    unstated = Room("c", Capacity(), 100 * GIB)
    check_named([roomy, unstated], 4 * GIB, 0.1)  # room, or no stated limit
    with pytest.raises(ResourceExhausted) as raised:
        check_named([roomy, full], 4 * GIB, 0.1)
    message = raised.value.message
    assert f"server 'b' has {1 * GIB} bytes of model memory free" in message
    assert f"needs {4 * GIB} bytes" in message


def test_eviction_takes_the_least_recently_used_and_no_more_than_it_needs() -> None:
    resident = [
        Resident("old-big", 4 * GIB, last_used=1.0),
        Resident("old-small", 1 * GIB, last_used=2.0),
        Resident("recent", 3 * GIB, last_used=9.0),
    ]
    # 1 GiB free, 4 GiB needed: old-big alone frees enough (old-small is spared).
    assert evictions(resident, 1 * GIB, 4 * GIB) == ["old-big"]
    # 2 GiB needed: old-big is the least recently used and frees enough alone.
    assert evictions(resident, 1 * GIB, 2 * GIB) == ["old-big"]
    assert evictions(resident, 5 * GIB, 4 * GIB) == []


def test_eviction_puts_back_what_is_not_needed() -> None:
    resident = [
        Resident("a", 1 * GIB, last_used=1.0),
        Resident("b", 6 * GIB, last_used=2.0),
        Resident("c", 1 * GIB, last_used=3.0),
    ]
    # In LRU order a, then b frees enough; a is not needed once b goes.
    assert evictions(resident, 0, 5 * GIB) == ["b"]


def test_eviction_never_takes_pinned_or_busy_models() -> None:
    resident = [
        Resident("pinned", 4 * GIB, last_used=1.0, pinned=True),
        Resident("busy", 4 * GIB, last_used=2.0, in_flight=3),
        Resident("idle", 2 * GIB, last_used=5.0),
    ]
    assert evictions(resident, 0, 2 * GIB) == ["idle"]
    assert evictions(resident, 0, 3 * GIB) is None


def test_an_on_demand_load_goes_where_there_is_room_else_where_fewest_go() -> None:
    capacity = Capacity(host_memory_bytes=10 * GIB)  # 9 GiB usable with 10% headroom
    roomy = Host("roomy", capacity, [Resident("x", 2 * GIB, 1.0)])
    fuller = Host("fuller", capacity, [Resident("y", 6 * GIB, 1.0)])
    assert plan_load([fuller, roomy], 3 * GIB, 0.1) == LoadPlan("roomy")
    packed_one = Host("one", capacity, [Resident("big", 8 * GIB, 1.0)])
    packed_two = Host("two", capacity, [Resident("p", 4 * GIB, 1.0), Resident("q", 4 * GIB, 2.0)])
    assert plan_load([packed_two, packed_one], 8 * GIB, 0.1) == LoadPlan("one", ("big",))
    with pytest.raises(ResourceExhausted):
        plan_load([packed_one], 10 * GIB, 0.1)


def test_the_estimate_is_a_fixed_cost_plus_the_size_times_the_backends_factor() -> None:
    python = sizing.BACKEND_COSTS["python"]
    assert sizing.estimate(100, "python") == python.fixed_bytes + round(100 * python.factor)
    assert sizing.estimate(10, "some-new-backend") == (
        sizing.UNKNOWN_BACKEND.fixed_bytes + round(10 * sizing.UNKNOWN_BACKEND.factor)
    )
    config = 'name: "m"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 0\n'
    assert sizing.backend_of(config, "m") == "onnxruntime"
