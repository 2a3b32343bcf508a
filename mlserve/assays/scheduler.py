"""Scheduled runs: each active assay's windows are scored once they have ended.

A window [start, start + width) is computed once ``settle`` has passed after
its end (time for the inference log's writer to flush the window's last
calls). After downtime every missed window is computed (catch-up, at most
``MAX_WINDOWS_PER_STEP`` per assay per step). A result row is unique by
(assay, window_start): when several replicas on one database compute the same
window, the first insert wins and the others skip it, so no window is stored
(or alerted on) twice. Windows are scored against the baseline the assay keeps
(``mlserve.assays.binned``), never read again from its source.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import http.client
import json
import logging
import time
import urllib.request
from dataclasses import dataclass

import peewee as pw
from prometheus_client import CollectorRegistry, Gauge

from mlserve.assays.maths import Status
from mlserve.assays.service import Assays, WindowResult, aware, result_json
from mlserve.assays.spec import AssaySpec, first_window_start, from_json, windows
from mlserve.core.errors import MLServeError
from mlserve.storage import db, tables
from mlserve.storage.db import in_thread

log = logging.getLogger(__name__)

MAX_WINDOWS_PER_STEP = 1000
WEBHOOK_TIMEOUT_SECONDS = 5.0
WARN_EVERY_SECONDS = 60.0
# Gauge values of a window's status.
STATUS_VALUES = {Status.OK: 0, Status.WARNING: 1, Status.ALERT: 2, Status.NO_DATA: -1}


@dataclass
class Stored:
    """A result this replica stored (and so alerts on)."""

    spec: AssaySpec
    result: WindowResult


class AssayScheduler:
    def __init__(
        self,
        assays: Assays,
        registry: CollectorRegistry,
        settle: dt.timedelta,
        poll_seconds: float = 1.0,
    ) -> None:
        self.assays = assays
        self.settle = settle
        self.poll_seconds = poll_seconds
        # assay -> when (time.monotonic()) its failure was last logged: once a minute,
        # not at every poll, while it keeps failing.
        self._warned: dict[str, float] = {}
        self._score = Gauge(
            "mlserve_assay_score",
            "Score of the assay's latest scheduled window (absent while it had no data)",
            ["assay"],
            registry=registry,
            # With --workers only worker 0 schedules assays: its value, no pid label.
            multiprocess_mode="livemostrecent",
        )
        self._status = Gauge(
            "mlserve_assay_status",
            "Status of the assay's latest scheduled window: 0 ok, 1 warning, 2 alert, -1 no data",
            ["assay"],
            registry=registry,
            # With --workers only worker 0 schedules assays: its value, no pid label.
            multiprocess_mode="livemostrecent",
        )

    async def run(self) -> None:
        """Step every ``poll_seconds`` until cancelled; a failed step is logged, not fatal."""
        while True:
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("assay scheduler step failed")
            await asyncio.sleep(self.poll_seconds)

    async def step(self, now: dt.datetime | None = None) -> int:
        """Score every due window of every active assay; returns how many were stored here."""
        moment = now or dt.datetime.now(dt.timezone.utc)
        stored = await in_thread(self._due)(moment)
        for item in stored:
            self._publish(item.result)
            if item.result.score.status is Status.ALERT and item.spec.webhook_url:
                await asyncio.to_thread(_post, item.spec.webhook_url, _alert(item))
        return len(stored)

    def _due(self, now: dt.datetime) -> list[Stored]:
        stored: list[Stored] = []
        for row in tables.Assay.select().where(tables.Assay.active == True):  # noqa: E712
            try:
                stored.extend(self._run_assay(row, now))
            except MLServeError as error:
                if self._may_warn(row.name):
                    log.warning("assay %r not run: %s", row.name, error.message)
            except Exception:
                # An unreadable log file, say: this assay waits, the others still run.
                if self._may_warn(row.name):
                    log.exception("assay %r not run", row.name)
            else:
                self._warned.pop(row.name, None)
        return stored

    def _may_warn(self, assay: str) -> bool:
        """Whether to log ``assay``'s failure now: its first, then once a minute."""
        moment = time.monotonic()
        last = self._warned.get(assay)
        if last is not None and moment - last < WARN_EVERY_SECONDS:
            return False
        self._warned[assay] = moment
        return True

    def _run_assay(self, row: tables.Assay, now: dt.datetime) -> list[Stored]:
        spec = from_json(row.spec)
        origin = first_window_start(spec, aware(row.create_time))
        after = aware(row.next_window) if row.next_window else origin
        # A window is due once it has ended and the log had ``settle`` to flush it.
        latest_start = min(
            now - self.settle - spec.window.width,
            after + (MAX_WINDOWS_PER_STEP - 1) * spec.window.step,
        )
        spans = windows(spec, origin, after, latest_start + dt.timedelta(microseconds=1))
        if not spans:
            return []
        baseline = self.assays.kept_baseline(row, spec)
        stored = []
        for result in self.assays.score(spec, baseline, spans):
            if _insert(row, result):
                stored.append(Stored(spec, result))
        tables.Assay.update(next_window=_naive(spans[-1][0] + spec.window.step)).where(
            tables.Assay.id == row.id
        ).execute()
        return stored

    def _publish(self, result: WindowResult) -> None:
        status = result.score.status
        self._status.labels(result.assay).set(STATUS_VALUES[status])
        if result.score.score is not None:
            self._score.labels(result.assay).set(result.score.score)


def _insert(row: tables.Assay, result: WindowResult) -> bool:
    """Store ``result``; False when another replica stored that window first."""
    try:
        with db.database.atomic():
            tables.AssayResult.create(
                assay=row,
                window_start=_naive(result.start),
                window_end=_naive(result.end),
                count=result.score.count,
                result=result_json(result),
                status=result.score.status.value,
            )
    except pw.IntegrityError:
        return False
    return True


def _naive(moment: dt.datetime) -> dt.datetime:
    return moment.astimezone(dt.timezone.utc).replace(tzinfo=None)


def _alert(item: Stored) -> dict[str, object]:
    result = item.result
    return {
        "assay": item.spec.name,
        "model": item.spec.model,
        "pipeline": item.spec.pipeline,
        "status": result.score.status.value,
        "score": result.score.score,
        "alert_threshold": item.spec.summarizer.alert_threshold,
        "window_start": result.start.isoformat(),
        "window_end": result.end.isoformat(),
        "count": result.score.count,
    }


def _post(url: str, message: dict[str, object]) -> None:
    """POST ``message`` as JSON; a failure is logged (the result is stored regardless)."""
    request = urllib.request.Request(
        url,
        data=json.dumps(message).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT_SECONDS):
            pass
    except (OSError, http.client.HTTPException) as error:
        # HTTPException: a server that answers something other than HTTP.
        log.warning("assay %r: the alert webhook %s failed: %s", message["assay"], url, error)
