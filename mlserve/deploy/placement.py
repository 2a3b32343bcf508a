"""Placement by memory, as pure functions of what the fleet has and holds.

Nothing here reads the store or talks to a Triton: ``targets.Placer`` gives
these functions the servers' capacities, what their deployments need and the
model versions' needs, and the placement simulation (``bench/placement.py``)
gives them a scripted fleet. So the decisions are unit-tested and benched as
they run.

Memory is counted where a version's config runs its instances (Triton's
rules, ``modelconfig.instance_groups``): a group of KIND_CPU or KIND_MODEL
on the host (``Capacity.host_memory_bytes``), one of KIND_GPU on each GPU it
names (``gpus: [...]``, or every GPU of the server), one of KIND_AUTO (and a
config without instance_group) on every GPU of a server that has GPUs, else
on the host. A version holds its whole need on each GPU it runs on, and on
the host only when some of its instances run on the CPU. A memory whose size
is not stated (0) is never refused for memory; a config that puts instances
on GPUs a server does not have cannot go there at all (``misfit``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mlserve.core.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from mlserve.triton.modelconfig import ON_CPU, InstanceGroup

# Beyond these a value is a typo (bytes given as KiB, say), not a machine.
MAX_GPU_COUNT = 1024
MAX_GPU_MEMORY_BYTES = 16 * 1024**4  # 16 TiB per GPU
MAX_HOST_MEMORY_BYTES = 1024**5  # 1 PiB
# What placement leaves free on each server by default: Triton itself, request
# tensors and a measurement's error need room too.
DEFAULT_HEADROOM = 0.10


@dataclass(frozen=True)
class Capacity:
    """What one server has for models; ``host_memory_bytes`` 0: not stated."""

    gpu_count: int = 0
    gpu_memory_bytes: int = 0
    host_memory_bytes: int = 0

    @property
    def stated(self) -> bool:
        return self.host_memory_bytes > 0

    def checked(self, field: str = "server.capacity") -> Capacity:
        """This capacity, or InvalidArgument naming the first field out of range."""
        _check_range(f"{field}.gpu_count", self.gpu_count, MAX_GPU_COUNT, "1024")
        _check_range(
            f"{field}.gpu_memory_bytes", self.gpu_memory_bytes, MAX_GPU_MEMORY_BYTES, "16 TiB"
        )
        _check_range(
            f"{field}.host_memory_bytes", self.host_memory_bytes, MAX_HOST_MEMORY_BYTES, "1 PiB"
        )
        if self.gpu_memory_bytes and not self.gpu_count:
            raise InvalidArgument(
                f"{field}.gpu_memory_bytes is set but {field}.gpu_count is 0: give the "
                "number of GPUs too, or leave both 0 for a CPU-only server"
            )
        return self


def _check_range(field: str, value: int, largest: int, shown: str) -> None:
    if value < 0:
        raise InvalidArgument(f"{field} must not be negative, got {value}")
    if value > largest:
        raise InvalidArgument(f"{field} is {value}, above the most MLServe accepts ({shown})")


def check_headroom(headroom: float) -> float:
    """``headroom`` if it is a fraction from 0 to 0.9 (ValueError otherwise)."""
    if not math.isfinite(headroom) or not 0.0 <= headroom <= 0.9:
        raise ValueError(f"placement headroom must be a fraction from 0 to 0.9, got {headroom}")
    return headroom


def usable_bytes(capacity: Capacity, headroom: float) -> int | None:
    """What placement may fill on a server: its host memory less the headroom;
    None when its capacity is not stated (no limit)."""
    if not capacity.stated:
        return None
    return math.floor(capacity.host_memory_bytes * (1.0 - headroom))


def free_bytes(capacity: Capacity, used: int, headroom: float) -> int | None:
    """``usable_bytes`` less ``used``, never below 0; None when not stated."""
    usable = usable_bytes(capacity, headroom)
    return None if usable is None else max(0, usable - used)


NOT_STATED = Capacity()

# A server's memories: HOST, or a GPU by its index (0, 1, ...).
HOST = -1


def memory_name(memory: int) -> str:
    """How messages name one of a server's memories."""
    return "host memory" if memory == HOST else f"GPU {memory}"


