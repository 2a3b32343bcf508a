"""Placement on GPUs as pure functions: where a config's instance groups run
(Triton's rules), what a version holds on each GPU, choosing and checking
servers with room on the GPUs it names, the codes when it cannot go anywhere,
and evictions that free only the GPU a load needs."""

from __future__ import annotations

import pytest

from mlserve.catalog import sizing
from mlserve.core.errors import FailedPrecondition, ResourceExhausted
from mlserve.deploy.placement import (
    HOST,
    Capacity,
    Host,
    LoadPlan,
    Need,
    QueueGrowth,
    Resident,
    Room,
    check_named,
    check_runs_on,
    choose,
    demand,
    evictions_on,
    over_usable,
    plan_load,
    scale_up_to,
)
from mlserve.triton import modelconfig
from mlserve.triton.modelconfig import InstanceGroup

GIB = 1024**3
GPU = (InstanceGroup("GPU"),)
GPU_1 = (InstanceGroup("GPU", (1,)),)
AUTO = modelconfig.DEFAULT_INSTANCE_GROUPS
TWO_GPUS = Capacity(gpu_count=2, gpu_memory_bytes=10 * GIB, host_memory_bytes=100 * GIB)
CPU_ONLY = Capacity(host_memory_bytes=100 * GIB)


def groups_of(text: str) -> tuple[InstanceGroup, ...]:
    return sizing.instance_groups_of(f'backend: "python"\n{text}', "m")


def test_instance_groups_are_read_from_the_config_as_triton_reads_them() -> None:
    assert groups_of("") == (InstanceGroup("AUTO"),)  # no instance_group: KIND_AUTO
    assert groups_of("instance_group [{ kind: KIND_GPU gpus: [0, 2] }, { kind: KIND_CPU }]") == (
        InstanceGroup("GPU", (0, 2)),
        InstanceGroup("CPU"),
    )
    assert groups_of("instance_group [{ count: 2 }]") == (InstanceGroup("AUTO"),)
    assert groups_of("instance_group [{ kind: KIND_MODEL }]") == (InstanceGroup("MODEL"),)
    assert sizing.instance_groups_of("not a config {", "m") == modelconfig.ON_CPU


def test_a_version_holds_its_need_on_each_gpu_it_runs_on() -> None:
    assert demand(Need(GIB, GPU), TWO_GPUS) == {0: GIB, 1: GIB}
    assert demand(Need(GIB, GPU_1), TWO_GPUS) == {1: GIB}
    # KIND_AUTO: on every GPU where there are GPUs, else on the CPU.
    assert demand(Need(GIB, AUTO), TWO_GPUS) == {0: GIB, 1: GIB}
    assert demand(Need(GIB, AUTO), CPU_ONLY) == {HOST: GIB}
    both = (InstanceGroup("GPU", (0,)), InstanceGroup("CPU"))
    assert demand(Need(GIB, both), TWO_GPUS) == {0: GIB, HOST: GIB}
    assert demand(GIB, TWO_GPUS) == {HOST: GIB}  # bytes alone: the host
    # A pipeline's members add up on the memories they share.
    assert demand([Need(GIB, GPU_1), Need(2 * GIB, GPU)], TWO_GPUS) == {0: 2 * GIB, 1: 3 * GIB}


def test_a_gpu_config_cannot_run_where_its_gpus_are_not() -> None:
    with pytest.raises(FailedPrecondition, match="records no GPU"):
        check_runs_on("cpu", CPU_ONLY, Need(GIB, GPU))
    with pytest.raises(FailedPrecondition, match="names GPU 1 but the server records 1 GPU"):
        check_runs_on("one", Capacity(gpu_count=1), Need(GIB, GPU_1))
    check_runs_on("cpu", CPU_ONLY, Need(GIB, AUTO))  # KIND_AUTO falls back to the CPU
    check_runs_on("two", TWO_GPUS, Need(GIB, GPU_1))


