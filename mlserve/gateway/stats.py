"""Inference counts per model version: in memory on the hot path, flushed to
the store every few seconds (so every replica's counts add up there), and
exported as Prometheus metrics."""

from __future__ import annotations

import datetime as dt
import os
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field

import peewee as pw
from prometheus_client import CollectorRegistry, Counter, Histogram

from mlserve.storage import tables
from mlserve.storage.db import in_thread

RECENT_SECONDS = 300
RECENT_CALLS = 100_000  # per model: the window holds at most this many calls
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


@dataclass
class _Pending:
    count: int = 0
    failures: int = 0
    last_time: float | None = None  # time.time(): cheaper than a datetime per request


@dataclass(frozen=True)
class UsageRecord:
    count: int = 0
    failures: int = 0
    last_time: dt.datetime | None = None


@dataclass
class InferenceStats:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    worker: str = "0"
    """This process's index among ``--workers`` (the ``worker`` label)."""

    def __post_init__(self) -> None:
        self._pending: defaultdict[tuple[str, int], _Pending] = defaultdict(_Pending)
        self._requests = Counter(
            "mlserve_inference_requests",
            "Inference requests routed by the gateway",
            ["model", "version", "outcome"],
            registry=self.registry,
        )
        self._counters: dict[tuple[str, int, bool], Counter] = {}
        self._latency = Histogram(
            "mlserve_gateway_latency_seconds",
            "Time from a ModelInfer call's arrival at the gateway to its answer",
            ["model", "version"],
            registry=self.registry,
            buckets=LATENCY_BUCKETS,
        )
        self._latencies: dict[tuple[str, int], Histogram] = {}
        # (model, version) -> [calls, seconds] observed, for Triton's share of them.
        self._latency_totals: dict[tuple[str, int], list[float]] = {}
        # Which process served the calls: with --workers the merged /metrics sums
        # every other series over the workers, this one keeps them apart.
        self._served_here = Counter(
            "mlserve_worker_inference_requests",
            "Inference requests this gateway process answered (one series per worker)",
            ["worker", "pid"],
            registry=self.registry,
        ).labels(self.worker, str(os.getpid()))
        # model -> (time.monotonic(), seconds) of its recent calls, for p50/p99.
        self._recent: defaultdict[str, deque[tuple[float, float]]] = defaultdict(
            lambda: deque(maxlen=RECENT_CALLS)
        )

    def record(self, model: str, version: int, ok: bool, latency: float | None = None) -> None:
        """Count one call (and, when given, observe its latency in seconds)."""
        pending = self._pending[(model, version)]
        pending.count += 1
        if not ok:
            pending.failures += 1
        pending.last_time = time.time()
        counter = self._counters.get((model, version, ok))
        if counter is None:
            # labels() takes a lock and builds a key each time: once per series.
            counter = self._requests.labels(model, str(version), "ok" if ok else "error")
            self._counters[(model, version, ok)] = counter
        counter.inc()
        self._served_here.inc()
        if latency is not None:
            histogram = self._latencies.get((model, version))
            if histogram is None:
                histogram = self._latencies[(model, version)] = self._latency.labels(
                    model, str(version)
                )
            histogram.observe(latency)
            totals = self._latency_totals.get((model, version))
            if totals is None:
                totals = self._latency_totals[(model, version)] = [0, 0.0]
            totals[0] += 1
            totals[1] += latency
            self._recent[model].append((time.monotonic(), latency))

    def versions(self, model: str) -> list[int]:
        """The versions of ``model`` whose latency this process observed."""
        return [version for name, version in list(self._latency_totals) if name == model]

    def latency_totals(self, model: str, version: int) -> tuple[int, float]:
        """Calls of one version whose latency was observed, and their seconds summed."""
        calls, seconds = self._latency_totals.get((model, version), (0, 0.0))
        return int(calls), seconds

    def recent_latency(self, model: str) -> RecentLatency:
        """p50 and p99 of ``model``'s calls over the last ``RECENT_SECONDS`` (this process)."""
        since = time.monotonic() - RECENT_SECONDS
        latencies = sorted(
            seconds for at, seconds in list(self._recent.get(model, ())) if at >= since
        )
        if not latencies:
            return RecentLatency()
        return RecentLatency(
            _quantile(latencies, 0.5) * 1000, _quantile(latencies, 0.99) * 1000, len(latencies)
        )

    async def flush(self) -> None:
        """Add what was counted since the last flush to the store."""
        # Taken on the event loop, where record() runs: in the store's thread the
        # swap could fall between a record()'s lookup and its increments, and that
        # call would be counted into a batch already written, so never stored.
        pending, self._pending = self._pending, defaultdict(_Pending)
        if pending:
            await in_thread(_add_all)(pending)

    @in_thread
    def usage(self, model: str, version: int | None = None) -> UsageRecord:
        """Counts for one version, or summed over all versions when ``version`` is None."""
        query = tables.InferenceCount.select(
            pw.fn.SUM(tables.InferenceCount.count),
            pw.fn.SUM(tables.InferenceCount.failures),
            pw.fn.MAX(tables.InferenceCount.last_time),
        ).where(tables.InferenceCount.model == model)
        if version is not None:
            query = query.where(tables.InferenceCount.version == version)
        count, failures, last_time = query.scalar(as_tuple=True)
        return UsageRecord(int(count or 0), int(failures or 0), _as_datetime(last_time))


@dataclass(frozen=True)
class RecentLatency:
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    calls: int = 0
    window_seconds: int = RECENT_SECONDS


def _quantile(ordered: list[float], share: float) -> float:
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def _add_all(pending: dict[tuple[str, int], _Pending]) -> None:
    for (model, version), counts in pending.items():
        _add(model, version, counts)


def _add(model: str, version: int, counts: _Pending) -> None:
    # One upsert, so replicas flushing the same version at once add up
    # instead of colliding on the (model, version) index.
    table = tables.InferenceCount
    table.insert(
        model=model,
        version=version,
        count=counts.count,
        failures=counts.failures,
        last_time=_utc(counts.last_time),
    ).on_conflict(
        conflict_target=[table.model, table.version],
        update={
            table.count: table.count + pw.EXCLUDED.count,
            table.failures: table.failures + pw.EXCLUDED.failures,
            table.last_time: pw.EXCLUDED.last_time,
        },
    ).execute()


def _utc(timestamp: float | None) -> dt.datetime | None:
    if timestamp is None:
        return None
    # Naive UTC, like db.utcnow().
    return dt.datetime.fromtimestamp(timestamp, dt.timezone.utc).replace(tzinfo=None)


def _as_datetime(value: object) -> dt.datetime | None:
    # SQLite hands MAX() of a datetime column back as text.
    if value is None or isinstance(value, dt.datetime):
        return value
    return dt.datetime.fromisoformat(str(value))
