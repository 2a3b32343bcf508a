"""What an assay is: a model or a pipeline, a path to one number per logged call,
a baseline, windows and a summarizer; and the checks each field must pass
(InvalidArgument naming the field)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from mlserve.assays.maths import Aggregation, BinMode, Metric, Summarizer
from mlserve.catalog.pipelines import Tensor
from mlserve.core.errors import InvalidArgument

INPUT, OUTPUT = "input", "output"
MAX_WINDOWS_PER_RUN = 10_000
# Triton's BYTES tensors, as a config (TYPE_STRING) and a pipeline (STRING) name them.
_BYTES = "STRING"
DATASET, ARTIFACT = "dataset", "artifact"


@dataclass(frozen=True)
class Path:
    """``role`` input|output, the tensor's name (or position in the config), the
    element's index within a call's flattened tensor."""

    role: str
    tensor: str
    index: int = 0

    @staticmethod
    def parse(text: str) -> Path:
        """Wallaroo's ``input 0 0`` form: role, tensor (name or position), element."""
        parts = text.split()
        if len(parts) not in (2, 3) or (len(parts) == 3 and not parts[2].lstrip("-").isdigit()):
            raise InvalidArgument(
                f"path {text!r} is not 'input|output TENSOR [INDEX]' (e.g. 'input 0 0')"
            )
        return Path(parts[0], parts[1], int(parts[2]) if len(parts) == 3 else 0)

    def column(self) -> str:
        """The log's Parquet column of this tensor."""
        return f"{self.role}.{self.tensor}"


@dataclass(frozen=True)
class TableColumn:
    """One column of a table in the catalog: of a dataset version's files
    (``source`` dataset, ``owner`` the dataset) or of a model version's data
    artifact (``source`` artifact, ``owner`` the model, ``path`` the artifact)."""

    source: str
    owner: str
    version: int
    column: str
    path: str = ""

    def describe(self) -> str:
        """How messages name the column's table."""
        if self.source == DATASET:
            return f"dataset {self.owner!r} version {self.version or 'latest'}"
        return f"artifact {self.path!r} of model {self.owner!r} version {self.version or 'latest'}"


@dataclass(frozen=True)
class Baseline:
    """A time range [start, end) of the log, inline values, or a table's column
    (only one of them; start/end are None unless it is a range)."""

    start: dt.datetime | None = None
    end: dt.datetime | None = None
    values: tuple[float, ...] = ()
    column: TableColumn | None = None

    @property
    def is_range(self) -> bool:
        return self.start is not None


@dataclass(frozen=True)
class Window:
    width: dt.timedelta
    interval: dt.timedelta | None = None  # None: the width
    start: dt.datetime | None = None  # None: the baseline's end (or creation, inline)
    run_until: dt.datetime | None = None

    @property
    def step(self) -> dt.timedelta:
        return self.interval or self.width


@dataclass(frozen=True)
class AssaySpec:
    """``model`` or ``pipeline`` (exactly one) names whose log is read: the gateway
    logs a call to a pipeline under the pipeline's name, with its own inputs and
    outputs, so ``path`` and ``version`` are the pipeline's then."""

    name: str
    model: str
    path: Path
    baseline: Baseline
    window: Window
    summarizer: Summarizer = field(default_factory=Summarizer)
    version: int = 0
    webhook_url: str = ""
    pipeline: str = ""

    @property
    def subject(self) -> str:
        """The model or pipeline whose log is read (its partition of the log)."""
        return self.pipeline or self.model

    @property
    def noun(self) -> str:
        return "pipeline" if self.pipeline else "model"


@dataclass(frozen=True)
class AssayRecord:
    spec: AssaySpec
    active: bool
    workspace: str
    create_time: dt.datetime
    update_time: dt.datetime


