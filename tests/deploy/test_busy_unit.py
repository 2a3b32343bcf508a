"""Busy marks on a real store: what one process has in flight, every process reads;
a request writes at most one mark per model per mark lifetime; the refresher renews
only what is still in flight; a crashed process's marks expire."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Iterable

import peewee as pw

from mlserve.core.errors import Unavailable
from mlserve.deploy import busy
from mlserve.deploy.busy import ANY_SERVER, BusyMarks, busy_marks, is_busy
from mlserve.storage import db, tables


class CountingMarks(BusyMarks):
    """BusyMarks that count their database writes (one per publish), or fail them."""

    def __init__(self, process: str, *, unreachable: bool = False) -> None:
        super().__init__(process)
        self.writes: list[list[tuple[str, str]]] = []
        self.unreachable = unreachable  # every write fails as a lost database does

    def _publish(
        self,
        keys: Iterable[tuple[str, str]],
        cleared: Iterable[tuple[str, str]] = (),
        purge: bool = False,
    ) -> None:
        keys = list(keys)
        self.writes.append(keys)
        if self.unreachable:
            raise Unavailable("the database cannot be reached")
        super()._publish(keys, cleared, purge)


def expiry(process: str, server: str, model: str) -> dt.datetime:
    row = tables.BusyMark.get(
        (tables.BusyMark.process == process)
        & (tables.BusyMark.server == server)
        & (tables.BusyMark.model == model)
    )
    value: dt.datetime = row.expire_time
    return value


def test_what_one_process_has_in_flight_another_reads(store_db: pw.Database) -> None:
    first, second = BusyMarks("first"), BusyMarks("second")

    async def scenario() -> list[set[tuple[str, str]]]:
        async with first.holding("s", "m"):
            seen = await second.busy(["s"])
        return [seen, await second.busy(["other-server"]), await first.busy(["s"])]

    seen, elsewhere, by_itself = asyncio.run(scenario())
    assert is_busy(seen, "s", "m")
    assert not is_busy(elsewhere, "other-server", "m")
    # Ended: its mark holds until cleared, for the other processes; the process
    # itself goes by its exact count.
    assert ("s", "m") in busy_marks(["s"])
    assert not is_busy(by_itself, "s", "m")


def test_a_mark_on_any_server_makes_the_model_busy_on_every_server(
    store_db: pw.Database,
) -> None:
    waiting = BusyMarks("waiting")
    asyncio.run(waiting.enter(ANY_SERVER, "m"))
    found = busy_marks(["s1"])
    assert is_busy(found, "s1", "m")
    assert is_busy(found, "s2", "m")
    assert not is_busy(found, "s1", "other")


def test_requests_write_one_mark_per_model_until_it_needs_renewing(
    store_db: pw.Database,
) -> None:
    marks = CountingMarks("p")

    async def scenario() -> None:
        for _ in range(50):
            await marks.enter("s", "m")
            marks.leave("s", "m")
        await marks.enter("s", "other")
        marks.leave("s", "other")

    asyncio.run(scenario())
    assert marks.writes == [[("s", "m")], [("s", "other")]]


def test_the_refresher_renews_only_what_is_in_flight(store_db: pw.Database) -> None:
    marks = CountingMarks("p")

    async def scenario() -> None:
        await marks.enter("s", "long")  # stays in flight
        await marks.enter("s", "short")
        marks.leave("s", "short")
        # As if a mark lifetime went by: both marks are due for renewal.
        marks._trusted_until = dict.fromkeys(marks._trusted_until, 0.0)
        await marks.refresh()

    asyncio.run(scenario())
    assert marks.writes[-1] == [("s", "long")]
    assert expiry("p", "s", "long") >= expiry("p", "s", "short")
    # Nothing in flight and nothing due: the refresher writes nothing.
    marks.leave("s", "long")
    writes = len(marks.writes)
    asyncio.run(marks.refresh())
    assert len(marks.writes) == writes


def test_a_mark_is_cleared_once_its_model_stays_quiet(store_db: pw.Database) -> None:
    marks = BusyMarks("p")

    async def scenario() -> None:
        async with marks.holding("s", "m"):
            pass
        await marks.refresh()  # just ended: kept (a burst may follow)
        assert ("s", "m") in busy_marks(["s"])
        marks._ended_at[("s", "m")] -= busy.REFRESH_INTERVAL  # as if quiet since
        await marks.refresh()
        assert ("s", "m") not in busy_marks(["s"])
        # The next request publishes its mark anew.
        async with marks.holding("s", "m"):
            assert ("s", "m") in busy_marks(["s"])

    asyncio.run(scenario())


def test_a_crashed_process_marks_expire(store_db: pw.Database) -> None:
    past = db.utcnow() - dt.timedelta(seconds=1)
    tables.BusyMark.create(process="gone", server="s", model="m", expire_time=past)
    assert busy_marks(["s"]) == set()
    # The next refresher to purge deletes it once long expired.
    long_ago = db.utcnow() - dt.timedelta(seconds=busy.MARK_LIFETIME * 10)
    tables.BusyMark.update(expire_time=long_ago).execute()
    marks = BusyMarks("p")
    marks._purged_at -= 3600  # its purge is due
    asyncio.run(marks.refresh())
    assert tables.BusyMark.select().count() == 0


def test_an_unreachable_database_does_not_fail_the_request(store_db: pw.Database) -> None:
    marks = CountingMarks("p", unreachable=True)
    asyncio.run(marks.enter("s", "m"))  # logged, not raised
    # Still counted here: this process's own evictor sees it.
    assert marks.local() == {("s", "m")}
    assert is_busy(asyncio.run(marks.busy(["s"])), "s", "m")


def test_after_a_failed_write_requests_leave_the_retry_to_the_refresher(
    store_db: pw.Database,
) -> None:
    # A database that fails must not put a write (and its timeout) in front of
    # every request: the next try is the refresher's.
    marks = CountingMarks("p", unreachable=True)

    async def scenario() -> None:
        for _ in range(5):
            await marks.enter("s", "m")

    asyncio.run(scenario())
    assert len(marks.writes) == 1
    marks.unreachable = False
    asyncio.run(marks.refresh())  # the refresher tries again, and now it lands
    assert marks.writes[-1] == [("s", "m")]
    assert ("s", "m") in busy_marks(["s"])


def test_a_request_cancelled_while_its_mark_is_written_is_counted_out(
    store_db: pw.Database,
) -> None:
    marks = BusyMarks("p")

    async def scenario() -> None:
        async with marks._writing:  # a refresh is writing: the request waits on it
            entering = asyncio.create_task(marks.enter("s", "m"))
            await asyncio.sleep(0)
            assert marks.local() == {("s", "m")}
            entering.cancel()  # the client's deadline, say
            with contextlib.suppress(asyncio.CancelledError):
                await entering

    asyncio.run(scenario())
    assert marks.local() == set()  # not in flight for ever: its model may go


def test_a_stopping_process_withdraws_its_marks(store_db: pw.Database) -> None:
    stopping, other = BusyMarks("stopping"), BusyMarks("other")

    async def scenario() -> None:
        await stopping.enter("s", "m")
        await other.enter("s", "n")
        await stopping.withdraw()

    asyncio.run(scenario())
    assert busy_marks(["s"]) == {("s", "n")}
