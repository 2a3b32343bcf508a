"""The inference log: a bounded queue the gateway hands calls to, and one
writer thread that decodes and writes them as Parquet.

Recording never blocks inference: ``capture`` appends to the queue and
returns; when the queue is full the call is dropped and counted (per
deployment, and as ``mlserve_inference_log_dropped_total``), never waited
for. The writer wakes every ``flush_interval`` seconds, so a SIGKILL loses
at most the records of the last interval (and what was queued); SIGTERM
flushes everything queued (``close``). A write that fails (full disk,
unwritable directory) loses that batch, is counted, logged at most once a
minute, and marks the log unwritable until a write succeeds again — the
health service then reports ``mlserve.v1.InferenceLogService`` NOT_SERVING.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from mlserve.access import rules
from mlserve.access.rules import Principal
from mlserve.catalog.models import writable_model
from mlserve.core.errors import InvalidArgument
from mlserve.core.names import check_name
from mlserve.core.paging import Page, PageTokens, page_size
from mlserve.monitor import parquet, retention
from mlserve.monitor.policy import LoggingPolicy, Mode, Policies
from mlserve.monitor.reader import LogQuery, RowsQuery, logged_rows, read_page
from mlserve.monitor.records import Capture, Record
from mlserve.monitor.store import LogStore
from mlserve.storage.db import in_thread

log = logging.getLogger(__name__)

_FAILURE_LOG_INTERVAL = 60.0
_RETENTION_INTERVAL = 60.0
# Seconds a half-written file stays untouched before the sweep takes it for a killed
# writer's: a live writer (another worker, another replica) writes a file in seconds.
ABANDONED_AFTER = 600.0


@dataclass(frozen=True)
class LogSettings:
    """Where the log goes and how much of it is kept."""

    directory: Path | LogStore
    """A local directory, or a store (an s3:// prefix)."""
    queue_size: int = 10_000
    """Records waiting for the writer at most; more are dropped and counted."""
    flush_interval: float = 1.0
    """Seconds between writes: the most a SIGKILL can lose."""
    retention_seconds: float = 7 * 24 * 3600.0
    """Files older than this are deleted."""
    retention_bytes: int = 10 * 1024**3
    """Per model, the oldest files are deleted beyond this many bytes."""
    file_tag: str = ""
    """Put in this process's file names (``w1-`` for worker 1), so workers never clash."""
    housekeeping: bool = True
    """Sweep half-written files at start and apply retention: in one process only."""


class InferenceLog:
    """The log of one process: policies, the queue, the writer, and reading back."""

    def __init__(
        self, settings: LogSettings, registry: CollectorRegistry, tokens: PageTokens
    ) -> None:
        self.settings = settings
        self.store = LogStore.of(settings.directory)
        self.tokens = tokens
        self.policies = Policies()
        self._queue: deque[Capture | Record] = deque()
        self._dropped: defaultdict[str, int] = defaultdict(int)
        self._drop_counter = Counter(
            "mlserve_inference_log_dropped",
            "Inference log records dropped because the writer's queue was full",
            ["deployment"],
            registry=registry,
        )
        self._written = Counter(
            "mlserve_inference_log_records_written",
            "Inference log records written to Parquet",
            registry=registry,
        )
        self._failures = Counter(
            "mlserve_inference_log_write_failures",
            "Inference log batches that could not be written (their records are lost)",
            registry=registry,
        )
        self.writable = True
        self._last_failure_log = 0.0
        self._last_retention = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- the hot path -------------------------------------------------------------

    def capture(
        self, model: str, version: int, server: str, principal: Principal | None,
        request: bytes, response: bytes | None, status: str, message: str,
        began: float, latency: float, header: Callable[[str], str | None] | None = None,
    ) -> None:  # fmt: skip
        """Queue one gateway call if its deployment's policy records it; never waits.

        ``header`` reads one of the call's headers, for a sampling key that names one.
        """
        policy = self.policies.get(model)
        if policy.mode is Mode.OFF:
            return
        if not policy.sampling_key:
            if not policy.samples():
                return
        elif policy.header_key:
            value = header(policy.header_key) if header is not None else None
            if not (policy.samples() if value is None else policy.samples_key(value)):
                return
        self._offer(
            Capture(
                began,
                model,
                version,
                server,
                principal,
                policy,
                request,
                response,
                status,
                message,
                latency,
            ).trimmed(),
            model,
        )

    def record(self, record: Record) -> None:
        """Queue one record from outside (RecordInference); dropped like any when full."""
        self._offer(record, record.deployment)

    def _offer(self, item: Capture | Record, deployment: str) -> None:
        if len(self._queue) >= self.settings.queue_size:
            self._dropped[deployment] += 1
            self._drop_counter.labels(deployment).inc()
            return
        self._queue.append(item)

    def dropped(self, deployment: str) -> int:
        """Records of ``deployment`` dropped since this process started."""
        return self._dropped.get(deployment, 0)

    # --- the writer ---------------------------------------------------------------

    def start(self) -> None:
        """Sweep what a killed writer left, check the store, start the writer thread."""
        try:
            if self.settings.housekeeping:
                self.store.sweep_temporary(ABANDONED_AFTER)
        except OSError as error:
            self._failed(error)
        self.check_writable()
        self._thread = threading.Thread(target=self._run, name="inference-log", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        """Write everything queued, then stop the writer (on SIGTERM)."""
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    def flush(self) -> int:
        """Decode and write what is queued now (the writer thread's step); returns records
        written."""
        batch: list[Capture | Record] = []
        while self._queue:
            batch.append(self._queue.popleft())
        if not batch:
            return 0
        try:
            written = parquet.write(self.store, batch, self.settings.file_tag)
        except OSError as error:
            self._failed(error)
            return 0
        if written.records:
            self.writable = True
        self._written.inc(written.records)
        return written.records

    def check_writable(self) -> bool:
        """Probe the store with a file; updates ``writable`` (health reads it)."""
        try:
            self.store.probe()
        except OSError as error:
            self._failed(error)
            return False
        self.writable = True
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.settings.flush_interval):
            self._step()
        self._step()

    def _step(self) -> None:
        try:
            self.flush()
            now = time.monotonic()
            due = now - self._last_retention >= _RETENTION_INTERVAL
            if due and self.settings.housekeeping:
                self._last_retention = now
                retention.apply(
                    self.store,
                    self.settings.retention_seconds,
                    self.settings.retention_bytes,
                )
                self.store.sweep_temporary(ABANDONED_AFTER)
        except Exception:
            log.exception("inference log writer step failed")

    def _failed(self, error: OSError) -> None:
        self.writable = False
        self._failures.inc()
        now = time.monotonic()
        if now - self._last_failure_log >= _FAILURE_LOG_INTERVAL or not self._last_failure_log:
            self._last_failure_log = now
            log.error(
                "the inference log cannot write to %s (%s); inference goes on, records are "
                "lost until it can (logged at most once a minute)",
                self.store,
                error,
            )

    # --- policies -----------------------------------------------------------------

    async def policy_of(self, deployment: str) -> LoggingPolicy:
        """The stored policy of ``deployment``; NotFound unless the caller may see its model."""
        await in_thread(_check_deployment)(deployment, False)
        return await self.policies.stored(deployment)

    async def set_policy(self, deployment: str, policy: LoggingPolicy) -> LoggingPolicy:
        """Change ``deployment``'s policy on every replica (this one at once), no redeploy.

        Raises:
            InvalidArgument: a field out of range (named).
            NotFound: no model or pipeline of that name the caller may see.
            PermissionDenied: the caller may see it but not change it.
        """
        policy = policy.checked()
        await in_thread(_check_deployment)(deployment, True)
        return await self.policies.set(deployment, policy)

    # --- reading back -------------------------------------------------------------

    def models(self) -> list[str]:
        """The models the log has records of."""
        return self.store.models()

    async def list(self, query: LogQuery, requested_size: int, token: str) -> Page[Record]:
        """One page of the records ``query`` asks for, among the models the caller may see.

        ``query.models`` is one model or empty (every model the caller may see).

        Raises:
            InvalidArgument: start after end, a bad page size, a token altered or
                from another query.
            NotFound: the model does not exist or the caller may not see it (alike).
        """
        if query.start is not None and query.end is not None and query.start > query.end:
            raise InvalidArgument("start_time is after end_time: swap them")
        size = page_size(requested_size)
        fingerprint = {
            "models": list(query.models), "version": query.version,
            "deployment": query.deployment, "caller": query.caller, "app": query.app,
            "status": query.status, "newest_first": query.newest_first,
            "start": None if query.start is None else query.start.isoformat(),
            "end": None if query.end is None else query.end.isoformat(),
        }  # fmt: skip
        after = self.tokens.decode(fingerprint, token)
        if after is not None and not (
            isinstance(after, list) and len(after) == 2 and isinstance(after[0], int)
        ):
            raise InvalidArgument("page_token is malformed")
        models = await in_thread(self._visible_models)(query.models)
        narrowed = replace(query, models=models)
        records, last = await asyncio.to_thread(
            read_page,
            self.store,
            narrowed,
            None if after is None else (after[0], str(after[1])),
            size,
        )
        next_token = "" if last is None else self.tokens.encode(fingerprint, list(last))
        return Page(records, next_token)

    async def logged_inputs(self, query: RowsQuery) -> Any:
        """``reader.logged_rows`` of ``query``, for a caller who may see its model.

        Raises:
            InvalidArgument: start after end.
            NotFound: the model does not exist or the caller may not see it (alike).
        """
        if query.start is not None and query.end is not None and query.start > query.end:
            raise InvalidArgument("the window's start_time is after its end_time: swap them")
        await in_thread(self._visible_models)((query.model,))
        return await asyncio.to_thread(logged_rows, self.store, query)

    def _visible_models(self, wanted: tuple[str, ...]) -> tuple[str, ...]:
        if wanted:
            (name,) = wanted
            if not rules.model_policy(name).exists or not rules.visible_model_names([name]):
                raise rules.not_found(name)
            return wanted
        return tuple(sorted(rules.visible_model_names(self.models())))

    async def record_outside(self, record: Record) -> Record:
        """Queue an operation scored elsewhere (RecordInference); the caller must be able to
        change the model.

        Raises:
            NotFound: no such model, or one the caller may not see.
            PermissionDenied: the caller may see the model but not change it.
        """
        await in_thread(writable_model)(record.model)
        self.record(record)
        return record


def _check_deployment(name: str, write: bool) -> None:
    """A deployment is named after its model or pipeline; its rules are theirs."""
    check_name(name, "deployment")
    policy = rules.model_policy(name)
    if not policy.exists:
        raise rules.not_found(name)
    # ModelPolicy carries the fields the rules read from a row.
    (rules.check_model_write if write else rules.check_model_read)(policy)
