"""Running blocking work (the database, file I/O, hashing) off the event loop."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Generic, ParamSpec, TypeVar

from mlserve import store

P = ParamSpec("P")
R = TypeVar("R")
K = TypeVar("K")


def in_thread(function: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """Make a blocking function awaitable by running it in the default executor.

    It runs through ``store.run``: with one pooled database connection for
    the call, and a lost database raised as ``errors.Unavailable``.
    """

    @functools.wraps(function)
    async def run(*args: P.args, **kwargs: P.kwargs) -> R:
        return await asyncio.to_thread(functools.partial(store.run, function, *args, **kwargs))

    return run


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