def usable_on(capacity: Capacity, memory: int, headroom: float) -> int | None:
    """What placement may fill of one ``memory`` of a server (HOST or a GPU index)
    less the headroom; None when its size is not stated (no limit)."""
    if memory == HOST:
        return usable_bytes(capacity, headroom)
    if not capacity.gpu_memory_bytes:
        return None
    return math.floor(capacity.gpu_memory_bytes * (1.0 - headroom))


def free_on(capacity: Capacity, memory: int, used: int, headroom: float) -> int | None:
    """``usable_on`` less ``used``, never below 0; None when not stated."""
    usable = usable_on(capacity, memory, headroom)
    return None if usable is None else max(0, usable - used)


@dataclass(frozen=True)
class Need:
    """One model version's memory need (bytes) and where its config runs it."""

    bytes: int
    instance_groups: tuple[InstanceGroup, ...] = ON_CPU

    def misfit(self, capacity: Capacity) -> str | None:
        """Why a server with ``capacity`` cannot run it (a GPU it names is not
        there), or None when it can."""
        count = capacity.gpu_count
        for group in self.instance_groups:
            if group.kind == "AUTO" and not count:
                continue  # Triton runs it on the CPU there
            if group.kind not in ("GPU", "AUTO"):
                continue
            if not count:
                return (
                    "the config puts instances on GPUs (instance_group kind KIND_GPU) but "
                    "the server records no GPU (capacity.gpu_count 0)"
                )
            missing = [gpu for gpu in group.gpus if not 0 <= gpu < count]
            if missing:
                return (
                    f"the config's instance_group names GPU {missing[0]} but the server "
                    f"records {count} GPU(s), numbered 0 to {count - 1}"
                )
        return None

    def on(self, capacity: Capacity) -> dict[int, int]:
        """Bytes it holds on each memory of a server with ``capacity`` (HOST, GPU
        indices); a GPU it names that the server lacks holds nothing (``misfit``)."""
        count = capacity.gpu_count
        host, gpus = False, set[int]()
        for group in self.instance_groups:
            on_gpu = group.kind == "GPU" or (group.kind == "AUTO" and count > 0)
            if not on_gpu:
                host = True
                continue
            gpus.update(gpu for gpu in group.gpus or range(count) if 0 <= gpu < count)
        held = dict.fromkeys(sorted(gpus), self.bytes)
        if host:
            held[HOST] = self.bytes
        return held

    @property
    def on_gpus(self) -> bool:
        """Whether some of its instances may run on GPUs (KIND_GPU or KIND_AUTO)."""
        return any(group.kind in ("GPU", "AUTO") for group in self.instance_groups)


# What a caller places: bytes on the host (the CPU), one version, or several at
# once (a pipeline's members, on every server of it).
Wanted = int | Need | Sequence[Need]


def needs_of(wanted: Wanted) -> tuple[Need, ...]:
    """``wanted`` as a tuple of needs (bytes alone: on the host)."""
    if isinstance(wanted, int):
        return (Need(wanted),)
    if isinstance(wanted, Need):
        return (wanted,)
    return tuple(wanted)


def misfit(wanted: Wanted, capacity: Capacity) -> str | None:
    """Why a server with ``capacity`` cannot run ``wanted`` at all, or None."""
    return next((m for n in needs_of(wanted) if (m := n.misfit(capacity))), None)


def demand(wanted: Wanted, capacity: Capacity) -> dict[int, int]:
    """Bytes ``wanted`` holds on each memory of a server with ``capacity``."""
    total: defaultdict[int, int] = defaultdict(int)
    for need in needs_of(wanted):
        for memory, size in need.on(capacity).items():
            total[memory] += size
    return dict(total)


