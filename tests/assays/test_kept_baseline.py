"""An assay keeps its baseline as binned at creation (on SQLite and PostgreSQL,
``store_db``), over log files written by the log's own writer: the scheduler and
RunAssay score windows against it after retention has deleted the baseline's
hours; an update re-bins only when the bins depend on what it changes, and
refuses (nothing stored) when the data to re-bin is gone; an assay stored
before schema 25 is binned at first use and kept."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import os
import time
from pathlib import Path

import peewee as pw
import pytest
from prometheus_client import CollectorRegistry

from mlserve.assays.maths import BaselineSummary, Metric, Summarizer
from mlserve.assays.scheduler import AssayScheduler
from mlserve.assays.service import Assays, WindowResult
from mlserve.assays.spec import AssaySpec, Baseline, Window
from mlserve.assays.spec import Path as AssayPath
from mlserve.core.errors import FailedPrecondition, InvalidArgument
from mlserve.core.paging import PageTokens
from mlserve.monitor import parquet, retention
from mlserve.monitor.records import Record
from mlserve.storage import tables
from mlserve.storage.repository import LocalRepository
from tests.support.assays import records, store_scale_model

T0 = dt.datetime(2026, 1, 1, 10, 0, tzinfo=dt.timezone.utc)  # the windows' hour
MODEL = "kept"
MINUTE = dt.timedelta(minutes=1)
SAME = [i / 50 for i in range(50)]
# The baseline: half of SAME in the last minute of hour 8, half in the first of hour 9.
BASELINE = Baseline(start=T0 - 61 * MINUTE, end=T0 - 59 * MINUTE)
DAY = 86400.0


def _records(start: dt.datetime, values: list[float]) -> list[Record]:
    return records(start, values, MODEL)


@pytest.fixture
def assays(store_db: pw.Database, tmp_path: Path) -> Assays:
    """A model with a version; its log: the baseline over hours 8 and 9, then minute 0
    of hour 10 like it and minute 1 shifted by 5."""
    store_scale_model(MODEL)
    root = tmp_path / "logs"
    parquet.write(root, _records(T0 - 61 * MINUTE, SAME[:25]))
    parquet.write(root, _records(T0 - 60 * MINUTE, SAME[25:]))
    parquet.write(root, _records(T0, SAME))
    parquet.write(root, _records(T0 + MINUTE, [5 + v for v in SAME]))
    store = tmp_path / "store"
    repository = LocalRepository(store / "repository", store / "staging", store / "blobs")
    return Assays(root, PageTokens(b"k" * 32), repository)


def _spec(**summarizer: object) -> AssaySpec:
    return AssaySpec(
        name="drift",
        model=MODEL,
        path=AssayPath("input", "INPUT", 0),
        baseline=BASELINE,
        window=Window(MINUTE, start=T0),
        summarizer=Summarizer(**{"warning_threshold": 0.1, **summarizer}),  # type: ignore[arg-type]
    )


def _retire(assays: Assays, hour: int) -> None:
    """Delete the log's files of ``hour`` (of T0's day) as retention does: by age."""
    assert isinstance(assays.log_root, Path)
    files = list(assays.log_root.glob(f"model={MODEL}/date=*/hour={hour:02d}/*.parquet"))
    assert files
    old = time.time() - 2 * DAY
    for file in files:
        os.utime(file, (old, old))
    assert retention.apply(assays.log_root, DAY, 2**40) == len(files)


def _run(assays: Assays) -> tuple[BaselineSummary, list[WindowResult]]:
    return asyncio.run(assays.run("drift", None, T0, T0 + 3 * MINUTE))


def _summary(summary: BaselineSummary) -> tuple[object, ...]:
    return (
        summary.edges.tolist(), summary.counts.tolist(), summary.densities.tolist(),
        summary.count, summary.minimum, summary.maximum, summary.mean, summary.median,
        summary.std,
    )  # fmt: skip


def _scores(results: list[WindowResult]) -> list[tuple[object, ...]]:
    return [
        (r.start, r.score.count, r.score.score, r.score.status.value,
         r.score.window_densities.tolist(), r.edges.tolist(), r.baseline_densities.tolist())
        for r in results
    ]  # fmt: skip


def _row() -> tuple[str, str | None, bytes | None]:
    row = tables.Assay.get(tables.Assay.name == "drift")
    values = None if row.baseline_values is None else bytes(row.baseline_values)
    return row.spec, row.baseline_summary, values


def _update(assays: Assays, **summarizer: object) -> None:
    asyncio.run(assays.update("drift", _spec(**summarizer), ["summarizer"]))


def test_windows_are_scored_against_the_kept_baseline_after_retention_deleted_it(
    assays: Assays,
) -> None:
    asyncio.run(assays.create(_spec()))
    baseline, results = _run(assays)
    assert baseline.count == len(SAME)
    _retire(assays, 8)
    _retire(assays, 9)
    # The baseline's data is gone: binning it now (PreviewBaseline) finds nothing.
    with pytest.raises(InvalidArgument, match=r"baseline\.range"):
        asyncio.run(assays.preview(_spec()))

    scheduler = AssayScheduler(assays, CollectorRegistry(), dt.timedelta(seconds=2))
    assert asyncio.run(scheduler.step(T0 + 3 * MINUTE + dt.timedelta(seconds=5))) == 3
    stored = tables.AssayResult.select().order_by(tables.AssayResult.window_start)
    assert [r.status for r in stored] == ["ok", "alert", "no_data"]
    kept, again = _run(assays)
    assert _summary(kept) == _summary(baseline)
    assert _scores(again) == _scores(results)
    assert [status for *_, status, _, _, _ in _scores(again)] == ["ok", "alert", "no_data"]


def test_an_update_re_bins_only_for_the_bins_and_refuses_when_the_data_is_gone(
    assays: Assays,
) -> None:
    asyncio.run(assays.create(_spec()))
    _update(assays, num_bins=10)  # the data is there: re-binned
    assert len(_run(assays)[0].counts) == 12
    _retire(assays, 8)
    kept = _row()
    # Half the baseline is gone: the bins cannot change, and nothing does.
    with pytest.raises(FailedPrecondition, match="holds 25 of the 50 values"):
        _update(assays, num_bins=5)
    assert _row() == kept
    _retire(assays, 9)
    with pytest.raises(FailedPrecondition, match="holds 0 of the 50 values"):
        _update(assays, num_bins=5, warning_threshold=0.2)
    assert _row() == kept
    # Thresholds and the metric do not touch the bins: the kept ones stay.
    _update(assays, num_bins=10, warning_threshold=0.2, metric=Metric.SUM_DIFF)
    baseline, results = _run(assays)
    assert len(baseline.counts) == 12
    assert baseline.count == len(SAME)
    assert [r.score.status.value for r in results] == ["ok", "alert", "no_data"]
    assert _row()[1] == kept[1]
    # A new baseline with data re-bins from it.
    inline = Baseline(values=tuple(SAME))
    asyncio.run(assays.update("drift", dataclasses.replace(_spec(), baseline=inline), ["baseline"]))
    assert len(_run(assays)[0].counts) == 12
    assert _row()[1] != kept[1]


def test_a_ks_assay_keeps_the_raw_values_and_re_bins_from_them(assays: Assays) -> None:
    asyncio.run(assays.create(_spec(metric=Metric.KS)))
    assert _row()[2] is not None
    _, results = _run(assays)
    _retire(assays, 8)
    _retire(assays, 9)
    _update(assays, metric=Metric.KS, num_bins=8)  # from the kept values
    baseline, again = _run(assays)
    assert len(baseline.counts) == 10
    assert baseline.values.tolist() == pytest.approx(SAME)
    # ks reads the raw values, not the bins: the scores are the same.
    assert [r.score.score for r in again] == [r.score.score for r in results]
    _update(assays, metric=Metric.PSI, num_bins=8)  # the binned metrics need no values
    assert _row()[2] is None
    with pytest.raises(FailedPrecondition, match="holds 0 of the 50 values"):
        _update(assays, metric=Metric.KS, num_bins=8)


def test_an_assay_stored_before_schema_25_is_binned_at_first_use_and_kept(
    assays: Assays,
) -> None:
    asyncio.run(assays.create(_spec()))
    binned = _row()[1]
    tables.Assay.update(baseline_summary=None, baseline_values=None).execute()
    scheduler = AssayScheduler(assays, CollectorRegistry(), dt.timedelta(seconds=2))
    assert asyncio.run(scheduler.step(T0 + 3 * MINUTE + dt.timedelta(seconds=5))) == 3
    assert _row()[1] == binned
    _retire(assays, 8)
    _retire(assays, 9)
    baseline, results = _run(assays)
    assert baseline.count == len(SAME)
    assert [r.score.status.value for r in results] == ["ok", "alert", "no_data"]