def test_choose_counts_the_gpus_the_config_names_and_keeps_the_headroom() -> None:
    # 9 GiB usable per GPU with 10% headroom.
    gpu_1_full = Room("gpu1-full", TWO_GPUS, 0, {1: 8 * GIB})
    gpu_0_full = Room("gpu0-full", TWO_GPUS, 0, {0: 8 * GIB})
    cpu = Room("cpu", CPU_ONLY, 0)
    # gpus: [1] fits where GPU 0 is full, not where GPU 1 is; a CPU server cannot run it.
    assert choose([gpu_1_full, cpu, gpu_0_full], Need(2 * GIB, GPU_1), 1, 0.1) == ["gpu0-full"]
    # Every GPU: neither has room on both.
    with pytest.raises(ResourceExhausted) as failure:
        choose([gpu_1_full, gpu_0_full], Need(2 * GIB, GPU), 1, 0.1)
    message = failure.value.message
    assert f"need {2 * GIB} bytes of GPU memory" in message
    assert f"largest free GPU space is {9 * GIB} bytes" in message
    assert "GPU 0 of server 'gpu1-full'" in message
    # Exactly up to the usable size fits; a byte more does not.
    assert choose([gpu_1_full], Need(GIB, GPU_1), 1, 0.1) == ["gpu1-full"]
    with pytest.raises(ResourceExhausted):
        choose([gpu_1_full], Need(GIB + 1, GPU_1), 1, 0.1)
    # A GPU-only version takes nothing of the host.
    host_full = Room("host-full", TWO_GPUS, 100 * GIB)
    assert choose([host_full], Need(GIB, GPU), 1, 0.1) == ["host-full"]


def test_a_gpu_model_on_a_fleet_without_gpus_is_a_failed_precondition() -> None:
    rooms = [Room("a", CPU_ONLY, 0), Room("b", Capacity(), 0)]
    with pytest.raises(FailedPrecondition) as failure:
        choose(rooms, Need(GIB, GPU), 1, 0.1)
    assert "none of the 2 server(s) it may go on records a GPU" in failure.value.message
    # Some have GPUs but too few can run it: which, and why.
    with pytest.raises(FailedPrecondition) as failure:
        choose([Room("a", CPU_ONLY, 0), Room("g", TWO_GPUS, 0)], Need(GIB, GPU), 2, 0.1)
    assert "only 1 of the 2 server(s)" in failure.value.message
    assert "server 'a': the config puts instances on GPUs" in failure.value.message
    # On demand the need is 0 bytes, and still refused.
    with pytest.raises(FailedPrecondition):
        choose(rooms, Need(0, GPU), 1, 0.1)


def test_a_named_server_is_checked_on_the_gpu_the_config_names() -> None:
    gpu_1_full = Room("g", TWO_GPUS, 0, {1: 8 * GIB})
    check_named([gpu_1_full], Need(2 * GIB, (InstanceGroup("GPU", (0,)),)), 0.1)
    with pytest.raises(ResourceExhausted) as failure:
        check_named([gpu_1_full], Need(2 * GIB, GPU_1), 0.1)
    assert f"has {GIB} bytes of memory on GPU 1 free" in failure.value.message
    assert f"needs {2 * GIB} bytes" in failure.value.message
    with pytest.raises(FailedPrecondition):
        check_named([Room("c", CPU_ONLY, 0)], Need(GIB, GPU), 0.1)


def test_unstated_gpu_memory_is_never_refused_for_memory() -> None:
    unstated = Capacity(gpu_count=2)
    assert choose([Room("u", unstated, 0, {0: 10**15})], Need(GIB, GPU), 1, 0.1) == ["u"]


def test_rooms_count_what_their_deployments_hold_on_each_gpu() -> None:
    room = Room.holding("g", TWO_GPUS, [Need(GIB, GPU_1), Need(2 * GIB, AUTO), Need(3 * GIB)])
    assert (room.used, dict(room.gpu_used)) == (3 * GIB, {0: 2 * GIB, 1: 3 * GIB})
    assert room.gpu_free(0.1) == [(0, 7 * GIB), (1, 6 * GIB)]


