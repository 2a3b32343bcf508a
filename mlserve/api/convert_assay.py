"""Assay messages (mlserve.v1.AssayService) to and from the domain's types."""

from __future__ import annotations

import datetime as dt
from typing import Any

from mlserve.api.convert import timestamp
from mlserve.api.convert_log import time_of
from mlserve.assays.maths import (
    DEFAULT_ALERT_THRESHOLD,
    Aggregation,
    BaselineSummary,
    BinMode,
    Metric,
    Status,
    Summarizer,
)
from mlserve.assays.service import WindowResult
from mlserve.assays.spec import (
    ARTIFACT,
    DATASET,
    AssayRecord,
    AssaySpec,
    Baseline,
    Path,
    TableColumn,
    Window,
)
from mlserve.core.errors import InvalidArgument
from mlserve_api.v1 import assay_pb2

_BIN_MODES = {
    assay_pb2.ASSAY_BIN_MODE_UNSPECIFIED: BinMode.QUANTILE,
    assay_pb2.ASSAY_BIN_MODE_QUANTILE: BinMode.QUANTILE,
    assay_pb2.ASSAY_BIN_MODE_EQUAL: BinMode.EQUAL,
    assay_pb2.ASSAY_BIN_MODE_PROVIDED: BinMode.PROVIDED,
}
_AGGREGATIONS = {
    assay_pb2.ASSAY_AGGREGATION_UNSPECIFIED: Aggregation.DENSITY,
    assay_pb2.ASSAY_AGGREGATION_DENSITY: Aggregation.DENSITY,
    assay_pb2.ASSAY_AGGREGATION_CUMULATIVE: Aggregation.CUMULATIVE,
}
_METRICS = {
    assay_pb2.ASSAY_METRIC_UNSPECIFIED: Metric.PSI,
    assay_pb2.ASSAY_METRIC_PSI: Metric.PSI,
    assay_pb2.ASSAY_METRIC_MAX_DIFF: Metric.MAX_DIFF,
    assay_pb2.ASSAY_METRIC_SUM_DIFF: Metric.SUM_DIFF,
    assay_pb2.ASSAY_METRIC_KS: Metric.KS,
    assay_pb2.ASSAY_METRIC_WASSERSTEIN: Metric.WASSERSTEIN,
    assay_pb2.ASSAY_METRIC_JENSEN_SHANNON: Metric.JENSEN_SHANNON,
}
_STATUSES = {
    Status.OK: assay_pb2.ASSAY_STATUS_OK,
    Status.WARNING: assay_pb2.ASSAY_STATUS_WARNING,
    Status.ALERT: assay_pb2.ASSAY_STATUS_ALERT,
    Status.NO_DATA: assay_pb2.ASSAY_STATUS_NO_DATA,
}
DEFAULT_NUM_BINS = 5


def _enum(table: dict[Any, Any], value: int, field: str) -> Any:
    if value not in table:
        names = ", ".join(str(k) for k in table if k)
        raise InvalidArgument(f"{field} {value} is not known: use one of {names}")
    return table[value]


def summarizer(message: assay_pb2.AssaySummarizer) -> Summarizer:
    """The summarizer a message asks for (defaults filled in; not yet checked)."""
    return Summarizer(
        bin_mode=_enum(_BIN_MODES, message.bin_mode, "summarizer.bin_mode"),
        num_bins=message.num_bins or DEFAULT_NUM_BINS,
        add_outlier_edges=(
            message.add_outlier_edges if message.HasField("add_outlier_edges") else True
        ),
        bin_weights=tuple(message.bin_weights),
        provided_edges=tuple(message.provided_edges),
        aggregation=_enum(_AGGREGATIONS, message.aggregation, "summarizer.aggregation"),
        metric=_enum(_METRICS, message.metric, "summarizer.metric"),
        warning_threshold=(
            message.warning_threshold if message.HasField("warning_threshold") else None
        ),
        alert_threshold=(
            message.alert_threshold
            if message.HasField("alert_threshold")
            else DEFAULT_ALERT_THRESHOLD
        ),
    )


