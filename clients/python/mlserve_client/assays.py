"""Assay specs in YAML, and the drift chart.

    name: add-drift
    model: add                    # or pipeline: chain (its own inputs and outputs)
    path: input INPUT0 0          # Wallaroo's form; or {role: input, tensor: INPUT0, index: 0}
    baseline:                     # a time range of the log ...
      start: 2026-01-01T00:00:00Z
      end: 2026-01-02T00:00:00Z
    # baseline: {values: [0.1, 0.4, 0.35]}   ... or inline values
    # baseline: {dataset: trips, version: 2, column: fare}   ... or a dataset's column
    # baseline: {artifact: train.csv, model: add, version: 1, column: fare}  ... or an artifact's
    window: {width: 24h}          # interval (default: width), start, run_until
    summarizer: {metric: psi, num_bins: 5, warning_threshold: 0.1, alert_threshold: 0.25}
    webhook_url: http://127.0.0.1:9000/alerts

Summarizer fields are the proto's (``bin_mode`` quantile|equal|provided,
``aggregation`` density|cumulative, ``metric`` psi|max_diff|sum_diff|ks|
wasserstein|jensen_shannon, ``num_bins``, ``add_outlier_edges``,
``bin_weights``, ``provided_edges``); spans are ``90s``, ``15m``, ``1h``, ``7d``.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from mlserve_api.v1 import assay_pb2
from mlserve_client.errors import ClientError
from mlserve_client.inference_logs import parse_span

_ENUMS = {
    "bin_mode": "ASSAY_BIN_MODE_",
    "aggregation": "ASSAY_AGGREGATION_",
    "metric": "ASSAY_METRIC_",
}


class AssaySpecError(ClientError):
    """An assay spec file that cannot be read as an Assay."""


def read_assay_spec(path: Path) -> assay_pb2.Assay:
    """The Assay a YAML spec file describes."""
    try:
        spec = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise AssaySpecError(f"{path}: {error}") from None
    return assay_from_spec(spec)


def assay_from_spec(spec: Any) -> assay_pb2.Assay:
    """The Assay message a parsed spec (a mapping) describes."""
    if not isinstance(spec, dict):
        raise AssaySpecError(
            "an assay spec is a mapping with name, model (or pipeline), path, baseline, window"
        )
    spec = dict(spec)
    try:
        path = spec.pop("path", None)
        baseline = spec.pop("baseline", None) or {}
        window = spec.pop("window", None) or {}
        summarizer = dict(spec.pop("summarizer", None) or {})
        for field, prefix in _ENUMS.items():
            if isinstance(summarizer.get(field), str):
                summarizer[field] = prefix + summarizer[field].upper()
        message = json_format.ParseDict(spec, assay_pb2.Assay())
        json_format.ParseDict(summarizer, message.summarizer)
        message.path.CopyFrom(_path(path))
        if "values" in baseline:
            message.baseline.values.values.extend(float(v) for v in baseline["values"])
        elif "dataset" in baseline:
            json_format.ParseDict(baseline, message.baseline.dataset)
        elif "artifact" in baseline:
            table = dict(baseline)
            table["path"] = table.pop("artifact")
            json_format.ParseDict(table, message.baseline.artifact)
        elif baseline:
            message.baseline.range.start_time.CopyFrom(_time(baseline["start"]))
            message.baseline.range.end_time.CopyFrom(_time(baseline["end"]))
        message.window.width_seconds = _seconds(window.get("width", 0))
        message.window.interval_seconds = _seconds(window.get("interval", 0))
        if window.get("start"):
            message.window.start_time.CopyFrom(_time(window["start"]))
        if window.get("run_until"):
            message.window.run_until.CopyFrom(_time(window["run_until"]))
    except (json_format.ParseError, KeyError, TypeError, ValueError) as error:
        raise AssaySpecError(f"the assay spec is not valid: {error}") from None
    return message


def _path(value: Any) -> assay_pb2.AssayPath:
    if isinstance(value, str):
        return assay_pb2.AssayPath(tensor=value)  # "input 0 0": the server parses it
    if isinstance(value, dict):
        return json_format.ParseDict(value, assay_pb2.AssayPath())
    raise ValueError("path is 'input|output TENSOR INDEX' or {role, tensor, index}")


def _seconds(value: Any) -> int:
    if isinstance(value, int | float):
        return int(value)
    return int(parse_span(str(value)).total_seconds())


def _time(value: Any) -> Timestamp:
    stamp = Timestamp()
    if isinstance(value, dt.datetime):
        stamp.FromDatetime(value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc))
    else:
        stamp.FromJsonString(str(value))
    return stamp


def status_name(status: int) -> str:
    """ASSAY_STATUS_ALERT as "alert"."""
    return assay_pb2.AssayStatus.Name(status).removeprefix("ASSAY_STATUS_").lower()  # type: ignore[arg-type]


def plot(assay: assay_pb2.Assay, results: Sequence[assay_pb2.AssayResult], out: Path) -> Path:
    """A PNG: scores over time with both thresholds (alerts in red), and the baseline's
    and the latest window's densities as bars."""
    import matplotlib
    import matplotlib.dates

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (scores, bars) = plt.subplots(2, 1, figsize=(10, 7), constrained_layout=True)
    scored = [r for r in results if r.HasField("score")]
    times = [r.window_start.ToDatetime() for r in scored]
    values = [r.score for r in scored]
    scores.plot(times, values, "-", color="tab:blue", label="score")
    colours = {
        assay_pb2.ASSAY_STATUS_OK: "tab:green",
        assay_pb2.ASSAY_STATUS_WARNING: "tab:orange",
        assay_pb2.ASSAY_STATUS_ALERT: "tab:red",
    }
    scores.scatter(times, values, c=[colours[r.status] for r in scored], zorder=3)
    summarizer = assay.summarizer
    scores.axhline(summarizer.alert_threshold, color="tab:red", linestyle="--",
                   label=f"alert {summarizer.alert_threshold:g}")  # fmt: skip
    if summarizer.HasField("warning_threshold"):
        scores.axhline(summarizer.warning_threshold, color="tab:orange", linestyle="--",
                       label=f"warning {summarizer.warning_threshold:g}")  # fmt: skip
    empty = [r.window_start.ToDatetime() for r in results if not r.HasField("score")]
    if empty:
        scores.scatter(empty, [0] * len(empty), marker="x", color="grey", label="no data")
    metric = assay_pb2.AssayMetric.Name(summarizer.metric).removeprefix("ASSAY_METRIC_").lower()
    scores.set_title(f"assay {assay.name}: {metric} of {assay.model} "
                     f"{assay.path.role} {assay.path.tensor}[{assay.path.index}]")  # fmt: skip
    scores.set_xlabel("window start (UTC)")
    scores.set_ylabel(metric)
    scores.legend(loc="upper left")
    # Not figure.autofmt_xdate(): it hides the tick labels of every axes but the bottom one.
    scores.xaxis.set_major_formatter(
        matplotlib.dates.DateFormatter("%m-%d %H:%M:%S")  # type: ignore[no-untyped-call]
    )
    scores.tick_params(axis="x", labelrotation=20)
    top = max([summarizer.alert_threshold * 1.5, *values])
    scores.axhspan(summarizer.alert_threshold, top * 1.05, color="tab:red", alpha=0.08)
    if scored:
        latest = scored[-1]
        labels = _bin_labels(list(latest.edges), len(latest.baseline_densities))
        positions = range(len(labels))
        width = 0.4
        bars.bar([p - width / 2 for p in positions], latest.baseline_densities, width,
                 label="baseline", color="tab:grey")  # fmt: skip
        bars.bar([p + width / 2 for p in positions], latest.window_densities, width,
                 label=f"window {latest.window_start.ToJsonString()}",
                 color=colours[latest.status])  # fmt: skip
        bars.set_xticks(list(positions), labels, rotation=30, ha="right", fontsize=8)
        bars.set_ylabel("density")
        bars.set_title(f"baseline vs latest window ({status_name(latest.status)}, "
                       f"score {latest.score:.3g})")  # fmt: skip
        bars.legend()
    else:
        bars.text(0.5, 0.5, "no scored window yet", ha="center", transform=bars.transAxes)
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out


def _bin_labels(edges: list[float], bins: int) -> list[str]:
    inner = [f"({a:.3g}, {b:.3g}]" for a, b in itertools.pairwise(edges)]
    if inner:
        inner[0] = "[" + inner[0][1:]
    if bins == len(inner) + 2:
        return [f"< {edges[0]:.3g}", *inner, f"> {edges[-1]:.3g}"]
    return inner
