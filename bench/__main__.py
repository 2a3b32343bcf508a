"""``python -m bench [NAME|all] [--rounds 5] ...``: NAME is one of ``BENCHMARKS``.

Prints each benchmark's tables and appends a markdown summary of the run to
bench/results/latest.md (gitignored).
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import sys
import time
from collections.abc import Callable, Sequence

from bench import (
    assay_scheduler,
    assays,
    auth,
    catalog_list,
    cold_start,
    dedup,
    deploy,
    explain,
    flood,
    gateway,
    gateway_cpu,
    inference_log,
    oidc,
    pipeline,
    placement,
    rollout,
    s3_upload,
    training,
    upload,
    workers,
)
from bench.common import RESULTS_DIR, Report, machine_description, parse_size

LATEST = RESULTS_DIR / "latest.md"
BENCHMARKS = (
    "upload", "deploy", "gateway", "auth", "flood", "oidc", "catalog", "dedup", "pipeline", "log",
    "s3-upload", "training", "assays", "assay-scheduler", "rollout", "explain", "placement",
    "gateway-cpu", "workers", "cold-start",
)  # fmt: skip


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    root.add_argument(
        "which",
        nargs="?",
        choices=[*BENCHMARKS, "all"],
        default="all",
        help="which benchmark to run (default: %(default)s)",
    )
    root.add_argument(
        "--upload-size",
        type=parse_size,
        default=upload.DEFAULT_SIZE,
        help="size of the uploaded file, e.g. 2G or 256M (default: 2G)",
    )
    root.add_argument(
        "--chunk-size",
        type=parse_size,
        default=upload.DEFAULT_CHUNK,
        help="upload chunk size, at most 4M (default: 1M)",
    )
    root.add_argument(
        "--upload-rounds",
        type=int,
        default=upload.DEFAULT_ROUNDS,
        help="rounds of upload (cp / MLServe, interleaved) and of s3-upload (default: %(default)s)",
    )
    root.add_argument(
        "--settle",
        type=float,
        default=upload.DEFAULT_SETTLE,
        help="seconds of pause before each timed upload step (default: %(default)s)",
    )
    root.add_argument(
        "--dedup-size",
        type=parse_size,
        default=dedup.DEFAULT_SIZE,
        help="size of the file uploaded twice by the dedup benchmark (default: 1G)",
    )
    root.add_argument(
        "--dedup-rounds",
        type=int,
        default=dedup.DEFAULT_ROUNDS,
        help="first/second upload rounds of the dedup benchmark (default: %(default)s)",
    )
    root.add_argument(
        "--rounds",
        type=int,
        default=deploy.DEFAULT_ROUNDS,
        help="timed deploy rounds (default: %(default)s)",
    )
    root.add_argument(
        "--against",
        action="append",
        metavar="REV",
        help="gateway-cpu: a git revision to measure beside this checkout; repeatable "
        f"(default: {', '.join(gateway_cpu.DEFAULT_AGAINST)})",
    )
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if (
        args.upload_size <= 0
        or not 0 < args.chunk_size <= 4 * 1024 * 1024
        or args.rounds < 1
        or args.upload_rounds < 1
        or args.dedup_size <= 0
        or args.dedup_rounds < 1
        or args.settle < 0
    ):
        print("sizes and rounds must be positive, --settle not negative, --chunk-size at most 4M")
        return 2
    benchmarks: list[tuple[str, Callable[[], Report]]] = []
    if args.which in ("upload", "all"):
        benchmarks.append(
            (
                "upload",
                lambda: upload.run(
                    args.upload_size, args.chunk_size, args.upload_rounds, args.settle
                ),
            )
        )
    if args.which in ("deploy", "all"):
        benchmarks.append(("deploy", lambda: deploy.run(args.rounds)))
    if args.which in ("gateway", "all"):
        benchmarks.append(("gateway", lambda: gateway.run()))
    if args.which in ("gateway-cpu", "all"):
        against = tuple(args.against or gateway_cpu.DEFAULT_AGAINST)
        benchmarks.append(("gateway-cpu", lambda: gateway_cpu.run(against)))
    if args.which in ("workers", "all"):
        benchmarks.append(("workers", lambda: workers.run()))
    if args.which in ("catalog", "all"):
        benchmarks.append(("catalog", catalog_list.run))
    if args.which in ("dedup", "all"):
        benchmarks.append(
            ("dedup", lambda: dedup.run(args.dedup_size, args.dedup_rounds, args.settle))
        )
    if args.which in ("auth", "all"):
        benchmarks.append(("auth", lambda: auth.run()))
    if args.which in ("flood", "all"):
        benchmarks.append(("flood", lambda: flood.run()))
    if args.which in ("oidc", "all"):
        benchmarks.append(("oidc", lambda: oidc.run()))
    if args.which in ("pipeline", "all"):
        benchmarks.append(("pipeline", lambda: pipeline.run()))
    if args.which in ("s3-upload", "all"):
        benchmarks.append(
            ("s3-upload", lambda: s3_upload.run(args.upload_size, args.upload_rounds))
        )
    if args.which in ("training", "all"):
        benchmarks.append(("training", lambda: training.run()))
    if args.which in ("assays", "all"):
        benchmarks.append(("assays", lambda: assays.run()))
    if args.which in ("assay-scheduler", "all"):
        benchmarks.append(("assay-scheduler", lambda: assay_scheduler.run()))
    if args.which in ("rollout", "all"):
        benchmarks.append(("rollout", lambda: rollout.run()))
    if args.which in ("placement", "all"):
        benchmarks.append(("placement", lambda: placement.run()))
    if args.which in ("cold-start", "all"):
        benchmarks.append(("cold-start", lambda: cold_start.run(args.rounds)))
    if args.which in ("explain", "all"):
        benchmarks.append(("explain", lambda: explain.run()))
    if args.which in ("log", "all"):
        benchmarks.append(("log", inference_log.run))

    started = dt.datetime.now().astimezone()
    reports: list[Report] = []
    for name, run in benchmarks:
        began = time.monotonic()
        result = run()
        reports.append(result)
        print(f"\n{result.text()}({name} took {time.monotonic() - began:.0f}s)\n", flush=True)
    append_summary(started, argv if argv is not None else sys.argv[1:], reports)
    print(f"summary appended to {LATEST}")
    return 0


def append_summary(started: dt.datetime, argv: Sequence[str], reports: Sequence[Report]) -> None:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python -m bench", *argv])
    heading = (
        f"## {started:%Y-%m-%d %H:%M %Z}: `{command}`\n\n"
        f"{machine_description()}; Python {platform.python_version()}; {platform.platform()}\n"
    )
    body = "\n".join(report.markdown() for report in reports)
    with LATEST.open("a", encoding="utf-8") as latest:
        latest.write(f"{heading}\n{body}\n")


if __name__ == "__main__":
    sys.exit(main())
