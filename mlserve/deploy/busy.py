"""Requests in flight, shared by every MLServe process on one database.

Eviction and idle unloading must never take a model away while a request is
being answered by it, whichever process (``--workers`` worker, or replica on
the same database) the request came through. Each process counts its own
requests in memory, and publishes a *busy mark* per (server, model) it has
requests in flight for: a row of ``busy_mark`` valid until ``expire_time``.
The evictor of any process reads the marks that have not expired.

Cheap on the hot path: a request publishes (one upsert, before it is sent)
only when its process has no valid mark for that model on that server yet,
i.e. at most once per ``MARK_LIFETIME`` per model after a quiet spell; while
requests stay in flight, the process's refresher (``refresh``, every
``REFRESH_INTERVAL``) renews its marks in one transaction, so a request that
lasts minutes stays marked. When a model has had nothing in flight in a
process for a refresh interval, the refresher deletes that process's mark
(bursts keep theirs: no write per request); a crashed process's marks simply
expire.

Requests waiting in MLServe for a cold on-demand load hold a mark on
``ANY_SERVER``: the model must not be evicted from wherever it is being
loaded for them.

The remaining race, stated: a request that a process starts after another
process's evictor read the marks, and before that evictor unloads, finds the
model going away (the evictor reads them again under the model's lock, just
before it unloads, to keep that window to one database round trip).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import socket
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

from mlserve.core.errors import MLServeError
from mlserve.storage import db, tables
from mlserve.storage.db import in_thread

log = logging.getLogger(__name__)

ANY_SERVER = ""  # a mark for every server of the model
REFRESH_INTERVAL = 2.0  # seconds between two renewals of a busy process's marks
# How long a published mark holds: four refresh intervals, so that a refresher
# late on a busy machine (or a slow database write) does not let a mark lapse,
# yet a killed process's marks do not keep its models for long.
MARK_LIFETIME = 8.0
# Marks this long past their expiry are deleted, every as long, by whichever
# process refreshes.
_PURGE_AFTER = 60.0

Key = tuple[str, str]  # (server or ANY_SERVER, model)


def process_name() -> str:
    """This process's name in the marks: host, pid and a random part (pids repeat)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class BusyMarks:
    """This process's requests in flight per (server, model), published as busy marks."""

    def __init__(self, process: str | None = None) -> None:
        self.process = process or process_name()
        self._in_flight: defaultdict[Key, int] = defaultdict(int)
        # When each published mark stops being trusted here (time.monotonic()): its
        # expiry less one refresh interval, so it is renewed before it lapses.
        self._trusted_until: dict[Key, float] = {}
        # Keys whose last request ended, and when: their marks are cleared once
        # they stay quiet for a refresh interval (bursts keep theirs).
        self._ended_at: dict[Key, float] = {}
        self._purged_at = time.monotonic()
        # One write of this process's marks at a time: a clearing and a request's
        # new mark for the same key must not overtake each other.
        self._writing = asyncio.Lock()

    @asynccontextmanager
    async def holding(self, server: str, model: str) -> AsyncIterator[None]:
        """Count a request in flight for ``model`` on ``server`` (``ANY_SERVER``:
        waiting for its load) for the block, published before the block runs."""
        await self.enter(server, model)
        try:
            yield
        finally:
            self.leave(server, model)

    async def enter(self, server: str, model: str) -> None:
        """A request for ``model`` on ``server`` begins: counted, and marked in the
        database first unless a mark of this process is already valid (the common
        case: a dictionary lookup). A database that cannot be reached does not stop
        the request; it is counted here only (logged), and the next try is the
        refresher's, so requests do not queue up behind a database that fails.
        A request cancelled while its mark is written is counted out again."""
        key = (server, model)
        self._in_flight[key] += 1
        self._ended_at.pop(key, None)
        if time.monotonic() < self._trusted_until.get(key, 0.0):
            return
        try:
            async with self._writing:
                if time.monotonic() < self._trusted_until.get(key, 0.0):
                    return  # published by the call that held the lock
                await in_thread(self._publish)([key])
        except MLServeError as error:
            self._trusted_until[key] = time.monotonic() + REFRESH_INTERVAL
            log.warning("could not mark %s busy on %r: %s", model, server, error)
        except BaseException:
            self.leave(server, model)
            raise

    def leave(self, server: str, model: str) -> None:
        """A request counted by ``enter`` ended."""
        key = (server, model)
        self._in_flight[key] -= 1
        if self._in_flight[key] <= 0:
            del self._in_flight[key]
            self._ended_at[key] = time.monotonic()

    def local(self) -> set[Key]:
        """(server, model) this process has requests in flight for right now."""
        return set(self._in_flight)

    async def refresh(self) -> None:
        """Renew the marks of everything in flight here whose mark would lapse before
        the next call; clear the marks of what has had nothing in flight for a
        refresh interval; now and then drop long-expired marks of any process."""
        async with self._writing:
            now = time.monotonic()
            renew = [
                key
                for key in self._in_flight
                if self._trusted_until.get(key, 0.0) < now + REFRESH_INTERVAL
            ]
            quiet = [
                key for key, ended in self._ended_at.items() if now - ended >= REFRESH_INTERVAL
            ]
            for key in quiet:  # before the write: a request for it now publishes anew
                del self._ended_at[key]
                self._trusted_until.pop(key, None)
            purge = now - self._purged_at >= _PURGE_AFTER
            if renew or quiet or purge:  # an idle process writes nothing
                await in_thread(self._publish)(renew, quiet, purge)
            if purge:
                self._purged_at = now

    def _publish(
        self, keys: Iterable[Key], cleared: Iterable[Key] = (), purge: bool = False
    ) -> None:
        """Upsert this process's marks of ``keys``, delete those of ``cleared`` and,
        with ``purge``, every long-expired mark: one transaction."""
        keys = list(keys)
        started = time.monotonic()
        expire = db.utcnow() + dt.timedelta(seconds=MARK_LIFETIME)
        mark = tables.BusyMark
        with db.database.atomic():
            for server, model in keys:
                mark.insert(
                    process=self.process, server=server, model=model, expire_time=expire
                ).on_conflict(
                    conflict_target=[mark.process, mark.server, mark.model],
                    update={mark.expire_time: expire},
                ).execute()
            for server, model in cleared:
                mark.delete().where(
                    (mark.process == self.process) & (mark.server == server) & (mark.model == model)
                ).execute()
            if purge:
                old = db.utcnow() - dt.timedelta(seconds=_PURGE_AFTER)
                mark.delete().where(mark.expire_time < old).execute()
        trusted = started + MARK_LIFETIME - REFRESH_INTERVAL
        for key in keys:
            self._trusted_until[key] = trusted

    async def withdraw(self) -> None:
        """Delete every mark of this process (it stops: its requests are over)."""
        async with self._writing:
            mark = tables.BusyMark
            await in_thread(mark.delete().where(mark.process == self.process).execute)()
            self._trusted_until.clear()

    async def run(self) -> None:
        """Call ``refresh`` every ``REFRESH_INTERVAL`` until cancelled (each process
        runs one: its own marks are renewed by no one else)."""
        while True:
            await asyncio.sleep(REFRESH_INTERVAL)
            try:
                await self.refresh()
            except MLServeError as error:
                log.warning("could not renew this process's busy marks: %s", error)

    async def busy(self, servers: Iterable[str]) -> set[Key]:
        """(server, model) with requests in flight through any process, on ``servers``
        or on ``ANY_SERVER`` (see ``is_busy``): the other processes' marks not
        expired, and this process's own count, which is exact (its own marks may
        outlive its requests by a refresh interval or two)."""
        found = await in_thread(busy_marks)(servers, self.process)
        return found | self.local()


def is_busy(busy: set[Key], server: str, model: str) -> bool:
    """Whether ``model`` on ``server`` is in flight by ``busy`` (from ``BusyMarks.busy``)."""
    return (server, model) in busy or (ANY_SERVER, model) in busy


def busy_marks(servers: Iterable[str], except_process: str = "") -> set[Key]:
    """The (server, model) of every unexpired mark on ``servers`` or ``ANY_SERVER``,
    but those of ``except_process``."""
    wanted = [*set(servers), ANY_SERVER]
    mark = tables.BusyMark
    rows = mark.select(mark.server, mark.model).where(
        (mark.expire_time > db.utcnow())
        & mark.server.in_(wanted)
        & (mark.process != except_process)
    )
    return {(row.server, row.model) for row in rows.distinct()}