@dataclass(frozen=True)
class Room:
    """One candidate server as placement sees it."""

    server: str
    capacity: Capacity
    used: int  # bytes of host memory its deployments need already
    gpu_used: Mapping[int, int] = field(default_factory=dict)  # per GPU index, likewise

    @classmethod
    def holding(cls, server: str, capacity: Capacity, held: Iterable[Need]) -> Room:
        """The room of a server with ``capacity`` whose deployments need ``held``."""
        used = demand(tuple(held), capacity)
        return cls(server, capacity, used.pop(HOST, 0), used)

    def used_on(self, memory: int) -> int:
        return self.used if memory == HOST else self.gpu_used.get(memory, 0)

    def free_on(self, memory: int, headroom: float) -> int | None:
        return free_on(self.capacity, memory, self.used_on(memory), headroom)

    def gpu_free(self, headroom: float) -> list[tuple[int, int | None]]:
        """(index, bytes free) of each of its GPUs; None: size not stated."""
        return [(gpu, self.free_on(gpu, headroom)) for gpu in range(self.capacity.gpu_count)]


def _short(room: Room, wanted: Wanted, headroom: float) -> list[int]:
    """The memories of ``room`` without room for ``wanted``."""
    return [
        memory
        for memory, size in demand(wanted, room.capacity).items()
        if (free := room.free_on(memory, headroom)) is not None and free < size
    ]


def choose(rooms: Sequence[Room], need: Wanted, wanted: int, headroom: float) -> list[str]:
    """The first ``wanted`` of ``rooms`` (in the caller's order of preference) that
    can run ``need`` and have room for it on each memory it uses, so that none
    goes above its usable memory.

    Raises:
        FailedPrecondition: fewer than ``wanted`` can run it at all (its config
            puts instances on GPUs they do not have); the message says why.
        ResourceExhausted: fewer than ``wanted`` have room; the message names
            the need and the largest free space (GPU space for a GPU need).
    """
    able = [room for room in rooms if misfit(need, room.capacity) is None]
    if len(able) < wanted:
        raise FailedPrecondition(_cannot_run(rooms, need, wanted, len(able)))
    fitting = [room.server for room in able if not _short(room, need, headroom)]
    if len(fitting) >= wanted:
        return fitting[:wanted]
    short_on_gpu = any(memory != HOST for room in able for memory in _short(room, need, headroom))
    if short_on_gpu:
        per_gpu = max(
            size
            for room in able
            for memory, size in demand(need, room.capacity).items()
            if memory != HOST
        )
        spaces = [
            (free, f"GPU {gpu} of server {room.server!r}")
            for room in able
            for gpu, free in room.gpu_free(headroom)
            if free is not None
        ]
        largest = max(spaces, key=lambda space: space[0], default=(0, ""))
        raise ResourceExhausted(
            f"{wanted} copies need {per_gpu} bytes of GPU memory ({_mib(per_gpu)}) on each "
            f"GPU their instances run on but only {len(fitting)} server(s) have that much "
            f"free; the largest free GPU space is {largest[0]} bytes ({_mib(largest[0])})"
            + (f" ({largest[1]})" if largest[1] else "")
            + f" with {headroom:.0%} headroom kept; free GPU memory (unload or undeploy "
            "models), add GPUs, or ask for fewer replicas. Nothing was deployed."
        )
    host_need = max((demand(need, room.capacity).get(HOST, 0) for room in able), default=0)
    biggest = max(
        ((room.free_on(HOST, headroom) or 0, room.server) for room in able), default=(0, "")
    )
    where = f" (on server {biggest[1]!r})" if biggest[1] else ""
    raise ResourceExhausted(
        f"{wanted} copies need {host_need} bytes of model memory each ({_mib(host_need)}) "
        f"but only {len(fitting)} server(s) have that much free; the largest free space is "
        f"{biggest[0]} bytes ({_mib(biggest[0])}){where} with "
        f"{headroom:.0%} headroom kept; free memory (unload or undeploy models), "
        "add capacity, or ask for fewer replicas. Nothing was deployed."
    )


