"""Running asyncio scenarios in unit tests: bounded, with loops in the background."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(scenario: Callable[[], Awaitable[T]], bound: float = 30.0) -> T:
    """``asyncio.run`` the scenario; one that hangs fails after ``bound`` seconds.

    Not a timing assertion: only a scenario that would never end trips it.
    """

    async def bounded() -> T:
        return await asyncio.wait_for(scenario(), timeout=bound)

    return asyncio.run(bounded())


@contextlib.asynccontextmanager
async def running(loop: Coroutine[Any, Any, None]) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``loop`` (a coroutine that runs until cancelled) in a task for the block.

    On the way out the task is cancelled and must end by that cancellation,
    not by an error of its own.
    """
    task = asyncio.create_task(loop)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert task.cancelled(), "the loop ended on its own instead of being cancelled"
