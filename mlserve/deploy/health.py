"""The health loop: every interval, look at every server, then run the after-round hooks.

It only observes. Each round checks every registered server (one check per
server at a time) and waits for those checks at most one interval; a server
slower than that finishes in the background and is seen by a later round.
What a check sees goes to the reconciler's queue (``deploy/reconciler.py``)
without waiting, so a slow model load never makes a round late. After the
checks, the hooks run (MLServe's gRPC health status, flushing inference
statistics, reloading routes changed by other replicas), each on its own so
that one failing does not skip the others.

Rounds start on a fixed beat (``interval`` after the previous start); a round
that overran skips the beats it missed rather than running back to back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from mlserve.deploy.fleet import Fleet

__all__ = ["HealthLoop"]

log = logging.getLogger(__name__)

Hook = Callable[[], Awaitable[None]]


class HealthLoop:
    """Checks ``fleet`` every ``interval`` seconds and then calls ``hooks`` in order."""

    def __init__(self, fleet: Fleet, interval: float, hooks: Sequence[Hook] = ()) -> None:
        self.fleet = fleet
        self.interval = interval
        self.hooks = tuple(hooks)

    async def run(self) -> None:
        """Run rounds until cancelled; the first starts one interval from now."""
        loop = asyncio.get_running_loop()
        beat = loop.time()
        while True:
            beat += self.interval
            now = loop.time()
            if now > beat:
                beat += (now - beat) // self.interval * self.interval + self.interval
            await asyncio.sleep(beat - now)
            await self.round()

    async def round(self) -> None:
        """One round: check every server (waiting at most one interval), then the hooks."""
        try:
            await self.fleet.refresh_all(timeout=self.interval)
        except Exception:
            log.exception("health round: listing the servers failed")
        for hook in self.hooks:
            try:
                await hook()
            except Exception:
                log.exception("health round: %s failed", getattr(hook, "__qualname__", hook))