def _cannot_run(rooms: Sequence[Room], need: Wanted, wanted: int, able: int) -> str:
    if not any(room.capacity.gpu_count for room in rooms):
        return (
            "the model's config puts instances on GPUs (instance_group kind KIND_GPU) but "
            f"none of the {len(rooms)} server(s) it may go on records a GPU "
            "(capacity.gpu_count 0): register GPU servers with their GPUs (RegisterServer "
            "capacity.gpu_count and gpu_memory_bytes), or set instance_group kind KIND_CPU. "
            "Nothing was deployed."
        )
    reasons = "; ".join(
        f"server {room.server!r}: {reason}"
        for room in rooms
        if (reason := misfit(need, room.capacity)) is not None
    )
    return (
        f"{wanted} replica(s) wanted but only {able} of the {len(rooms)} server(s) it may go "
        f"on can run the model's instance groups ({reasons}); register servers with the "
        "GPUs it names, change its instance_group, or ask for fewer replicas. "
        "Nothing was deployed."
    )


def check_runs_on(server: str, capacity: Capacity, need: Wanted) -> None:
    """Nothing when a server with ``capacity`` can run ``need``.

    Raises:
        FailedPrecondition: its config puts instances on GPUs the server lacks.
    """
    reason = misfit(need, capacity)
    if reason is not None:
        raise FailedPrecondition(
            f"server {server!r} cannot run this deployment: {reason}. Register the server's "
            "GPUs (RegisterServer or UpdateServer capacity), name a server with GPUs, or "
            "set instance_group kind KIND_CPU. Nothing was deployed."
        )


def check_named(rooms: Sequence[Room], need: Wanted, headroom: float) -> None:
    """Nothing when each of ``rooms`` (servers named by the caller) can run ``need``
    and has room for it on each memory it uses without going above its usable
    memory.

    Raises:
        FailedPrecondition: a server cannot run it (``check_runs_on``).
        ResourceExhausted: naming the first server without room, the memory
            (host or GPU), the need there and that server's free space.
    """
    for room in rooms:
        check_runs_on(room.server, room.capacity, need)
        wanted = demand(need, room.capacity)
        for memory in _short(room, need, headroom):
            free = room.free_on(memory, headroom) or 0
            what = "model memory" if memory == HOST else f"memory on GPU {memory}"
            raise ResourceExhausted(
                f"server {room.server!r} has {free} bytes of {what} free "
                f"({_mib(free)}, {headroom:.0%} headroom kept) but this deployment needs "
                f"{wanted[memory]} bytes ({_mib(wanted[memory])}) there; free memory on it "
                "(unload or undeploy models), add capacity, or name another server. "
                "Nothing was deployed."
            )


def over_usable(capacity: Capacity, held: Wanted, headroom: float) -> tuple[int, int, int] | None:
    """(memory, bytes ``held`` puts there, its usable bytes) of the first memory of
    a server with ``capacity`` that ``held`` would fill above its usable size; None
    when every one has room."""
    for memory, size in sorted(demand(held, capacity).items()):
        usable = usable_on(capacity, memory, headroom)
        if usable is not None and size > usable:
            return memory, size, usable
    return None


def _mib(size: int) -> str:
    return f"{size / 1024**2:.1f} MiB"


@dataclass(frozen=True)
class Resident:
    """A model loaded on a server, as eviction sees it."""

    model: str
    size: int  # bytes it holds
    last_used: float  # when it last served (any monotonic clock)
    pinned: bool = False
    in_flight: int = 0  # requests it is answering now
    gpu: Mapping[int, int] = field(default_factory=dict)  # bytes it holds per GPU index

    def holds(self, memory: int) -> int:
        """Bytes it holds on ``memory`` (HOST or a GPU index)."""
        return self.size if memory == HOST else self.gpu.get(memory, 0)

    @classmethod
    def of(
        cls,
        model: str,
        need: Need,
        capacity: Capacity,
        last_used: float,
        *,
        pinned: bool = False,
        in_flight: int = 0,
    ) -> Resident:
        """``model``, with ``need``, loaded on a server with ``capacity``."""
        held = need.on(capacity)
        return cls(model, held.pop(HOST, 0), last_used, pinned, in_flight, held)


