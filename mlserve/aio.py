"""Running blocking work (the database, file I/O, hashing) off the event loop."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from mlserve import store

P = ParamSpec("P")
R = TypeVar("R")


def in_thread(function: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """Make a blocking function awaitable by running it in the default executor.

    It runs through ``store.run``: with one pooled database connection for
    the call, and a lost database raised as ``errors.Unavailable``.
    """

    @functools.wraps(function)
    async def run(*args: P.args, **kwargs: P.kwargs) -> R:
        return await asyncio.to_thread(functools.partial(store.run, function, *args, **kwargs))

    return run