def spec(message: assay_pb2.Assay) -> AssaySpec:
    """The assay a message describes (checked by the domain)."""
    source = message.baseline.WhichOneof("source")
    if source == "range":
        span = message.baseline.range
        baseline = Baseline(
            time_of(span.start_time, span.HasField("start_time")),
            time_of(span.end_time, span.HasField("end_time")),
        )
        if baseline.start is None or baseline.end is None:
            raise InvalidArgument("baseline.range needs start_time and end_time")
    elif source == "dataset":
        table = message.baseline.dataset
        column = TableColumn(DATASET, table.dataset, table.version, table.column)
        baseline = Baseline(column=column)
    elif source == "artifact":
        item = message.baseline.artifact
        column = TableColumn(ARTIFACT, item.model, item.version, item.column, item.path)
        baseline = Baseline(column=column)
    else:
        baseline = Baseline(values=tuple(message.baseline.values.values))
    window = message.window
    if window.width_seconds <= 0:
        raise InvalidArgument("window.width_seconds must be positive (e.g. 86400 for 24h)")
    if window.interval_seconds < 0:
        raise InvalidArgument("window.interval_seconds must be positive, or 0 for the width")
    return AssaySpec(
        name=message.name,
        model=message.model,
        pipeline=message.pipeline,
        version=message.version,
        path=_path(message.path),
        baseline=baseline,
        window=Window(
            dt.timedelta(seconds=window.width_seconds),
            dt.timedelta(seconds=window.interval_seconds) if window.interval_seconds else None,
            time_of(window.start_time, window.HasField("start_time")),
            time_of(window.run_until, window.HasField("run_until")),
        ),
        summarizer=summarizer(message.summarizer),
        webhook_url=message.webhook_url,
    )


def _path(message: assay_pb2.AssayPath) -> Path:
    if not message.role and " " in message.tensor.strip():
        return Path.parse(message.tensor)  # the "input 0 0" form in one string
    if not message.tensor:
        raise InvalidArgument("path.tensor is required: a tensor name or its position ('0')")
    return Path(message.role, message.tensor, message.index)


def assay_message(record: AssayRecord) -> assay_pb2.Assay:
    s = record.spec
    message = assay_pb2.Assay(
        name=s.name,
        model=s.model,
        pipeline=s.pipeline,
        version=s.version,
        path=assay_pb2.AssayPath(role=s.path.role, tensor=s.path.tensor, index=s.path.index),
        window=assay_pb2.AssayWindow(
            width_seconds=int(s.window.width.total_seconds()),
            interval_seconds=int(s.window.step.total_seconds()),
            start_time=timestamp(s.window.start),
            run_until=timestamp(s.window.run_until),
        ),
        summarizer=_summarizer_message(s.summarizer),
        active=record.active,
        webhook_url=s.webhook_url,
        workspace=record.workspace,
        create_time=timestamp(record.create_time),
        update_time=timestamp(record.update_time),
    )
    if s.baseline.is_range:
        message.baseline.range.CopyFrom(
            assay_pb2.AssayTimeRange(
                start_time=timestamp(s.baseline.start), end_time=timestamp(s.baseline.end)
            )
        )
    elif (column := s.baseline.column) is not None and column.source == DATASET:
        message.baseline.dataset.CopyFrom(
            assay_pb2.AssayDatasetColumn(
                dataset=column.owner, version=column.version, column=column.column
            )
        )
    elif column is not None:
        message.baseline.artifact.CopyFrom(
            assay_pb2.AssayArtifactColumn(
                model=column.owner, version=column.version, path=column.path, column=column.column
            )
        )
    else:
        message.baseline.values.values.extend(s.baseline.values)
    return message


def _summarizer_message(s: Summarizer) -> assay_pb2.AssaySummarizer:
    message = assay_pb2.AssaySummarizer(
        bin_mode=_key(_BIN_MODES, s.bin_mode),
        num_bins=s.num_bins,
        add_outlier_edges=s.add_outlier_edges,
        bin_weights=s.bin_weights,
        provided_edges=s.provided_edges,
        aggregation=_key(_AGGREGATIONS, s.aggregation),
        metric=_key(_METRICS, s.metric),
        alert_threshold=s.alert_threshold,
    )
    if s.warning_threshold is not None:
        message.warning_threshold = s.warning_threshold
    return message


def _key(table: dict[Any, Any], value: Any) -> Any:
    return next(k for k, v in table.items() if v is value and k)


def baseline_message(summary: BaselineSummary) -> assay_pb2.AssayBaselineSummary:
    return assay_pb2.AssayBaselineSummary(
        edges=summary.edges.tolist(),
        counts=summary.counts.tolist(),
        densities=summary.densities.tolist(),
        count=summary.count,
        min=summary.minimum,
        max=summary.maximum,
        mean=summary.mean,
        median=summary.median,
        std=summary.std,
    )


def result_message(result: WindowResult) -> assay_pb2.AssayResult:
    score = result.score
    message = assay_pb2.AssayResult(
        assay=result.assay,
        window_start=timestamp(result.start),
        window_end=timestamp(result.end),
        count=score.count,
        edges=result.edges.tolist(),
        baseline_densities=result.baseline_densities.tolist(),
        window_densities=score.window_densities.tolist(),
        bin_scores=score.bin_scores.tolist(),
        status=_STATUSES[score.status],
        compute_time=timestamp(result.compute_time),
    )
    if score.score is not None:
        message.score = score.score
    if score.max_diff_bin is not None:
        message.max_diff_bin = score.max_diff_bin
    return message
