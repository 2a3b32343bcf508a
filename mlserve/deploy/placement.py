"""Placement by memory, as pure functions of what the fleet has and holds.

Nothing here reads the store or talks to a Triton: ``targets.Placer`` gives
these functions the servers' capacities, what their deployments need and the
model versions' needs, and the placement simulation (``bench/placement.py``)
gives them a scripted fleet. So the decisions are unit-tested and benched as
they run.

Memory counted is host memory (``Capacity.host_memory_bytes``): the bundled
backends run models on the CPU. GPUs are recorded and shown, not placed on.
A server whose capacity is not stated (0) is never refused for memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mlserve.core.errors import InvalidArgument, ResourceExhausted

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


@dataclass(frozen=True)
class Room:
    """One candidate server as placement sees it."""

    server: str
    capacity: Capacity
    used: int  # bytes its deployments need already


def choose(rooms: Sequence[Room], need: int, wanted: int, headroom: float) -> list[str]:
    """The first ``wanted`` of ``rooms`` (in the caller's order of preference) with
    room for ``need`` more bytes, so that none goes above its usable memory.

    Raises:
        ResourceExhausted: fewer than ``wanted`` have room; the message names
            the need and the largest free space.
    """
    fitting = [
        room.server
        for room in rooms
        if (free := free_bytes(room.capacity, room.used, headroom)) is None or free >= need
    ]
    if len(fitting) >= wanted:
        return fitting[:wanted]
    largest = max(
        ((free_bytes(room.capacity, room.used, headroom) or 0, room.server) for room in rooms),
        default=(0, ""),
    )
    where = f" (on server {largest[1]!r})" if largest[1] else ""
    raise ResourceExhausted(
        f"{wanted} copies need {need} bytes of model memory each ({_mib(need)}) but only "
        f"{len(fitting)} server(s) have that much free; the largest free space is "
        f"{largest[0]} bytes ({_mib(largest[0])}){where} with "
        f"{headroom:.0%} headroom kept; free memory (unload or undeploy models), "
        "add capacity, or ask for fewer replicas. Nothing was deployed."
    )


def check_named(rooms: Sequence[Room], need: int, headroom: float) -> None:
    """Nothing when each of ``rooms`` (servers named by the caller) has room for
    ``need`` more bytes without going above its usable memory.

    Raises:
        ResourceExhausted: naming the first server without room, the need and
            that server's free space.
    """
    for room in rooms:
        free = free_bytes(room.capacity, room.used, headroom)
        if free is not None and free < need:
            raise ResourceExhausted(
                f"server {room.server!r} has {free} bytes of model memory free "
                f"({_mib(free)}, {headroom:.0%} headroom kept) but this deployment needs "
                f"{need} bytes ({_mib(need)}) there; free memory on it (unload or undeploy "
                "models), add capacity, or name another server. Nothing was deployed."
            )


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
    if need <= free:
        return []
    candidates = sorted((r for r in resident if not r.pinned and r.in_flight == 0), key=order)
    chosen: list[Resident] = []
    freed = free
    for candidate in candidates:
        if freed >= need:
            break
        chosen.append(candidate)
        freed += candidate.size
    if freed < need:
        return None
    for candidate in reversed(list(chosen)):
        if freed - candidate.size >= need:
            chosen.remove(candidate)
            freed -= candidate.size
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


@dataclass(frozen=True)
class LoadPlan:
    """Where an on-demand load goes, and what must be unloaded there first."""

    server: str
    evict: tuple[str, ...] = ()


def plan_load(
    hosts: Sequence[Host],
    need: int,
    headroom: float,
    order: Callable[[Resident], Any] = least_recently_used,
) -> LoadPlan:
    """Where to load ``need`` bytes: the host with the most free memory if one has
    room; else the host where the fewest evictions (then the fewest bytes
    evicted) make room, evicting in ``order`` (``evictions``).

    Raises:
        ResourceExhausted: no host can make room, even evicting every model
            that is neither pinned nor busy.
    """
    best: tuple[tuple[int, int, int], LoadPlan] | None = None
    for position, host in enumerate(hosts):
        free = free_bytes(host.capacity, host.used, headroom)
        if free is None:
            return LoadPlan(host.server)  # no stated limit
        evicted = evictions(host.resident, free, need, order)
        if evicted is None:
            continue
        sizes = {r.model: r.size for r in host.resident}
        rank = (len(evicted), sum(sizes[m] for m in evicted) - free, position)
        if best is None or rank < best[0]:
            best = (rank, LoadPlan(host.server, tuple(evicted)))
    if best is None:
        largest = max((free_bytes(h.capacity, h.used, headroom) or 0 for h in hosts), default=0)
        raise ResourceExhausted(
            f"loading needs {need} bytes ({_mib(need)}) but no server can free that much "
            f"by unloading idle, unpinned models; the largest free space is {largest} bytes "
            f"({_mib(largest)}). Add capacity, unpin models, or undeploy some."
        )
    return best[1]


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
    need: int,
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
    spare = [room for room in rooms if room.server not in loaded]
    # Most free first; a server whose capacity is not stated has no limit.
    spare.sort(key=lambda room: -_free_or_unlimited(room, headroom))
    try:
        chosen = choose(spare[:1], need, 1, headroom)
    except ResourceExhausted:
        return None  # no room without evicting: the copies it has keep serving
    return chosen[0]


def _free_or_unlimited(room: Room, headroom: float) -> float:
    free = free_bytes(room.capacity, room.used, headroom)
    return math.inf if free is None else free
