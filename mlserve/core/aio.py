"""asyncio helpers that know nothing of MLServe's domain."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

R = TypeVar("R")
K = TypeVar("K")


class SingleFlight(Generic[K, R]):
    """Concurrent callers that need the same lookup share one run of it.

    The gateway's caches expire every second; without this, every request
    in flight at that moment would read the same row again on its own.
    """

    def __init__(self) -> None:
        self._running: dict[K, asyncio.Future[R]] = {}

    async def run(self, key: K, lookup: Callable[[], Awaitable[R]]) -> R:
        running = self._running.get(key)
        if running is None:
            running = asyncio.ensure_future(lookup())
            self._running[key] = running
            running.add_done_callback(lambda _: self._running.pop(key, None))
        # A caller that gives up must not cancel the lookup the others wait on.
        return await asyncio.shield(running)


@dataclass(frozen=True)
class Backoff:
    """Delays that double from ``initial`` up to ``cap`` seconds: retry soon, then rarely."""

    initial: float
    cap: float

    def delay(self, failures: int) -> float:
        """Seconds to wait before the next try after ``failures`` failures in a row (>= 1)."""
        # Past 2**64 the float would only overflow; the cap was reached long before.
        doublings = min(max(failures, 1) - 1, 64)
        return min(self.initial * 2.0**doublings, self.cap)
