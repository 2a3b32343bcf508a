"""A drift assay over a 10,000,000-row window against a 100,000-row baseline
(10 quantile bins, PSI): seconds and peak memory, side by side with the floor.

Three ways, each in a fresh Python process (so its peak RSS is its own), in
interleaved rounds:

1. floor: ``numpy.histogram`` of the in-memory window on the baseline's
   edges: the least any binning costs.
2. maths: ``mlserve.assays.maths`` — quantile edges, bins with outlier
   bins, densities, PSI — on the same in-memory arrays.
3. from the log: ``source.logged_values`` reads the window out of Parquet
   files in the inference log's layout (10 files of 1,000,000 calls in one
   hour partition, an FP32 ``input.INPUT`` list column), then the maths.

Then RunAssay's read of a long range, the same 10,000,000 calls spread over
10 hour partitions (one file of 1,000,000 each) and scored as 10 one-hour
windows, two ways:

4. range-once: the whole range read at once (``source.logged_values``), each
   window cut out of it: how RunAssay and the scheduler read before.
5. range-hourly: ``source.window_values``, the log read hour by hour, as they
   read now. The scores of both are checked to be the same.
6. one-window: range-hourly over the first window alone (1,000,000 calls):
   what range-hourly's peak should stay near, however long the range.

Peak memory is the process's peak RSS during the work (``VmHWM``, reset by
writing 5 to ``/proc/self/clear_refs`` just before it) minus its RSS then
(interpreter, imports, and the in-memory window of floor and maths). Reset,
not ``ru_maxrss`` of the whole process: a transient peak while importing
(pyarrow) could otherwise hide the work's.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import RESULTS_DIR, Report, Table

WINDOW_ROWS = 10_000_000
BASELINE_ROWS = 100_000
FILES = 10
DEFAULT_ROUNDS = 3
HOUR = dt.datetime(2026, 1, 1, 10, tzinfo=dt.timezone.utc)
WAYS = ("floor", "maths", "log")
RANGE_WAYS = ("range-once", "range-hourly", "one-window")

_CHILD = rf"""
import datetime as dt, json, sys, time
from pathlib import Path
import numpy as np
from mlserve.assays import maths, source
from mlserve.assays.spec import Path as AssayPath
from mlserve.monitor.reader import micros

def status_kib(field):
    return int(Path("/proc/self/status").read_text().split(field + ":")[1].split()[0])

way, root = sys.argv[1], Path(sys.argv[2])
rng = np.random.default_rng(7)
baseline = rng.normal(0.0, 1.0, {BASELINE_ROWS})
summarizer = maths.Summarizer(num_bins=10)
if way in ("floor", "maths"):
    window = rng.normal(0.3, 1.0, {WINDOW_ROWS})
before = status_kib("VmRSS")
Path("/proc/self/clear_refs").write_text("5")  # the peak RSS (VmHWM) starts again from here
start = time.perf_counter()
if way == "floor":
    edges = np.quantile(baseline, np.arange(11) / 10)
    counts, _ = np.histogram(window, edges)
    score = float(counts.sum())
