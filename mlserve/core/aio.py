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


class Freshest(Generic[R]):
    """A value read from the store again and again by reads that may overlap: a
    health round's reload and the one right after a change, say. A read that began
    earlier saw older rows; it never replaces what a later read, or a write of this
    process's own, already put in place (before, whichever ended last won, so a
    change could vanish from memory until the next round).
    """

    def __init__(self, value: R) -> None:
        self.value = value
        self._begun = 0  # reads and writes begun, in order
        self._held = 0  # which of them ``value`` comes from

    async def read(self, load: Callable[[], Awaitable[R]]) -> R:
        """Run ``load`` and keep what it read unless something begun later is in
        place; returns the value in place afterwards."""
        self._begun += 1
        mine = self._begun
        loaded = await load()
        if mine > self._held:
            self.value, self._held = loaded, mine
        return self.value

    def write(self, value: R) -> None:
        """Put ``value`` in place now, once it is stored: reads begun before read the
        store without it, so they are kept out."""
        self._begun += 1
        self.value, self._held = value, self._begun


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
