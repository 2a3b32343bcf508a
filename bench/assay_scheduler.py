"""What the assay scheduler costs an idle MLServe (issue 14): 100 active assays
with 1-minute windows on a quiet log (no traffic), against none, in one run.

One ``mlserve serve`` (its embedded Triton too, as in production) with a
model and 100 assays of it (inline baseline, 1-minute windows, 10 bins, PSI).
Phases alternate round by round: ``off`` (every assay inactive) and ``on``
(all 100 active: the scheduler polls each second and scores each assay's
window once a minute). Each phase first waits ``SETTLE_SECONDS`` (the catch-up
of the windows an off phase skipped is not steady state), then measures the
MLServe process's CPU time (user + system, every thread; Triton is a child
process and not counted) over ``PHASE_SECONDS`` of wall-clock time: its share
of one CPU. Each phase spans at least one window end of every assay.
"""

from __future__ import annotations

import datetime as dt
import statistics
import tempfile
import time
from pathlib import Path

from google.protobuf.timestamp_pb2 import Timestamp

from bench.common import RESULTS_DIR, MLServeProcess, Report, Table, cpu_seconds
from mlserve_api.v1 import assay_pb2, assay_pb2_grpc
from tests.support.mlserve import Stubs
from tests.support.models import scale_model_files
from tests.support.pipelines import upload

ASSAYS = 100
PHASE_SECONDS = 75.0
SETTLE_SECONDS = 5.0
DEFAULT_ROUNDS = 2
MODEL = "quiet"


def _create_assays(stubs: Stubs, assays: assay_pb2_grpc.AssayServiceStub) -> list[str]:
    start = Timestamp()
    start.FromDatetime(dt.datetime.now(dt.timezone.utc).replace(second=0, microsecond=0))
    names = [f"{MODEL}-drift-{n:03d}" for n in range(ASSAYS)]
    for name in names:
        assays.CreateAssay(
            assay_pb2.CreateAssayRequest(
                assay=assay_pb2.Assay(
                    name=name,
                    model=MODEL,
                    path=assay_pb2.AssayPath(tensor="input INPUT 0"),
                    baseline=assay_pb2.AssayBaseline(
                        values=assay_pb2.AssayInlineValues(values=[i / 100 for i in range(100)])
                    ),
                    window=assay_pb2.AssayWindow(width_seconds=60, start_time=start),
                    summarizer=assay_pb2.AssaySummarizer(num_bins=10),
                )
            ),
            metadata=stubs.auth,
        )
    return names


def _set_active(
    stubs: Stubs, assays: assay_pb2_grpc.AssayServiceStub, names: list[str], active: bool
) -> None:
    for name in names:
        assays.SetAssayActive(
            assay_pb2.SetAssayActiveRequest(name=name, active=active), metadata=stubs.auth
        )


def _share(pid: int) -> float:
    """The process's CPU seconds per wall-clock second over one phase."""
    cpu, wall = cpu_seconds(pid), time.monotonic()
    time.sleep(PHASE_SECONDS)
    return (cpu_seconds(pid) - cpu) / (time.monotonic() - wall)


def _results(stubs: Stubs, assays: assay_pb2_grpc.AssayServiceStub, names: list[str]) -> int:
    total = 0
    for name in names:
        answer = assays.ListAssayResults(
            assay_pb2.ListAssayResultsRequest(name=name, page_size=1000), metadata=stubs.auth
        )
        total += len(answer.results)
    return total


def run(rounds: int = DEFAULT_ROUNDS) -> Report:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    shares: dict[str, list[float]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory(dir=RESULTS_DIR) as work:
        server = MLServeProcess(Path(work) / "home").start()
        try:
            assert server.process is not None
            pid = server.process.pid
            stubs = server.stubs()
            assays = assay_pb2_grpc.AssayServiceStub(stubs.channel)
            upload(stubs, scale_model_files(MODEL, dims=(4,)), MODEL)
            names = _create_assays(stubs, assays)
            _set_active(stubs, assays, names, False)
            for _ in range(rounds):
                for phase in ("off", "on"):
                    _set_active(stubs, assays, names, phase == "on")
                    time.sleep(SETTLE_SECONDS)
                    shares[phase].append(_share(pid))
            stored = _results(stubs, assays, names)
        finally:
            server.stop()
    off, on = statistics.median(shares["off"]), statistics.median(shares["on"])
    rows = [
        [phase, str(ASSAYS if phase == "on" else 0),
         f"{100 * statistics.median(values):.2f}", f"{100 * min(values):.2f}",
         f"{100 * max(values):.2f}"]
        for phase, values in shares.items()
    ]  # fmt: skip
    return Report(
        f"assay scheduler: {ASSAYS} active assays, 1-minute windows, quiet log, vs none",
        [Table(["phase", "active assays", "median CPU %", "min %", "max %"], rows)],
        [
            f"{rounds} rounds of off then on, {PHASE_SECONDS:.0f} s measured per phase after "
            f"{SETTLE_SECONDS:.0f} s settling; CPU % = MLServe's CPU seconds per wall second "
            "(100 = one core), Triton not counted",
            f"scheduler overhead: {100 * (on - off):+.2f} points of one core "
            f"({100 * (on - off) / ASSAYS:.4f} per assay); {stored} windows stored",
        ],
    )