elif way in {RANGE_WAYS!r}:
    summary = maths.summarize_baseline(baseline, summarizer)
    path, hour = AssayPath("input", "INPUT", 0), dt.timedelta(hours=1)
    first = dt.datetime(2026, 1, 1, 10, tzinfo=dt.timezone.utc)
    spans = [(first + k * hour, first + (k + 1) * hour) for k in range({FILES})]
    if way == "one-window":
        spans = spans[:1]
    if way == "range-once":
        times, values = source.logged_values(root, "bench", 0, path, spans[0][0], spans[-1][1])
        cuts = (values[slice(*np.searchsorted(times, [micros(b), micros(e)]))] for b, e in spans)
    else:
        cuts = source.window_values(root, "bench", 0, path, spans)
    results = [maths.score_window(cut, summary, summarizer) for cut in cuts]
    assert sum(r.count for r in results) == len(spans) * {WINDOW_ROWS // FILES}
    score = [r.score for r in results]
else:
    summary = maths.summarize_baseline(baseline, summarizer)
    if way == "log":
        hour = dt.datetime(2026, 1, 1, 10, tzinfo=dt.timezone.utc)
        _, window = source.logged_values(
            root, "bench", 0, AssayPath("input", "INPUT", 0), hour, hour + dt.timedelta(hours=1)
        )
    result = maths.score_window(window, summary, summarizer)
    assert result.count == {WINDOW_ROWS}, result.count
    score = result.score
seconds = time.perf_counter() - start
print(json.dumps({{"seconds": seconds, "peak_kib": status_kib("VmHWM") - before, "score": score}}))
"""


def write_log(root: Path, spread: bool = False) -> None:
    """10M calls in the log's layout: time, version, and a one-element FP32 list column;
    10 files in one hour partition, or (``spread``) one in each of 10 hours."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(8)
    per_file = WINDOW_ROWS // FILES
    for n in range(FILES):
        hour = HOUR + dt.timedelta(hours=n if spread else 0)
        directory = root / "model=bench" / "date=2026-01-01" / f"hour={hour.hour:02d}"
        directory.mkdir(parents=True, exist_ok=True)
        start_us = int(hour.timestamp() * 1e6) + (0 if spread else n * per_file * 300)
        values = rng.normal(0.3, 1.0, per_file).astype(np.float32)
        offsets = np.arange(per_file + 1, dtype=np.int32)
        stamps = start_us + np.arange(per_file) * 300  # within the hour
        table = pa.table(
            {
                "time": pa.array(stamps, pa.timestamp("us", tz="UTC")),
                "version": pa.array(np.ones(per_file, np.int64)),
                "input.INPUT": pa.ListArray.from_arrays(pa.array(offsets), pa.array(values)),
            }
        )
        pq.write_table(table, directory / f"part-{n:02d}.parquet", compression="zstd")


def run_once(way: str, root: Path) -> dict[str, Any]:
    answer = subprocess.run(
        [sys.executable, "-c", _CHILD, way, str(root)],
        capture_output=True, text=True, check=True, timeout=600,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(answer.stdout)
    return result


def run(rounds: int = DEFAULT_ROUNDS) -> Report:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="assays-", dir=RESULTS_DIR))
    roots = dict.fromkeys(WAYS, work / "hour") | dict.fromkeys(RANGE_WAYS, work / "range")
    try:
        write_log(work / "hour")
        write_log(work / "range", spread=True)
        size = sum(p.stat().st_size for p in (work / "hour").rglob("*.parquet"))
        measured: dict[str, list[dict[str, Any]]] = {way: [] for way in roots}
        for _ in range(rounds):
            for way, root in roots.items():
                measured[way].append(run_once(way, root))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    once, hourly = ({json.dumps(m["score"]) for m in measured[way]} for way in RANGE_WAYS[:2])
    assert len(once) == 1, once  # the same scores in every round
    assert once == hourly, (once, hourly)  # and both ways
    return Report(
        f"assays: PSI of a {WINDOW_ROWS:,}-row window vs a {BASELINE_ROWS:,}-row baseline, 10 bins",
        [
            _table(measured, WAYS, "floor"),
            _table(measured, RANGE_WAYS, "range-once", peaks=True),
        ],
        [
            f"{rounds} interleaved rounds, each way in a fresh process",
            f"the log: {FILES} Parquet files, {size / 2**20:.0f} MiB on disk; the range: the "
            f"same calls, one file in each of {FILES} hours, scored as {FILES} 1-hour windows",
            "aims (issue 14): < 3 s and < 1 GiB",
        ],
    )


def _table(
    measured: dict[str, list[dict[str, Any]]], ways: tuple[str, ...], base: str, peaks: bool = False
) -> Table:
    """Seconds and peak memory of ``ways``, against ``base``'s median (and peak)."""
    base_seconds = statistics.median(m["seconds"] for m in measured[base])
    base_peak = max(m["peak_kib"] for m in measured[base]) / 1024
    rows = []
    for way in ways:
        seconds = [m["seconds"] for m in measured[way]]
        peak = max(m["peak_kib"] for m in measured[way]) / 1024
        median = statistics.median(seconds)
        rows.append([way, f"{median:.2f}", f"{min(seconds):.2f}", f"{max(seconds):.2f}",
                     f"{median / base_seconds:.2f}", f"{peak:.0f}"]
                    + ([f"{peak / base_peak:.2f}"] if peaks else []))  # fmt: skip
    header = ["way", "median s", "min s", "max s", f"vs {base}", "peak MiB above start"]
    return Table(header + ([f"peak vs {base}"] if peaks else []), rows)
