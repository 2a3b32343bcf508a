"""A model's caller-settable metadata: its types, its rules, update masks, and
how it is kept in the store's ``model`` row.

What ListModels filters or orders by (kind, tags, labels) is stored in indexed
columns and tables; what is only returned (hyperparameters, performance,
resources, features, hints, drift detection) is JSON text in the row.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mlserve.core.errors import InvalidArgument
from mlserve.core.names import check_tags
from mlserve.storage import tables

KINDS = ("classification", "regression", "clustering", "other")  # "" means not set
METRIC_ORDERS = ("higher_is_better", "lower_is_better")  # "" means not set
MAX_ENTRIES = 256  # hyperparameters, metrics, resources, features: each at most this many
MAX_NAME_LENGTH = 128
MAX_SHORT_TEXT = 64
LABEL_KEY = re.compile(r"[a-z0-9]([a-z0-9_.\-/]{0,61}[a-z0-9])?")
MAX_LABEL_VALUE = 256
VISIBILITIES = ("private", "public")  # "" means private on create
# Kubernetes' quantity notation, non-negative: "2", "0.5", "500m", "16Gi", "1e3".
_QUANTITY = re.compile(r"(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+|[KMGTPE]i|[mkMGTPE])?")


@dataclass(frozen=True)
class Metric:
    """One measured performance figure."""

    metric: str
    value: float
    threshold: float | None = None
    order: str = ""


@dataclass(frozen=True)
class ResourceAmount:
    resource: str
    amount: str


@dataclass(frozen=True)
class Feature:
    name: str
    type: str = ""
    description: str = ""


@dataclass(frozen=True)
class InferenceHints:
    max_batch_size: int = 0
    instance_count: int = 0
    accelerator: str = ""
    timeout: dt.timedelta | None = None


@dataclass(frozen=True)
class DriftDetection:
    enabled: bool = False
    method: str = ""


@dataclass(frozen=True)
class ModelFields:
    """The caller-settable fields of a model, named as in the proto."""

    description: str = ""
    tags: Sequence[str] = field(default_factory=list)
    labels: Mapping[str, str] = field(default_factory=dict)
    kind: str = ""
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)  # JSON values
    performance: Sequence[Metric] = field(default_factory=list)
    training_resources: Sequence[ResourceAmount] = field(default_factory=list)
    run_resources: Sequence[ResourceAmount] = field(default_factory=list)
    features: Sequence[Feature] = field(default_factory=list)
    inference: InferenceHints = InferenceHints()
    drift_detection: DriftDetection = DriftDetection()
    visibility: str = ""
    allow_download: bool | None = None
    allow_remote_inference: bool | None = None


UPDATABLE = tuple(f.name for f in dataclasses.fields(ModelFields))
_SUB_FIELDS: dict[str, type[Any]] = {
    "inference": InferenceHints,
    "drift_detection": DriftDetection,
}
_MAPS = ("labels", "hyperparameters")
IMMUTABLE = frozenset(
    {
        "name",
        "create_time",
        "update_time",
        "latest_version",
        "version_count",
        "inference_count",
        "inference_failures",
        "last_inference_time",
        "deployment",
        "workspace",
    }
)


# --- rules ------------------------------------------------------------------


def for_create(fields: ModelFields) -> ModelFields:
    """``fields`` with what a new model gets when the caller left it out."""
    return dataclasses.replace(
        fields,
        visibility=fields.visibility or VISIBILITIES[0],
        allow_download=fields.allow_download is not False,
        allow_remote_inference=fields.allow_remote_inference is not False,
    )


def check_fields(fields: ModelFields) -> ModelFields:
    """``fields`` with tags sorted and deduplicated, or InvalidArgument naming the field."""
    check_kind(fields.kind, "model.kind")
    if fields.visibility not in VISIBILITIES:
        raise InvalidArgument(
            f"model.visibility must be {' or '.join(VISIBILITIES)}, not {fields.visibility!r}"
        )
    for key in fields.labels:
        check_label(key, fields.labels[key], f"model.labels[{key!r}]")
    _check_hyperparameters(fields.hyperparameters)
    _check_metrics(fields.performance)
    for name in ("training_resources", "run_resources"):
        _check_resources(getattr(fields, name), f"model.{name}")
    _check_features(fields.features)
    _check_hints(fields.inference)
    drift = fields.drift_detection
    _check_text(drift.method, "model.drift_detection.method", MAX_SHORT_TEXT, required=False)
    if drift.enabled and not drift.method:
        raise InvalidArgument(
            "model.drift_detection.method is required when drift detection is enabled "
            "(e.g. 'psi', 'ks')"
        )
    return dataclasses.replace(fields, tags=check_tags(fields.tags, "model.tags"))


def check_kind(kind: str, where: str) -> str:
    """``kind`` if it is empty or a known kind; InvalidArgument naming ``where`` otherwise."""
    if kind and kind not in KINDS:
        raise InvalidArgument(f"{where}: unknown kind {kind!r}; use one of {', '.join(KINDS)}")
    return kind


def check_label(key: str, value: str, where: str) -> None:
    """InvalidArgument naming ``where`` unless ``key`` and ``value`` make a valid label."""
    if not LABEL_KEY.fullmatch(key):
        raise InvalidArgument(
            f"{where}: label key {key!r} must be 1 to 63 lower-case letters, digits, "
            "'_', '-', '.', '/', starting and ending with a letter or digit"
        )
    if len(value) > MAX_LABEL_VALUE or "\x00" in value:
        raise InvalidArgument(f"{where}: label value over {MAX_LABEL_VALUE} characters or NUL")


def _check_text(text: str, where: str, limit: int, *, required: bool = True) -> None:
    if (required and not text) or len(text) > limit or "\x00" in text:
        need = "1" if required else "0"
        raise InvalidArgument(f"{where} must be {need} to {limit} characters, no NUL")


def _check_unique(names: Sequence[str], where: str) -> None:
    if len(names) > MAX_ENTRIES:
        raise InvalidArgument(f"{where}: at most {MAX_ENTRIES} entries, got {len(names)}")
    seen: set[str] = set()
    for index, name in enumerate(names):
        if name in seen:
            raise InvalidArgument(f"{where}[{index}]: {name!r} appears twice")
        seen.add(name)


def _check_finite(value: Any, where: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidArgument(f"{where} must be a finite number, got {value}")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_finite(item, f"{where}.{key}")
    if isinstance(value, list):
        for index, item in enumerate(value):
            _check_finite(item, f"{where}[{index}]")


def _check_hyperparameters(values: Mapping[str, Any]) -> None:
    _check_unique(list(values), "model.hyperparameters")
    for name, value in values.items():
        _check_text(name, "model.hyperparameters name", MAX_NAME_LENGTH)
        _check_finite(value, f"model.hyperparameters[{name!r}]")


def _check_metrics(metrics: Sequence[Metric]) -> None:
    _check_unique([m.metric for m in metrics], "model.performance")
    for index, metric in enumerate(metrics):
        where = f"model.performance[{index}]"
        _check_text(metric.metric, f"{where}.metric", MAX_SHORT_TEXT)
        _check_finite(metric.value, f"{where}.value")
        _check_finite(metric.threshold, f"{where}.threshold")
        if metric.order and metric.order not in METRIC_ORDERS:
            raise InvalidArgument(
                f"{where}.order: unknown order {metric.order!r}; use one of "
                f"{', '.join(METRIC_ORDERS)}"
            )


def _check_resources(resources: Sequence[ResourceAmount], where: str) -> None:
    _check_unique([r.resource for r in resources], where)
    for index, resource in enumerate(resources):
        _check_text(resource.resource, f"{where}[{index}].resource", MAX_SHORT_TEXT)
        if not _QUANTITY.fullmatch(resource.amount):
            raise InvalidArgument(
                f"{where}[{index}].amount {resource.amount!r} is not a non-negative quantity "
                "such as '2', '0.5', '500m' or '16Gi'"
            )


def _check_features(features: Sequence[Feature]) -> None:
    _check_unique([f.name for f in features], "model.features")
    for index, feature in enumerate(features):
        where = f"model.features[{index}]"
        _check_text(feature.name, f"{where}.name", MAX_NAME_LENGTH)
        _check_text(feature.type, f"{where}.type", MAX_SHORT_TEXT, required=False)


def _check_hints(hints: InferenceHints) -> None:
    for name in ("max_batch_size", "instance_count"):
        if getattr(hints, name) < 0:
            raise InvalidArgument(f"model.inference.{name} must not be negative")
    _check_text(hints.accelerator, "model.inference.accelerator", MAX_SHORT_TEXT, required=False)
    if hints.timeout is not None and hints.timeout <= dt.timedelta(0):
        raise InvalidArgument("model.inference.timeout must be positive when set")


# --- update masks -------------------------------------------------------------


def apply_mask(current: ModelFields, new: ModelFields, mask: Sequence[str]) -> ModelFields:
    """``current`` with the fields ``mask`` names taken from ``new`` (AIP-134).

    A path is a field ("tags"), a sub-field ("drift_detection.enabled"), or a
    map key ("labels.team": set from ``new``, removed when ``new`` lacks it);
    "*" alone means every field. Visibility and the allow_* flags left unset
    in ``new`` but masked take their create defaults.
    """
    if not mask:
        raise InvalidArgument("update_mask is empty: name the fields to change")
    if "*" in mask:
        if len(mask) > 1:
            raise InvalidArgument("update_mask: '*' must be the only path")
        mask = UPDATABLE
    merged = current
    for path in mask:
        head, dot, rest = path.partition(".")
        if head not in UPDATABLE:
            raise InvalidArgument(_not_updatable(path, head))
        value = getattr(new, head)
        if dot and head in _SUB_FIELDS:
            if rest not in {f.name for f in dataclasses.fields(_SUB_FIELDS[head])}:
                raise InvalidArgument(f"update_mask: {head} has no field {rest!r}")
            value = dataclasses.replace(getattr(merged, head), **{rest: getattr(value, rest)})
        elif dot and head in _MAPS:
            entries = dict(getattr(merged, head))
            if rest in value:
                entries[rest] = value[rest]
            else:
                entries.pop(rest, None)
            value = entries
        elif dot:
            raise InvalidArgument(f"update_mask: {head} has no sub-fields; name {head!r} alone")
        merged = dataclasses.replace(merged, **{head: value})
    # A masked visibility or flag the request left unset takes the value a new
    # model gets (private; on): "*" must not quietly switch a model off.
    return for_create(merged)


def _not_updatable(path: str, head: str) -> str:
    updatable = f"updatable: {', '.join(UPDATABLE)}"
    if head in IMMUTABLE:
        return f"update_mask: {path!r} cannot be changed (immutable or output only); {updatable}"
    return f"update_mask: Model has no field {path!r}; {updatable}"


# --- the store row --------------------------------------------------------------


def write(row: Any, fields: ModelFields) -> None:
    """Set ``row``'s columns, tag rows and label rows from checked ``fields``.

    Call inside a transaction: the row is saved (inserted when new) first.
    """
    row.description = fields.description
    row.kind = fields.kind
    row.labels = json.dumps(dict(sorted(fields.labels.items())))
    row.hyperparameters = json.dumps(dict(fields.hyperparameters))
    row.performance = json.dumps([dataclasses.asdict(m) for m in fields.performance])
    row.training_resources = json.dumps([dataclasses.asdict(r) for r in fields.training_resources])
    row.run_resources = json.dumps([dataclasses.asdict(r) for r in fields.run_resources])
    row.features = json.dumps([dataclasses.asdict(f) for f in fields.features])
    hints = dataclasses.asdict(fields.inference)
    hints["timeout"] = (
        None if fields.inference.timeout is None else hints["timeout"].total_seconds()
    )
    row.inference = json.dumps(hints)
    row.drift_detection = json.dumps(dataclasses.asdict(fields.drift_detection))
    row.visibility = fields.visibility
    row.allow_download = bool(fields.allow_download)
    row.allow_remote_inference = bool(fields.allow_remote_inference)
    row.save()
    tables.ModelTag.delete().where(tables.ModelTag.model == row).execute()
    if fields.tags:
        tables.ModelTag.insert_many([{"model": row, "tag": tag} for tag in fields.tags]).execute()
    tables.ModelLabel.delete().where(tables.ModelLabel.model == row).execute()
    if fields.labels:
        tables.ModelLabel.insert_many(
            [{"model": row, "key": key, "value": value} for key, value in fields.labels.items()]
        ).execute()


def read(row: Any, tags: Sequence[str]) -> ModelFields:
    """The fields kept in ``row``, with ``tags`` read beside it."""
    hints = json.loads(row.inference)
    if hints.get("timeout") is not None:
        hints["timeout"] = dt.timedelta(seconds=hints["timeout"])
    return ModelFields(
        description=row.description,
        tags=list(tags),
        labels=json.loads(row.labels),
        kind=row.kind,
        hyperparameters=json.loads(row.hyperparameters),
        performance=[Metric(**m) for m in json.loads(row.performance)],
        training_resources=[ResourceAmount(**r) for r in json.loads(row.training_resources)],
        run_resources=[ResourceAmount(**r) for r in json.loads(row.run_resources)],
        features=[Feature(**f) for f in json.loads(row.features)],
        inference=InferenceHints(**hints),
        drift_detection=DriftDetection(**json.loads(row.drift_detection)),
        visibility=row.visibility,
        allow_download=row.allow_download,
        allow_remote_inference=row.allow_remote_inference,
    )
