"""SingleFlight: concurrent callers of one lookup share a single run of it."""

from __future__ import annotations

import asyncio

import pytest

from mlserve.core.aio import SingleFlight


def test_concurrent_callers_share_one_lookup_and_later_ones_start_another() -> None:
    runs = 0

    async def lookup() -> int:
        nonlocal runs
        runs += 1
        await asyncio.sleep(0.01)
        return runs

    async def scenario() -> None:
        flight: SingleFlight[str, int] = SingleFlight()
        answers = await asyncio.gather(*(flight.run("key", lookup) for _ in range(16)))
        assert answers == [1] * 16
        assert await flight.run("key", lookup) == 2  # the first run has finished
        assert await flight.run("other", lookup) == 3

    asyncio.run(scenario())


def test_a_caller_that_gives_up_does_not_cancel_the_others() -> None:
    async def lookup() -> str:
        await asyncio.sleep(0.05)
        return "row"

    async def scenario() -> None:
        flight: SingleFlight[str, str] = SingleFlight()
        impatient = asyncio.create_task(flight.run("key", lookup))
        patient = asyncio.create_task(flight.run("key", lookup))
        await asyncio.sleep(0.01)
        impatient.cancel()
        assert await patient == "row"
        with pytest.raises(asyncio.CancelledError):
            await impatient

    asyncio.run(scenario())


def test_every_waiter_sees_the_lookups_error() -> None:
    async def lookup() -> str:
        await asyncio.sleep(0.01)
        raise LookupError("no such key")

    async def scenario() -> None:
        flight: SingleFlight[str, str] = SingleFlight()
        outcomes = await asyncio.gather(
            *(flight.run("key", lookup) for _ in range(3)), return_exceptions=True
        )
        assert all(isinstance(outcome, LookupError) for outcome in outcomes)

    asyncio.run(scenario())
