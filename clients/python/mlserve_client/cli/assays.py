"""``mlserve assays``: drift assays over the inference log, their results and chart."""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Sequence
from pathlib import Path

from mlserve_api.v1 import assay_pb2
from mlserve_client import Client
from mlserve_client.assays import plot, read_assay_spec, status_name
from mlserve_client.cli.common import Subcommands, command, group
from mlserve_client.cli.output import print_table
from mlserve_client.inference_logs import parse_span


def add_commands(commands: Subcommands, connection: argparse.ArgumentParser) -> None:
    assays = group(
        commands, "assays", "drift assays: a model's or pipeline's logged traffic vs a baseline"
    )
    create = command(assays, "create", _create, "create an assay from a YAML spec", connection,
                     example="mlserve assays create drift.yaml")  # fmt: skip
    create.add_argument("spec", type=Path, help="YAML spec (see mlserve_client.assays)")
    listing = command(assays, "list", _list, "list assays", connection,
                      example="mlserve assays list --model add")  # fmt: skip
    listing.add_argument("--model", default="", help="only this model's")
    listing.add_argument("--pipeline", default="", help="only this pipeline's")
    listing.add_argument("--workspace", default="", help="only this workspace's")
    get = command(assays, "get", _get, "show one assay", connection,
                  example="mlserve assays get add-drift")  # fmt: skip
    get.add_argument("name")
    run = command(assays, "run", _run, "score every window of a time range (stores nothing)",
                  connection, example="mlserve assays run add-drift --since 7d")  # fmt: skip
    run.add_argument("name", help="a stored assay, or a YAML spec file with --spec")
    run.add_argument("--spec", action="store_true", help="NAME is a YAML spec file")
    run.add_argument("--since", type=parse_span, default=dt.timedelta(days=1),
                     help="windows starting this recently, e.g. 6h, 7d (default: 1d)")  # fmt: skip
    results = command(assays, "results", _results, "stored results of scheduled runs",
                      connection,
                      example="mlserve assays results add-drift --since 1d")  # fmt: skip
    results.add_argument("name")
    results.add_argument("--since", type=parse_span, help="only this recent, e.g. 1h, 7d")
    chart = command(assays, "plot", _plot, "chart scores over time and the latest densities",
                    connection,
                    example="mlserve assays plot add-drift --out drift.png")  # fmt: skip
    chart.add_argument("name")
    chart.add_argument("--out", type=Path, default=Path("drift.png"), help="PNG to write")
    chart.add_argument("--since", type=parse_span, help="only this recent, e.g. 1h, 7d")


def _create(client: Client, args: argparse.Namespace) -> int:
    assay = client.create_assay(args.spec)
    print(f"assay {assay.name}: {_owner(assay)}, {_path(assay)}, active")
    return 0


def _list(client: Client, args: argparse.Namespace) -> int:
    print_table(
        ("NAME", "OF", "PATH", "METRIC", "WINDOW S", "ACTIVE"),
        (
            (a.name, _owner(a), _path(a), _metric(a), str(a.window.width_seconds), str(a.active))
            for a in client.list_assays(args.model, args.workspace, args.pipeline)
        ),
    )
    return 0


def _get(client: Client, args: argparse.Namespace) -> int:
    a = client.get_assay(args.name)
    s = a.summarizer
    warning = f"{s.warning_threshold:g}" if s.HasField("warning_threshold") else "-"
    print(f"assay {a.name}  {_owner(a)}  version {a.version or 'any'}  path {_path(a)}\n"
          f"baseline {_baseline(a)}\n"
          f"window {a.window.width_seconds}s every {a.window.interval_seconds}s  "
          f"metric {_metric(a)}  bins {s.num_bins}  warning {warning}  "
          f"alert {s.alert_threshold:g}  active {a.active}")  # fmt: skip
    return 0


def _run(client: Client, args: argparse.Namespace) -> int:
    end = dt.datetime.now(dt.timezone.utc)
    target: str | assay_pb2.Assay = read_assay_spec(Path(args.name)) if args.spec else args.name
    answer = client.run_assay(target, end - args.since, end)
    b = answer.baseline
    print(f"baseline: {b.count} values, min {b.min:.4g} max {b.max:.4g} mean {b.mean:.4g} "
          f"median {b.median:.4g} std {b.std:.4g}")  # fmt: skip
    _print_results(answer.results)
    return 0


def _results(client: Client, args: argparse.Namespace) -> int:
    _print_results(list(client.assay_results(args.name, args.since)))
    return 0


def _plot(client: Client, args: argparse.Namespace) -> int:
    assay = client.get_assay(args.name)
    results = list(client.assay_results(args.name, args.since))
    print(f"wrote {plot(assay, results, args.out)} ({len(results)} windows)")
    return 0


def _print_results(results: Sequence[assay_pb2.AssayResult]) -> None:
    print_table(
        ("WINDOW START", "COUNT", "SCORE", "STATUS"),
        (
            (
                r.window_start.ToJsonString(),
                str(r.count),
                f"{r.score:.4f}" if r.HasField("score") else "-",
                status_name(r.status),
            )
            for r in results
        ),
    )


def _owner(a: assay_pb2.Assay) -> str:
    return f"pipeline {a.pipeline}" if a.pipeline else f"model {a.model}"


def _baseline(a: assay_pb2.Assay) -> str:
    b = a.baseline
    source = b.WhichOneof("source")
    if source == "range":
        return f"log {b.range.start_time.ToJsonString()} to {b.range.end_time.ToJsonString()}"
    if source == "dataset":
        return f"dataset {b.dataset.dataset} version {b.dataset.version} column {b.dataset.column}"
    if source == "artifact":
        item = b.artifact
        return f"artifact {item.path} of {item.model} version {item.version} column {item.column}"
    return f"{len(b.values.values)} values"


def _path(a: assay_pb2.Assay) -> str:
    return f"{a.path.role} {a.path.tensor} {a.path.index}"


def _metric(a: assay_pb2.Assay) -> str:
    return assay_pb2.AssayMetric.Name(a.summarizer.metric).removeprefix("ASSAY_METRIC_").lower()
