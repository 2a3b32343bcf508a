"""The database gate: the one way domain code reaches the database.

``database`` is the proxy every table is bound to (``tables.connect`` binds
it); ``run`` calls blocking work with one pooled connection and turns a lost
database into ``errors.Unavailable``; ``in_thread`` does the same off the
event loop. Nothing here knows a table.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import hashlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, ParamSpec, TypeVar
from urllib.parse import parse_qsl, urlsplit

import peewee as pw
import psycopg2
from playhouse.db_url import connect as connect_url
from playhouse.pool import MaxConnectionsExceeded, PooledDatabase

from mlserve.core.errors import Unavailable

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

database = pw.DatabaseProxy()

POSTGRESQL_SCHEMES = ("postgresql", "postgres", "postgresql+pool", "postgres+pool")
# Pool settings a postgresql:// URL gets unless its query string says otherwise
# (e.g. ?max_connections=50&timeout=30). Limits are per MLServe process.
POSTGRESQL_POOL_DEFAULTS: dict[str, Any] = {
    # Connections open at once; more callers wait ... (32 is the most threads
    # asyncio's default executor runs, so by default no call waits.)
    "max_connections": 32,
    "timeout": 10,  # ... this many seconds for one, then get UNAVAILABLE
    "stale_timeout": 300,  # seconds before an idle connection is replaced
    "connect_timeout": 5,  # seconds to reach the server (libpq)
}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def open_database(url: str) -> pw.Database:
    """The database at ``url``, configured for MLServe but not yet bound or migrated."""
    scheme, _, rest = url.partition("://")
    if scheme in POSTGRESQL_SCHEMES:
        given = {key for key, _ in parse_qsl(urlsplit(url).query)}
        defaults = {k: v for k, v in POSTGRESQL_POOL_DEFAULTS.items() if k not in given}
        db: pw.Database = connect_url(
            f"postgresql+pool://{rest}", unquote_password=True, unquote_user=True, **defaults
        )
        return db
    if url.startswith("sqlite:"):
        db = connect_url(
            url,
            pragmas={
                "journal_mode": "wal",
                "busy_timeout": 10_000,
                "foreign_keys": 1,
                "synchronous": "normal",
            },
            # Writers take the lock at BEGIN, so two writers queue on the busy
            # timeout instead of deadlocking on a read-to-write upgrade.
            lock_type="IMMEDIATE",
        )
    else:
        db = connect_url(url)
    return db


class _OutageLog:
    """Logs a database outage as two lines: when calls start failing, and when one works again.

    Every failed call during an outage raises ``Unavailable`` to its caller as before;
    only the log is shortened (each failure's traceback is there at DEBUG).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._since: float | None = None
        self._failures = 0

    def failed(self, reason: str, error: BaseException) -> None:
        with self._lock:
            first = self._since is None
            if first:
                self._since = time.monotonic()
            self._failures += 1
        if first:
            log.warning(
                "the %s cannot be reached or is busy (%s); calls fail with UNAVAILABLE until "
                "it is back (each failure's traceback at DEBUG)",
                describe(database.obj),
                reason,
            )
        log.debug("database call failed: %s", reason, exc_info=error)

    def worked(self) -> None:
        if self._since is None:  # the common case: no lock taken
            return
        with self._lock:
            since, failures = self._since, self._failures
            self._since, self._failures = None, 0
        if since is not None:
            log.warning(
                "the %s is back after %.1f s; %d call(s) failed meanwhile",
                describe(database.obj),
                time.monotonic() - since,
                failures,
            )


_outage = _OutageLog()


def run(function: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Call blocking store work in this thread: the one gate to the database.

    On a pooled database the call takes a connection when it first queries
    (work that never queries, such as reading a file, takes none) and hands
    it back at the end; the pool checks a connection before lending it again,
    so after a database restart dead connections are dropped and new ones
    opened. A database that cannot be reached (refused, dropped mid-call, no
    free connection in time) becomes ``Unavailable`` naming the database.
    """
    try:
        result = function(*args, **kwargs)
    except (pw.OperationalError, pw.InterfaceError, MaxConnectionsExceeded) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        _outage.failed(reason, error)
        raise Unavailable(
            f"the {describe(database.obj)} cannot be reached or is busy ({reason}); "
            "retry once it is back"
        ) from None
    finally:
        # Read again: the call may have bound the database (startup does).
        db = database.obj
        reached = db is not None and not db.is_closed()
        if isinstance(db, PooledDatabase) and reached and not db.in_transaction():
            db.close()
    if reached:  # a call that never touched the database proves nothing about it
        _outage.worked()
    return result


def in_thread(function: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """Make a blocking function awaitable by running it in the default executor.

    It runs through ``run``: with one pooled database connection for the
    call, and a lost database raised as ``errors.Unavailable``.
    """

    @functools.wraps(function)
    async def call(*args: P.args, **kwargs: P.kwargs) -> R:
        return await asyncio.to_thread(functools.partial(run, function, *args, **kwargs))

    return call


# The first half of the two-int advisory lock keys of ``named_locks`` (the
# schema migration's lock uses the one-int form, so the two never meet).
_NAMED_LOCKS = 0x6D6C6E6C


def named_lock_key(name: str) -> tuple[int, int]:
    """The PostgreSQL advisory lock (two-int form) that ``named_locks`` takes for ``name``."""
    return _NAMED_LOCKS, int.from_bytes(
        hashlib.sha256(name.encode()).digest()[:4], "big", signed=True
    )


@contextlib.asynccontextmanager
async def named_locks(names: Iterable[str], *, wait: bool = True) -> AsyncIterator[bool]:
    """Hold, across every MLServe sharing this database, a lock on each of ``names``.

    Yields True once all are held (taken in name order, so two holders never
    deadlock), and releases them on exit. With ``wait`` False it yields False
    at once when another holder has one of them (and holds none). On
    PostgreSQL these are session advisory locks on a connection of their own
    (not the pool's: the hold spans many calls); names are hashed to 32 bits,
    so two names may share a lock, which only serialises them. On SQLite
    there is nothing to take: the database has one writer at a time.
    """
    db = database.obj
    if not isinstance(db, pw.PostgresqlDatabase):
        yield True
        return
    keys = sorted({named_lock_key(name) for name in names})
    connection = await asyncio.to_thread(own_connection, db)
    try:
        held = await asyncio.to_thread(_take_locks, connection, keys, wait)
        yield held
    finally:
        await asyncio.to_thread(_release_and_close, connection)


def _release_and_close(connection: Any) -> None:
    """Release the session's locks, then close it. Closing alone would release them
    too, but only once the server has ended the session, after close() returns: a
    try-lock made right after (the next health round's, say) could find them held."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock_all()")
    except psycopg2.Error as error:
        log.debug("releasing named locks: %s; closing the session releases them", error)
    finally:
        connection.close()


def own_connection(db: pw.PostgresqlDatabase) -> Any:
    """A new autocommit connection to ``db``, outside its pool, for a session lock held
    across many calls (closing it releases the lock); Unavailable if it cannot be made."""
    try:
        connection = psycopg2.connect(dbname=db.database, **db.connect_params)
    except psycopg2.OperationalError as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else "no answer"
        raise Unavailable(
            f"the {describe(db)} cannot be reached ({reason}); retry once it is back"
        ) from None
    connection.autocommit = True
    return connection


def _take_locks(connection: Any, keys: list[tuple[int, int]], wait: bool) -> bool:
    with connection.cursor() as cursor:
        for key in keys:
            if wait:
                cursor.execute("SELECT pg_advisory_lock(%s, %s)", key)
                continue
            cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", key)
            if not cursor.fetchone()[0]:
                cursor.execute("SELECT pg_advisory_unlock_all()")
                return False
    return True


def describe(db: pw.Database | None) -> str:
    """``db`` for messages and logs: kind, place and name, never a password."""
    if isinstance(db, pw.PostgresqlDatabase):
        params = db.connect_params
        where = f"{params.get('host', 'local socket')}:{params.get('port', 5432)}"
        return f"PostgreSQL database {db.database!r} at {where}"
    if isinstance(db, pw.SqliteDatabase):
        return f"SQLite database {db.database}"
    return "database"
