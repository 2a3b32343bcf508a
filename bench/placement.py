"""Placement by memory, simulated: MLServe's own placement code on a scripted fleet.

No sockets and no Triton: 200 models of mixed sizes (log-uniform from 32 MiB
to 3 GiB, a fixed seed) on 3 servers of 16 GiB each, and a request trace
whose model popularity follows Zipf's law (s = 1.0; popularity is shuffled
against size). Every request for a model no server holds is an on-demand
load placed by ``mlserve.deploy.placement.plan_load``, which evicts on one
server the least recently used models, no more than it takes
(``placement.evictions``). Side by side on the same trace, the same code with
a clairvoyant eviction order (Belady: the model needed again furthest in the
future goes first) gives the reference. With models of different sizes
Belady's rule is the classic clairvoyant reference rather than a proven
minimum (the exact minimum is NP-hard), so "vs Belady" is a ratio to it.

After every step each server's resident bytes are checked against its
capacity less the headroom: the report says whether it was ever exceeded.
"""

from __future__ import annotations

import bisect
import math
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.common import Report, Table
from mlserve.deploy.placement import (
    DEFAULT_HEADROOM,
    Capacity,
    Host,
    Resident,
    least_recently_used,
    plan_load,
    usable_bytes,
)

MODELS = 200
SERVERS = 3
SERVER_MEMORY = 16 * 1024**3
REQUESTS = 50_000
ZIPF_S = 1.0
SEED = 16
MIB = 1024**2


@dataclass
class Outcome:
    policy: str
    hits: int = 0
    loads: int = 0
    evictions: int = 0
    evicted_bytes: int = 0
    peak_fill: float = 0.0  # the highest resident / usable seen on any server
    over_capacity: int = 0  # steps where some server was above capacity less headroom


@dataclass
class _Server:
    name: str
    capacity: Capacity
    resident: dict[str, Resident] = field(default_factory=dict)


def sizes(count: int, rng: random.Random) -> list[int]:
    """Model sizes, log-uniform from 32 MiB to 3 GiB."""
    low, high = math.log(32 * MIB), math.log(3 * 1024 * MIB)
    return [int(math.exp(rng.uniform(low, high))) for _ in range(count)]


def zipf_trace(count: int, length: int, s: float, rng: random.Random) -> list[int]:
    """``length`` model indices, the model of popularity rank r drawn with weight 1/r^s;
    ranks are shuffled so that popularity says nothing of size."""
    ranks = list(range(count))
    rng.shuffle(ranks)
    weights = [1.0 / (rank + 1) ** s for rank in range(count)]
    return [ranks[i] for i in rng.choices(range(count), weights=weights, k=length)]


def next_uses(trace: Sequence[int]) -> dict[int, list[int]]:
    """Per model, the positions in ``trace`` where it is asked for, in order."""
    positions: defaultdict[int, list[int]] = defaultdict(list)
    for position, model in enumerate(trace):
        positions[model].append(position)
    return positions


def simulate(
    policy: str,
    trace: Sequence[int],
    model_sizes: Sequence[int],
    order_for: Callable[[int], Callable[[Resident], Any]],
    headroom: float = DEFAULT_HEADROOM,
) -> Outcome:
    """Serve ``trace`` on the scripted fleet; ``order_for(step)`` is the eviction order."""
    servers = [_Server(f"s{n}", Capacity(host_memory_bytes=SERVER_MEMORY)) for n in range(SERVERS)]
    where: dict[int, _Server] = {}
    outcome = Outcome(policy)
    for step, model in enumerate(trace):
        name = f"m{model}"
        server = where.get(model)
        if server is not None:
            outcome.hits += 1
        else:
            hosts = [Host(s.name, s.capacity, list(s.resident.values())) for s in servers]
            plan = plan_load(hosts, model_sizes[model], headroom, order_for(step))
            server = next(s for s in servers if s.name == plan.server)
            for evicted in plan.evict:
                outcome.evicted_bytes += server.resident.pop(evicted).size
                del where[int(evicted[1:])]
            outcome.evictions += len(plan.evict)
            outcome.loads += 1
            where[model] = server
        server.resident[name] = Resident(name, model_sizes[model], float(step))
        for each in servers:
            usable = usable_bytes(each.capacity, headroom) or 1
            fill = sum(r.size for r in each.resident.values()) / usable
            outcome.peak_fill = max(outcome.peak_fill, fill)
            outcome.over_capacity += fill > 1.0
    return outcome


def run(requests: int = REQUESTS) -> Report:
    rng = random.Random(SEED)
    model_sizes = sizes(MODELS, rng)
    trace = zipf_trace(MODELS, requests, ZIPF_S, rng)
    uses = next_uses(trace)

    def lru(step: int) -> Callable[[Resident], Any]:
        return least_recently_used

    def belady(step: int) -> Callable[[Resident], Any]:
        def furthest_first(resident: Resident) -> tuple[float, str]:
            positions = uses[int(resident.model[1:])]
            later = bisect.bisect_right(positions, step)
            upcoming = positions[later] if later < len(positions) else math.inf
            return -upcoming, resident.model

        return furthest_first

    results = [simulate("LRU (MLServe)", trace, model_sizes, lru)]
    results.append(simulate("Belady (clairvoyant)", trace, model_sizes, belady))
    reference = results[1]
    rows = [
        [
            r.policy,
            f"{r.hits / len(trace):.1%}",
            str(r.loads),
            str(r.evictions),
            f"{r.evicted_bytes / 1024**3:.0f} GiB",
            f"{r.evictions / max(reference.evictions, 1):.2f}",
            f"{r.peak_fill:.1%}",
            str(r.over_capacity),
        ]
        for r in results
    ]
    total = sum(model_sizes)
    return Report(
        "placement: on-demand loads and LRU eviction, simulated (real placement code)",
        [
            Table(
                [
                    *("policy", "hit rate", "loads", "evictions", "evicted"),
                    *("evictions vs Belady", "peak fill of usable", "steps over capacity"),
                ],
                rows,
            )
        ],
        [
            f"{MODELS} models, {total / 1024**3:.0f} GiB in all (32 MiB to 3 GiB, log-uniform); "
            f"{SERVERS} servers of {SERVER_MEMORY / 1024**3:.0f} GiB, "
            f"{DEFAULT_HEADROOM:.0%} headroom kept; {len(trace)} requests, Zipf s={ZIPF_S}, "
            f"seed {SEED}",
            "the first load of each model is a compulsory miss for both policies",
        ],
    )
