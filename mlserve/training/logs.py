"""Training jobs' log lines in the database, so that every process of a deployment
(replicas on other hosts, ``--workers``) reads them and they outlive the process
that ran the job.

The database, not the blob store: it is the one thing every replica shares
whatever ``--storage`` is (a bucket's objects cannot be appended to, so a growing
log there would be rewritten whole or split into many small objects, and
followed by listing them), a job's row already lives there, and a follower asks
for "the lines after number n" by index.

Bounded whatever a script prints: a line is cut at ``JobLimits.log_line_bytes``
before it gets here; each job's lines wait in memory in a ring of at most
``JobLimits.log_lines`` (a flood overwrites its own older lines before they are
written); each write stores at most that many and deletes the job's lines older
than the newest that many. So a job holds at most ``log_lines`` rows of at most
``log_line_bytes`` each, and the database sees at most one write per job per
``FLUSH_SECONDS``.

Writes run off the event loop (``db.in_thread``), one batch per job every
``FLUSH_SECONDS``, and once more when the job ends, before its final state is
recorded: a follower that sees the final state has every line already. Followers
in this process are woken by each write; followers in another process poll
every ``POLL_SECONDS``, so they see a line at most about ``FLUSH_SECONDS +
POLL_SECONDS`` after the script printed it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass, field

from mlserve.storage.db import in_thread
from mlserve.training import store

log = logging.getLogger(__name__)

FLUSH_SECONDS = 0.25
POLL_SECONDS = 0.5
# A PostgreSQL text cannot hold NUL; a script may print one.
_NUL, _REPLACEMENT = "\x00", "\ufffd"


@dataclass
class _Pending:
    """A job's lines not written yet (seq, text), and the number of its last line."""

    lines: deque[tuple[int, str]]
    seq: int = 0
    gone: bool = False  # its row was deleted (with its model): nothing more is written


@dataclass
class JobLogs:
    """The lines of the jobs this process runs, on their way to the database (``keep``:
    the most lines a job keeps), and a signal for this process's followers."""

    keep: int
    flush_seconds: float = FLUSH_SECONDS
    poll_seconds: float = POLL_SECONDS
    _pending: dict[str, _Pending] = field(default_factory=dict)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _written: asyncio.Event = field(default_factory=asyncio.Event)

    def append(self, job_id: str, line: str) -> None:
        """Take one line the job printed (already cut to its cap); never blocks."""
        pending = self._pending.get(job_id)
        if pending is None:
            pending = self._pending[job_id] = _Pending(deque(maxlen=self.keep))
        pending.seq += 1
        if not pending.gone:
            pending.lines.append((pending.seq, line.replace(_NUL, _REPLACEMENT)))

    async def flush(self) -> None:
        """Write every job's waiting lines. Lines whose write failed (the database is
        unreachable) wait for the next flush, within the same bound."""
        async with self._lock:
            for job_id, pending in list(self._pending.items()):
                if not pending.lines:
                    continue
                batch = list(pending.lines)
                pending.lines.clear()
                try:
                    pending.gone = not await in_thread(store.append_log)(job_id, batch, self.keep)
                except Exception as error:  # the job goes on; its lines wait
                    log.warning("training job %s: its log could not be written: %s", job_id, error)
                    pending.lines = deque([*batch, *pending.lines], maxlen=self.keep)
            self.notify()

    async def close(self, job_id: str) -> None:
        """Write the job's last lines and forget it (it ended)."""
        await self.flush()
        self._pending.pop(job_id, None)

    def notify(self) -> None:
        """Wake this process's followers: lines were written, or a job's state changed."""
        self._written.set()
        self._written = asyncio.Event()

    def next_change(self) -> asyncio.Event:
        """An event set at the next ``notify``; take it before reading, then wait."""
        return self._written

    async def wait(self, change: asyncio.Event) -> None:
        """Until ``change`` is set or ``poll_seconds`` passed (a write elsewhere)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(change.wait(), self.poll_seconds)

    async def run(self) -> None:
        """Flush every ``flush_seconds`` until cancelled."""
        while True:
            await asyncio.sleep(self.flush_seconds)
            if any(pending.lines for pending in self._pending.values()):
                await self.flush()
