"""How a deployment is loaded: eagerly everywhere, or on demand (lazy loading).

An on-demand deployment is recorded on its servers but loaded only on
``min_copies`` of them at once; the others are COLD until an inference needs
it (``Deployments.warm``: one load however many requests arrive). To make room
for such a load MLServe evicts the least recently used on-demand models on
one server (``placement.plan_load``), and copies idle for
``idle_unload_after`` seconds are unloaded down to ``min_copies``. A pinned
deployment, and every eager one, is never evicted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mlserve.core.errors import InvalidArgument

EAGER = "eager"
ON_DEMAND = "on_demand"
MODES = (EAGER, ON_DEMAND)


@dataclass(frozen=True)
class Loading:
    """When a deployment is loaded, and, on demand, its limits."""

    mode: str = EAGER
    min_copies: int = 0  # on demand: loaded at create, never evicted nor unloaded when idle
    max_copies: int = 0  # on demand: at most this many servers hold it; 0: all of its servers
    idle_unload_after: float = 0.0  # on demand: seconds unused before a copy goes; 0: never
    pinned: bool = False

    @property
    def on_demand(self) -> bool:
        return self.mode == ON_DEMAND

    def checked(self) -> Loading:
        """This loading, or InvalidArgument naming the field that is wrong."""
        if self.mode not in MODES:
            raise InvalidArgument(f"loading must be eager or on_demand, got {self.mode!r}")
        for field, value in (("min_copies", self.min_copies), ("max_copies", self.max_copies)):
            if value < 0:
                raise InvalidArgument(f"{field} must not be negative, got {value}")
        if not math.isfinite(self.idle_unload_after) or self.idle_unload_after < 0:
            raise InvalidArgument(
                "idle_unload_after_seconds must be 0 (never) or a number of seconds above 0"
            )
        if not self.on_demand and (self.min_copies or self.max_copies or self.idle_unload_after):
            raise InvalidArgument(
                "min_copies, max_copies and idle_unload_after_seconds are for on-demand "
                "deployments: set loading to on_demand, or leave them 0"
            )
        if self.max_copies and self.min_copies > self.max_copies:
            raise InvalidArgument(
                f"min_copies ({self.min_copies}) must not exceed max_copies ({self.max_copies})"
            )
        return self

    def warm_positions(self, servers: int) -> int:
        """How many of a deployment's first ``servers`` targets are loaded and kept
        loaded: all when eager, ``min_copies`` on demand."""
        return servers if not self.on_demand else min(self.min_copies, servers)

    def copies_allowed(self, servers: int) -> int:
        """How many of ``servers`` targets may hold it at once."""
        return min(self.max_copies or servers, servers)

    def evictable(self, position: int) -> bool:
        """Whether its copy on its target at ``position`` may be evicted or idled out."""
        return self.on_demand and not self.pinned and position >= self.min_copies