def test_pinning_over_a_gpus_usable_memory_is_found() -> None:
    assert over_usable(TWO_GPUS, [Need(5 * GIB, GPU_1), Need(4 * GIB, GPU_1)], 0.1) is None
    assert over_usable(TWO_GPUS, [Need(5 * GIB, GPU_1), Need(5 * GIB, GPU)], 0.1) == (
        1,
        10 * GIB,
        9 * GIB,
    )


def test_a_gpu_load_evicts_only_what_frees_that_gpu() -> None:
    resident = [
        Resident("on-host", 8 * GIB, last_used=1.0),  # oldest, but frees no GPU
        Resident("on-gpu-0", 0, last_used=2.0, gpu={0: 8 * GIB}),
        Resident("on-gpu-1", 0, last_used=3.0, gpu={1: 6 * GIB}),
        Resident("on-gpu-1-too", 0, last_used=4.0, gpu={1: 2 * GIB}),
    ]
    free = {1: GIB}
    assert evictions_on(resident, free, {1: 4 * GIB}) == ["on-gpu-1"]
    assert evictions_on(resident, free, {1: 2 * GIB}) == ["on-gpu-1"]  # the oldest that frees it
    assert evictions_on(resident, free, {1: GIB}) == []
    assert evictions_on(resident, free, {1: 10 * GIB}) is None
    # A load on both GPUs frees each.
    assert evictions_on(resident, {0: 0, 1: 0}, {0: GIB, 1: GIB}) == ["on-gpu-0", "on-gpu-1"]


def test_an_on_demand_gpu_load_goes_where_its_gpu_can_be_freed() -> None:
    cpu = Host("cpu", CPU_ONLY, [])
    packed = Host(
        "packed",
        TWO_GPUS,
        [
            Resident("old-host", 9 * GIB, 1.0),
            Resident("gpu-1", 0, 2.0, gpu={1: 9 * GIB}),
            Resident("gpu-0", 0, 3.0, gpu={0: 9 * GIB}),
        ],
    )
    assert plan_load([cpu, packed], Need(GIB, GPU_1), 0.1) == LoadPlan("packed", ("gpu-1",))
    roomy = Host("roomy", TWO_GPUS, [Resident.of("x", Need(GIB, GPU), TWO_GPUS, 1.0)])
    assert plan_load([packed, roomy], Need(GIB, GPU_1), 0.1) == LoadPlan("roomy")
    with pytest.raises(ResourceExhausted) as failure:
        plan_load([cpu], Need(GIB, GPU), 0.1)
    assert f"needs {GIB} bytes of GPU memory" in failure.value.message
    pinned = Host("pinned", TWO_GPUS, [Resident("p", 0, 1.0, pinned=True, gpu={1: 9 * GIB})])
    with pytest.raises(ResourceExhausted) as failure:
        plan_load([pinned], Need(GIB, GPU_1), 0.1)
    assert f"largest free GPU space is {9 * GIB} bytes" in failure.value.message


def test_a_hot_gpu_model_scales_up_only_onto_a_server_with_its_gpus() -> None:
    hot = {"a": QueueGrowth(10, 10 * 10**9)}
    rooms = [Room("cpu", CPU_ONLY, 0), Room("g", TWO_GPUS, 0, {1: 9 * GIB}), Room("a", TWO_GPUS, 0)]
    assert scale_up_to(hot, rooms, Need(GIB, GPU_1), 3, 1.0, 0.1) is None  # GPU 1 is full
    assert scale_up_to(hot, rooms, Need(GIB, GPU), 3, 1.0, 0.1) is None
    rooms.append(Room("h", TWO_GPUS, 0))
    assert scale_up_to(hot, rooms, Need(GIB, GPU_1), 3, 1.0, 0.1) == "h"