def least_recently_used(resident: Resident) -> tuple[float, str]:
    """Eviction order: the least recently used first (ties by name)."""
    return resident.last_used, resident.model


def evictions(
    resident: Sequence[Resident],
    free: int,
    need: int,
    order: Callable[[Resident], Any] = least_recently_used,
) -> list[str] | None:
    """The models to unload so that ``need`` bytes fit where ``free`` are free:
    first in ``order`` first (the least recently used), only unpinned ones with
    nothing in flight, and no more of them than it takes. [] when it fits
    already; None when even evicting every candidate would not make room.

    Taking candidates in order until enough is free, then putting back every
    one (last in order first) whose bytes are not needed after all, keeps the
    set minimal: no model in it can be spared. (Evicting everything to load one
    model is what ModelMesh users complain of.)
    """
    return evictions_on(resident, {HOST: free}, {HOST: need}, order)


def evictions_on(
    resident: Sequence[Resident],
    free: Mapping[int, int],
    need: Mapping[int, int],
    order: Callable[[Resident], Any] = least_recently_used,
) -> list[str] | None:
    """``evictions`` over several memories (HOST, GPU indices): the models to unload
    so that ``need[memory]`` fits in ``free[memory]`` on each memory (one absent
    from ``free`` has no stated limit). Only models holding bytes on a memory
    still short are taken, so a load on GPU 1 evicts only what frees GPU 1."""
    short = [memory for memory, size in need.items() if memory in free and size > free[memory]]
    if not short:
        return []
    freed = {memory: free[memory] for memory in short}

    def lacking() -> list[int]:
        return [memory for memory in short if freed[memory] < need[memory]]

    candidates = sorted((r for r in resident if not r.pinned and r.in_flight == 0), key=order)
    chosen: list[Resident] = []
    for candidate in candidates:
        still = lacking()
        if not still:
            break
        if not any(candidate.holds(memory) for memory in still):
            continue  # unloading it frees nothing that is short
        chosen.append(candidate)
        for memory in short:
            freed[memory] += candidate.holds(memory)
    if lacking():
        return None
    for candidate in reversed(list(chosen)):
        if all(freed[m] - candidate.holds(m) >= need[m] for m in short):
            chosen.remove(candidate)
            for memory in short:
                freed[memory] -= candidate.holds(memory)
    return [r.model for r in chosen]


@dataclass(frozen=True)
class Host:
    """A server as an on-demand load sees it: its capacity and what it holds now."""

    server: str
    capacity: Capacity
    resident: Sequence[Resident]

    @property
    def used(self) -> int:
        return sum(r.size for r in self.resident)

    def used_on(self, memory: int) -> int:
        return sum(r.holds(memory) for r in self.resident)


@dataclass(frozen=True)
class LoadPlan:
    """Where an on-demand load goes, and what must be unloaded there first."""

    server: str
    evict: tuple[str, ...] = ()


def plan_load(
    hosts: Sequence[Host],
    need: Wanted,
    headroom: float,
    order: Callable[[Resident], Any] = least_recently_used,
) -> LoadPlan:
    """Where to load ``need``: the host with the most free memory (on the memory it
    is tightest on) if one has room; else the host where the fewest evictions
    (then the fewest bytes evicted) make room on every memory it uses, evicting
    in ``order`` only models that free those memories (``evictions_on``).
    Hosts that cannot run it (``misfit``) are passed over.

    Raises:
        ResourceExhausted: no host can make room, even evicting every model
            that is neither pinned nor busy.
    """
    best: tuple[tuple[int, int, int], LoadPlan] | None = None
    for position, host in enumerate(hosts):
        if misfit(need, host.capacity) is not None:
            continue
        wanted = demand(need, host.capacity)
        free = {
            memory: space
            for memory in wanted
            if (space := free_on(host.capacity, memory, host.used_on(memory), headroom)) is not None
        }
        if not free:
            return LoadPlan(host.server)  # no stated limit on what it uses
        evicted = evictions_on(host.resident, free, wanted, order)
        if evicted is None:
            continue
        held = {r.model: r for r in host.resident}
        freed = sum(held[m].holds(memory) for m in evicted for memory in free)
        rank = (len(evicted), freed - min(free.values()), position)
        if best is None or rank < best[0]:
            best = (rank, LoadPlan(host.server, tuple(evicted)))
    if best is None:
        raise ResourceExhausted(_no_room_to_load(hosts, need, headroom))
    return best[1]


