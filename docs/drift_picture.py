"""Draw docs/drift.png, the README's picture of a drift assay, with the real code.

Synthetic data: a baseline of 10,000 values, then 14 daily windows whose mean
drifts away from it a little more each day. They are binned and scored by
``mlserve.assays.maths`` (PSI on 5 quantile bins, warning 0.1, alert 0.25),
turned into the ``AssayResult`` messages RunAssay answers by
``mlserve.api.convert_assay``, and drawn by ``mlserve_client.assays.plot``,
the function behind ``mlserve assays plot``.

    .venv/bin/python docs/drift_picture.py [OUT]
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import numpy as np

from mlserve.api.convert_assay import assay_message, result_message
from mlserve.assays.maths import Summarizer, score_window, summarize_baseline
from mlserve.assays.service import WindowResult
from mlserve.assays.spec import AssayRecord, AssaySpec, Baseline, Window
from mlserve.assays.spec import Path as TensorPath
from mlserve_client.assays import plot

OUT = Path(__file__).resolve().parent / "drift.png"
BASELINE_SIZE = 10_000
WINDOW_SIZE = 1_000
DAYS = 14
# The window's mean moves from the baseline's to this many standard deviations
# above it over the 14 days: OK at first, then a warning, then alerts.
FINAL_SHIFT = 0.8
DAY = dt.timedelta(days=1)
START = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def main(out: Path = OUT) -> Path:
    """Score the synthetic windows and write the chart to ``out``."""
    rng = np.random.default_rng(7)  # fixed: the committed picture is reproducible
    summarizer = Summarizer(num_bins=5, warning_threshold=0.1, alert_threshold=0.25)
    spec = AssaySpec(
        name="add-drift",
        model="add",
        path=TensorPath("input", "INPUT0", 0),
        baseline=Baseline(START - DAY, START),
        window=Window(DAY, start=START),
        summarizer=summarizer,
    )
    summarizer.check()
    baseline = summarize_baseline(rng.normal(0.0, 1.0, BASELINE_SIZE), summarizer)
    results = []
    for day in range(DAYS):
        shift = FINAL_SHIFT * day / (DAYS - 1)
        window = rng.normal(shift, 1.0, WINDOW_SIZE)
        start = START + day * DAY
        scored = WindowResult(
            assay=spec.name,
            start=start,
            end=start + DAY,
            edges=baseline.edges,
            baseline_densities=baseline.densities,
            score=score_window(window, baseline, summarizer),
            compute_time=start + DAY,
        )
        results.append(result_message(scored))
    assay = assay_message(AssayRecord(spec, True, "default", START, START))
    return plot(assay, results, out)


if __name__ == "__main__":
    print(main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT))