def check_spec(spec: AssaySpec) -> None:
    """The checks that need nothing but the spec."""
    spec.summarizer.check()
    if bool(spec.model) == bool(spec.pipeline):
        raise InvalidArgument(
            "model or pipeline: set exactly one, the model or pipeline whose log is read"
        )
    if spec.version < 0:
        raise InvalidArgument(f"version must not be negative, got {spec.version}")
    window = spec.window
    if window.width <= dt.timedelta(0):
        raise InvalidArgument("window.width_seconds must be positive (e.g. 86400 for 24h)")
    if window.interval is not None and window.interval <= dt.timedelta(0):
        raise InvalidArgument("window.interval_seconds must be positive, or 0 for the width")
    if window.start and window.run_until and window.run_until <= window.start:
        raise InvalidArgument("window.run_until must be after window.start_time")
    baseline = spec.baseline
    if baseline.is_range:
        if baseline.end is None or baseline.end <= baseline.start:  # type: ignore[operator]
            raise InvalidArgument("baseline.range: end_time must be after start_time")
    elif baseline.column is not None:
        _check_column(baseline.column)
    elif not any(math.isfinite(v) for v in baseline.values):
        raise InvalidArgument(
            "baseline: give a time range of the log (baseline.range), finite values "
            "(baseline.values), or a column (baseline.dataset, baseline.artifact)"
        )
    if spec.webhook_url and not spec.webhook_url.startswith(("http://", "https://")):
        raise InvalidArgument("webhook_url must be an http:// or https:// URL")


def _check_column(column: TableColumn) -> None:
    field = f"baseline.{column.source}"
    if not column.owner:
        owner = "dataset" if column.source == DATASET else "model"
        raise InvalidArgument(f"{field}.{owner} is required: the {owner} to read the column of")
    if column.version < 0:
        raise InvalidArgument(f"{field}.version must not be negative, got {column.version}")
    if column.source == ARTIFACT and not column.path:
        raise InvalidArgument(f"{field}.path is required: the artifact (*.csv or *.parquet)")
    if not column.column:
        raise InvalidArgument(f"{field}.column is required: the numeric column to read")


def config_tensors(config_text: str) -> dict[str, list[Tensor]]:
    """A model config's inputs and outputs by role, typed as a pipeline's are."""
    config = model_config_pb2.ModelConfig()
    text_format.Parse(config_text, config)

    def typed(tensors: Sequence[Any]) -> list[Tensor]:
        return [
            Tensor(
                t.name,
                model_config_pb2.DataType.Name(t.data_type).removeprefix("TYPE_"),
                tuple(int(d) for d in t.dims),
            )
            for t in tensors
        ]

    return {INPUT: typed(config.input), OUTPUT: typed(config.output)}


def resolve_path(path: Path, tensors_by_role: dict[str, list[Tensor]], owner: str) -> Path:
    """``path`` checked against the inputs and outputs of ``owner`` (a model's config
    or a pipeline's), with the tensor's real name.

    Raises InvalidArgument (naming ``path``) for a role other than input/output,
    a tensor ``owner`` lacks, an index past its shape, or a BYTES tensor.
    """
    if path.role not in (INPUT, OUTPUT):
        raise InvalidArgument(f"path.role must be 'input' or 'output', got {path.role!r}")
    tensors = tensors_by_role[path.role]
    found = [t for t in tensors if t.name == path.tensor]
    if not found and path.tensor.isdigit() and int(path.tensor) < len(tensors):
        found = [tensors[int(path.tensor)]]
    if not found:
        names = ", ".join(t.name for t in tensors) or "none"
        raise InvalidArgument(
            f"path.tensor: {owner} has no {path.role} {path.tensor!r} (its {path.role}s: {names})"
        )
    tensor = found[0]
    if tensor.datatype == _BYTES:
        raise InvalidArgument(
            f"path.tensor: {path.role} {tensor.name!r} is BYTES; an assay needs a numeric tensor"
        )
    dims = [int(d) for d in tensor.dims]
    size = math.prod(dims) if all(d > 0 for d in dims) else None
    if path.index < 0 or (size is not None and path.index >= size):
        raise InvalidArgument(
            f"path.index {path.index} is outside {path.role} {tensor.name!r} of shape {dims} "
            f"({size} elements per row): use 0 to {(size or 1) - 1}"
        )
    return dataclasses.replace(path, tensor=tensor.name)


