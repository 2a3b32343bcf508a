"""Freshest: overlapping reads of one value from the store, on a script that decides
when each read ends (no clock)."""

from __future__ import annotations

import asyncio

from mlserve.core.aio import Freshest
from tests.support.aio import run


async def _finish(read: asyncio.Task[str], gate: asyncio.Event) -> str:
    gate.set()
    return await read


def test_a_read_begun_earlier_never_replaces_a_later_one() -> None:
    async def scenario() -> None:
        value: Freshest[str] = Freshest("empty")
        gates = {name: asyncio.Event() for name in ("older", "newer")}

        async def load(name: str) -> str:
            await gates[name].wait()
            return name

        older = asyncio.create_task(value.read(lambda: load("older")))
        await asyncio.sleep(0)  # older has begun
        newer = asyncio.create_task(value.read(lambda: load("newer")))
        await asyncio.sleep(0)
        assert await _finish(newer, gates["newer"]) == "newer"
        # The older read ends last: what it read is stale and is not kept.
        assert await _finish(older, gates["older"]) == "newer"
        assert value.value == "newer"

    run(scenario)


def test_reads_that_end_in_order_each_put_theirs_in_place() -> None:
    async def scenario() -> None:
        value: Freshest[int] = Freshest(0)
        for n in (1, 2, 3):
            assert await value.read(lambda n=n: asyncio.sleep(0, result=n)) == n
        assert value.value == 3

    run(scenario)


def test_a_read_begun_before_a_write_does_not_undo_it() -> None:
    async def scenario() -> None:
        value: Freshest[str] = Freshest("stored before")
        gate = asyncio.Event()

        async def load() -> str:
            await gate.wait()
            return "read before the write was stored"

        read = asyncio.create_task(value.read(load))
        await asyncio.sleep(0)
        value.write("written")
        assert await _finish(read, gate) == "written"
        # A read begun after the write is newer than it, and is kept.
        assert await value.read(lambda: asyncio.sleep(0, result="read later")) == "read later"

    run(scenario)
