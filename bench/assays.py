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

Peak memory is the process's maximum RSS (``ru_maxrss``) minus that of the
same process before the work (interpreter and imports).
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

import numpy as np

from bench.common import RESULTS_DIR, Report, Table

WINDOW_ROWS = 10_000_000
BASELINE_ROWS = 100_000
FILES = 10
DEFAULT_ROUNDS = 3
HOUR = dt.datetime(2026, 1, 1, 10, tzinfo=dt.timezone.utc)
WAYS = ("floor", "maths", "log")

_CHILD = rf"""
import datetime as dt, json, resource, sys, time
from pathlib import Path
import numpy as np
from mlserve.assays import maths, source
from mlserve.assays.spec import Path as AssayPath

way, root = sys.argv[1], Path(sys.argv[2])
rng = np.random.default_rng(7)
baseline = rng.normal(0.0, 1.0, {BASELINE_ROWS})
summarizer = maths.Summarizer(num_bins=10)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if way != "log":
    window = rng.normal(0.3, 1.0, {WINDOW_ROWS})
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
if way == "floor":
    edges = np.quantile(baseline, np.arange(11) / 10)
    counts, _ = np.histogram(window, edges)
    score = float(counts.sum())
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
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"seconds": seconds, "peak_kib": peak - before, "score": score}}))
"""


def write_log(root: Path) -> None:
    """10M calls in the log's layout: time, version, and a one-element FP32 list column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory = root / "model=bench" / "date=2026-01-01" / "hour=10"
    directory.mkdir(parents=True)
    rng = np.random.default_rng(8)
    per_file = WINDOW_ROWS // FILES
    start_us = int(HOUR.timestamp() * 1e6)
    for n in range(FILES):
        values = rng.normal(0.3, 1.0, per_file).astype(np.float32)
        offsets = np.arange(per_file + 1, dtype=np.int32)
        stamps = start_us + (n * per_file + np.arange(per_file)) * 300  # within the hour
        table = pa.table(
            {
                "time": pa.array(stamps, pa.timestamp("us", tz="UTC")),
                "version": pa.array(np.ones(per_file, np.int64)),
                "input.INPUT": pa.ListArray.from_arrays(pa.array(offsets), pa.array(values)),
            }
        )
        pq.write_table(table, directory / f"part-{n:02d}.parquet", compression="zstd")


def run_once(way: str, root: Path) -> dict[str, float]:
    answer = subprocess.run(
        [sys.executable, "-c", _CHILD, way, str(root)],
        capture_output=True, text=True, check=True, timeout=600,
    )  # fmt: skip
    result: dict[str, float] = json.loads(answer.stdout)
    return result


def run(rounds: int = DEFAULT_ROUNDS) -> Report:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="assays-", dir=RESULTS_DIR))
    try:
        write_log(work)
        size = sum(p.stat().st_size for p in work.rglob("*.parquet"))
        measured: dict[str, list[dict[str, float]]] = {way: [] for way in WAYS}
        for _ in range(rounds):
            for way in WAYS:
                measured[way].append(run_once(way, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    floor = statistics.median(m["seconds"] for m in measured["floor"])
    rows = []
    for way in WAYS:
        seconds = [m["seconds"] for m in measured[way]]
        peak = max(m["peak_kib"] for m in measured[way]) / 1024
        median = statistics.median(seconds)
        rows.append([way, f"{median:.2f}", f"{min(seconds):.2f}", f"{max(seconds):.2f}",
                     f"{median / floor:.2f}", f"{peak:.0f}"])  # fmt: skip
    return Report(
        f"assays: PSI of a {WINDOW_ROWS:,}-row window vs a {BASELINE_ROWS:,}-row baseline, 10 bins",
        [Table(["way", "median s", "min s", "max s", "vs floor", "peak MiB above start"], rows)],
        [
            f"{rounds} interleaved rounds, each way in a fresh process",
            f"the log: {FILES} Parquet files, {size / 2**20:.0f} MiB on disk",
            "aims (issue 14): < 3 s and < 1 GiB",
        ],
    )