def first_window_start(spec: AssaySpec, created: dt.datetime) -> dt.datetime:
    """Where windows begin: the window's start, else the baseline's end, else creation."""
    if spec.window.start is not None:
        return spec.window.start
    if spec.baseline.end is not None:
        return spec.baseline.end
    return created


def windows(
    spec: AssaySpec, origin: dt.datetime, start: dt.datetime, end: dt.datetime
) -> list[tuple[dt.datetime, dt.datetime]]:
    """The windows (start, end) whose start lies in [start, end), on the grid from ``origin``."""
    step = spec.window.step
    first = max(0, math.ceil((start - origin) / step))
    found: list[tuple[dt.datetime, dt.datetime]] = []
    k = first
    while True:
        begin = origin + k * step
        if begin >= end or (spec.window.run_until and begin >= spec.window.run_until):
            return found
        if len(found) >= MAX_WINDOWS_PER_RUN:
            raise InvalidArgument(
                f"range holds more than {MAX_WINDOWS_PER_RUN} windows: shorten it or widen "
                "window.interval_seconds"
            )
        found.append((begin, begin + spec.window.width))
        k += 1


def binned_from(spec: AssaySpec) -> dict[str, Any]:
    """What an assay's binned baseline depends on, as plain JSON: where its values
    come from (``source``: the model or pipeline, version, path and baseline) and how
    they are binned (``bins``: bin mode, num_bins, outlier edges, provided edges).
    The metric, weights, aggregation, thresholds, window and webhook are not in it:
    changing them keeps the binned baseline."""
    s = spec.summarizer
    parts: dict[str, Any] = _plain(
        {
            "source": {
                "model": spec.model,
                "pipeline": spec.pipeline,
                "version": spec.version,
                "path": dataclasses.asdict(spec.path),
                "baseline": dataclasses.asdict(spec.baseline),
            },
            "bins": {
                "bin_mode": s.bin_mode,
                "num_bins": s.num_bins,
                "add_outlier_edges": s.add_outlier_edges,
                "provided_edges": s.provided_edges,
            },
        }
    )
    return parts


# --- JSON for the table ---------------------------------------------------------


def to_json(spec: AssaySpec) -> str:
    """The spec as the Assay table keeps it."""
    return json.dumps(_plain(dataclasses.asdict(spec)))


def from_json(text: str) -> AssaySpec:
    data = json.loads(text)
    s = data["summarizer"]
    summarizer = Summarizer(
        bin_mode=BinMode(s["bin_mode"]),
        num_bins=s["num_bins"],
        add_outlier_edges=s["add_outlier_edges"],
        bin_weights=tuple(s["bin_weights"]),
        provided_edges=tuple(s["provided_edges"]),
        aggregation=Aggregation(s["aggregation"]),
        metric=Metric(s["metric"]),
        warning_threshold=s["warning_threshold"],
        alert_threshold=s["alert_threshold"],
    )
    b, w = data["baseline"], data["window"]
    column = b.get("column")  # absent before table baselines
    return AssaySpec(
        name=data["name"],
        model=data["model"],
        pipeline=data.get("pipeline", ""),  # absent before pipeline assays
        version=data["version"],
        path=Path(**data["path"]),
        baseline=Baseline(
            _time(b["start"]),
            _time(b["end"]),
            tuple(b["values"]),
            None if column is None else TableColumn(**column),
        ),
        window=Window(
            dt.timedelta(seconds=w["width"]),
            None if w["interval"] is None else dt.timedelta(seconds=w["interval"]),
            _time(w["start"]),
            _time(w["run_until"]),
        ),
        summarizer=summarizer,
        webhook_url=data["webhook_url"],
    )


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return value


def _time(text: str | None) -> dt.datetime | None:
    return None if text is None else dt.datetime.fromisoformat(text)