def _no_room_to_load(hosts: Sequence[Host], need: Wanted, headroom: float) -> str:
    able = [h for h in hosts if misfit(need, h.capacity) is None]
    on_gpu = [
        (memory, size)
        for h in able
        for memory, size in demand(need, h.capacity).items()
        if memory != HOST
    ]
    if on_gpu or (not able and any(n.on_gpus for n in needs_of(need))):
        per_gpu = max((size for _, size in on_gpu), default=max(n.bytes for n in needs_of(need)))
        largest = max(
            (
                free_on(h.capacity, gpu, h.used_on(gpu), headroom) or 0
                for h in able
                for gpu in range(h.capacity.gpu_count)
            ),
            default=0,
        )
        return (
            f"loading needs {per_gpu} bytes of GPU memory ({_mib(per_gpu)}) on each GPU it "
            f"runs on but no server with those GPUs can free that much by unloading idle, "
            f"unpinned models; the largest free GPU space is {largest} bytes "
            f"({_mib(largest)}). Add GPUs, unpin models, or undeploy some."
        )
    host_need = sum(n.bytes for n in needs_of(need))
    largest = max((free_bytes(h.capacity, h.used, headroom) or 0 for h in able), default=0)
    return (
        f"loading needs {host_need} bytes ({_mib(host_need)}) but no server can free that "
        f"much by unloading idle, unpinned models; the largest free space is {largest} bytes "
        f"({_mib(largest)}). Add capacity, unpin models, or undeploy some."
    )


@dataclass(frozen=True)
class QueueGrowth:
    """What one loaded copy's Triton statistics grew by over one health round."""

    requests: int  # successful inferences
    queue_ns: int  # nanoseconds they waited in Triton's queue, summed

    def mean_queue_ns(self) -> float:
        return self.queue_ns / self.requests if self.requests else 0.0


def scale_up_to(
    loaded: Mapping[str, QueueGrowth],
    rooms: Sequence[Room],
    need: Wanted,
    allowed: int,
    threshold_ns: float,
    headroom: float,
) -> str | None:
    """The server to load one more copy of a hot on-demand model on, or None.

    One more copy is wanted when the model is loaded somewhere, on fewer than
    ``allowed`` servers, and on *every* loaded copy (``loaded``: server -> its
    growth this round) the mean queue time per request over the round is above
    ``threshold_ns``: a copy with no traffic, or a short queue, can take more.
    It goes on the server of ``rooms`` (those that may hold it, none loaded
    with it) with the most free memory, if that one has room for ``need``
    (``choose``); never evicting for it. At most one server per call: a
    deployment gains at most one copy per round.
    """
    if not loaded or len(loaded) >= allowed or threshold_ns <= 0:
        return None
    if any(growth.mean_queue_ns() <= threshold_ns for growth in loaded.values()):
        return None
    spare = [
        room for room in rooms if room.server not in loaded and misfit(need, room.capacity) is None
    ]
    # Most free first; a server whose capacity is not stated has no limit.
    spare.sort(key=lambda room: -_free_or_unlimited(room, need, headroom))
    try:
        chosen = choose(spare[:1], need, 1, headroom)
    except ResourceExhausted:
        return None  # no room without evicting: the copies it has keep serving
    return chosen[0]


def _free_or_unlimited(room: Room, need: Wanted, headroom: float) -> float:
    """The free space of the memory of ``room`` that ``need`` is tightest on."""
    spaces = [room.free_on(memory, headroom) for memory in demand(need, room.capacity)]
    return min((math.inf if free is None else free for free in spaces), default=math.inf)
