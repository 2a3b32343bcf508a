"""Assays: stored specs, interactive runs, and the scheduled windows' results.

Every call reads the model or pipeline (and a baseline's dataset or artifact)
through the catalog's visibility rules, so an assay of something the caller
may not see is NOT_FOUND exactly as a missing one.

A pipeline's assay reads the pipeline's own records in the log: the gateway
logs each call to a deployed pipeline (its Triton ensemble) under the
pipeline's name, with the pipeline's inputs and outputs and its version; the
steps run inside Triton and are not logged one by one.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path as FilePath
from typing import Any

import numpy as np
import numpy.typing as npt

from mlserve.access import rules
from mlserve.access.workspaces import workspace_names
from mlserve.assays import maths, source
from mlserve.assays.maths import BaselineSummary, Status, WindowScore
from mlserve.assays.spec import (
    DATASET,
    AssayRecord,
    AssaySpec,
    TableColumn,
    check_spec,
    config_tensors,
    first_window_start,
    from_json,
    resolve_path,
    to_json,
    windows,
)
from mlserve.catalog.artifacts import artifact_column
from mlserve.catalog.datasets import dataset_column
from mlserve.catalog.models import model_row, visible_model_ids, writable_model
from mlserve.catalog.pipelines import (
    pipeline_tensors,
    readable_pipeline,
    visible_pipeline_ids,
    writable_pipeline,
)
from mlserve.catalog.versions import find_version
from mlserve.core.errors import AlreadyExists, InvalidArgument, NotFound
from mlserve.core.names import check_name, check_update_mask
from mlserve.core.paging import Listing, Page, PageTokens
from mlserve.monitor.reader import micros
from mlserve.monitor.store import LogStore
from mlserve.storage import tables
from mlserve.storage.db import in_thread, utcnow
from mlserve.storage.repository import Repository

UPDATABLE_FIELDS = ("version", "path", "baseline", "window", "summarizer", "webhook_url")


@dataclass(frozen=True)
class WindowResult:
    """One scored window (what RunAssay returns and the scheduler stores)."""

    assay: str
    start: dt.datetime
    end: dt.datetime
    edges: npt.NDArray[np.float64]
    baseline_densities: npt.NDArray[np.float64]
    score: WindowScore
    compute_time: dt.datetime | None = None


def aware(moment: dt.datetime) -> dt.datetime:
    """A stored (naive UTC) time as an aware one."""
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


class Assays:
    def __init__(
        self, log_root: FilePath | LogStore, tokens: PageTokens, repository: Repository
    ) -> None:
        self.log_root = log_root
        self.tokens = tokens
        self.repository = repository  # where baseline datasets and artifacts are

    # --- stored assays ------------------------------------------------------------

    @in_thread
    def create(self, spec: AssaySpec) -> AssayRecord:
        """Check ``spec`` (fields, path against the model's config or the pipeline's
        inputs and outputs, a baseline with values) and store it, active. A table
        baseline's version 0 is stored as the version it read.

        Raises:
            InvalidArgument: a field breaks a rule (named), or the baseline has no data.
            NotFound: no model or pipeline of that name the caller may see, or no
                baseline dataset (artifact) of that name the caller may see.
            PermissionDenied: the caller may see the model or pipeline but not change it.
            AlreadyExists: an assay of that name exists.
        """
        check_name(spec.name, "assay.name")
        check_spec(spec)
        owner = _writable_owner(spec)
        spec = self._checked_with_data(spec)
        if tables.Assay.select().where(tables.Assay.name == spec.name).exists():
            raise AlreadyExists(f"assay {spec.name!r} exists already: pick another name")
        row = tables.Assay.create(name=spec.name, spec=to_json(spec), **owner)
        return _record(row)

    @in_thread
    def get(self, name: str) -> AssayRecord:
        """Assay ``name``; NotFound when absent or of a model the caller may not see."""
        return _record(_assay_row(name))

    @in_thread
    def list_assays(
        self, model: str, workspace: str, requested: int, token: str, pipeline: str = ""
    ) -> Page[AssayRecord]:
        """The assays of the models and pipelines the caller may see, by name; of
        ``model``, of ``pipeline`` or of ``workspace``'s models and pipelines when given
        (NotFound for a model or pipeline the caller may not see)."""
        query = tables.Assay.select()
        if model:
            query = query.where(tables.Assay.model == model_row(model))
        if pipeline:
            query = query.where(tables.Assay.pipeline == readable_pipeline(pipeline))
        query = query.where(
            tables.Assay.model.in_(visible_model_ids(workspace))
            | tables.Assay.pipeline.in_(visible_pipeline_ids(workspace))
        )
        fingerprint = {"list": "assays", "model": model, "workspace": workspace}
        if pipeline:  # only then: tokens of model lists stay valid across the upgrade
            fingerprint["pipeline"] = pipeline
        listing = Listing(query, tables.Assay.name, _record, lambda row: row.name, fingerprint)
        return self.tokens.page(listing, requested, token)

    @in_thread
    def update(self, name: str, new: AssaySpec, mask: Sequence[str]) -> AssayRecord:
        """Change the fields ``mask`` names, checked as on create."""
        check_update_mask(mask, UPDATABLE_FIELDS)
        row = _writable_row(name)
        spec = from_json(row.spec)
        changes = {field: getattr(new, field) for field in mask}
        spec = self._checked_with_data(dataclasses.replace(spec, **changes))
        row.spec = to_json(spec)
        row.update_time = utcnow()
        row.save()
        return _record(row)

    @in_thread
    def set_active(self, name: str, active: bool) -> AssayRecord:
        """Start or stop the scheduled runs of ``name``."""
        row = _writable_row(name)
        row.active = active
        row.update_time = utcnow()
        row.save()
        return _record(row)

    @in_thread
    def delete(self, name: str) -> None:
        """Remove ``name`` and its results."""
        row = _writable_row(name)
        row.delete_instance(recursive=True)

    # --- computing ----------------------------------------------------------------

    @in_thread
    def preview(self, spec: AssaySpec) -> BaselineSummary:
        """The baseline binned as ``spec`` says; stores nothing."""
        check_spec(spec)
        _readable_owner(spec)
        return self.baseline_of(self._checked(spec))

    @in_thread
    def run(
        self, name: str, inline: AssaySpec | None, start: dt.datetime, end: dt.datetime
    ) -> tuple[BaselineSummary, list[WindowResult]]:
        """Every window of ``name`` (or of ``inline``) starting in [start, end); stores nothing."""
        if end <= start:
            raise InvalidArgument("range: end_time must be after start_time")
        if name:
            row = _assay_row(name)
            spec, created = from_json(row.spec), aware(row.create_time)
        elif inline is not None:
            check_spec(inline)
            _readable_owner(inline)
            spec, created = self._checked(inline), dt.datetime.now(dt.timezone.utc)
        else:
            raise InvalidArgument("name or assay is required: the assay to run")
        baseline = self.baseline_of(spec)
        spans = windows(spec, first_window_start(spec, created), start, end)
        return baseline, self.score(spec, baseline, spans)

    def score(
        self,
        spec: AssaySpec,
        baseline: BaselineSummary,
        spans: list[tuple[dt.datetime, dt.datetime]],
    ) -> list[WindowResult]:
        """Score ``spans`` with one read of the log they cover (blocking)."""
        if not spans:
            return []
        times, values = source.logged_values(
            self.log_root, spec.subject, spec.version, spec.path, spans[0][0], spans[-1][1]
        )
        results = []
        for begin, finish in spans:
            low, high = np.searchsorted(times, [micros(begin), micros(finish)])
            score = maths.score_window(values[low:high], baseline, spec.summarizer)
            results.append(
                WindowResult(spec.name, begin, finish, baseline.edges, baseline.densities, score)
            )
        return results

    def _checked_with_data(self, spec: AssaySpec) -> AssaySpec:
        """``spec`` checked, and its baseline found to have values (a table column's
        version resolved, so the baseline stays what it was)."""
        return self._baseline(self._checked(spec))[0]

    def _checked(self, spec: AssaySpec) -> AssaySpec:
        """``spec`` checked, with its path resolved against the model version's config
        or the pipeline version's inputs and outputs (the owner's visibility is the
        caller's to check first)."""
        check_spec(spec)
        try:
            if spec.pipeline:
                inputs, outputs = pipeline_tensors(spec.pipeline, spec.version)
                tensors = {"input": inputs, "output": outputs}
            else:
                tensors = config_tensors(find_version(spec.model, spec.version).config)
        except NotFound as error:
            raise InvalidArgument(f"version: {error.message}") from None
        owner = f"{spec.noun} {spec.subject!r}"
        return dataclasses.replace(spec, path=resolve_path(spec.path, tensors, owner))

    def baseline_of(self, spec: AssaySpec) -> BaselineSummary:
        """The binned baseline of a checked spec; InvalidArgument when it has no values
        (blocking)."""
        return self._baseline(spec)[1]

    def _baseline(self, spec: AssaySpec) -> tuple[AssaySpec, BaselineSummary]:
        """The baseline binned, and ``spec`` with a table column's version 0 resolved."""
        baseline = spec.baseline
        if baseline.is_range:
            assert baseline.start is not None
            assert baseline.end is not None
            _, values = source.logged_values(
                self.log_root, spec.subject, spec.version, spec.path, baseline.start, baseline.end
            )
            if not np.isfinite(values).any():
                raise InvalidArgument(
                    f"baseline.range: the log of {spec.subject!r} has no {spec.path.role} "
                    f"{spec.path.tensor!r}[{spec.path.index}] from {baseline.start.isoformat()} "
                    f"to {baseline.end.isoformat()}: choose a range with logged calls"
                )
        elif baseline.column is not None:
            column = baseline.column
            version, values = self._column(column)
            if not np.isfinite(values).any():
                raise InvalidArgument(
                    f"baseline.{column.source}: column {column.column!r} of "
                    f"{column.describe()} has no finite values: choose another column"
                )
            resolved = dataclasses.replace(column, version=version)
            spec = dataclasses.replace(
                spec, baseline=dataclasses.replace(baseline, column=resolved)
            )
        else:
            values = np.asarray(baseline.values)
        return spec, maths.summarize_baseline(values, spec.summarizer)

    def _column(self, column: TableColumn) -> tuple[int, npt.NDArray[np.float64]]:
        if column.source == DATASET:
            return dataset_column(self.repository, column.owner, column.version, column.column)
        return artifact_column(
            self.repository, column.owner, column.version, column.path, column.column
        )

    # --- scheduled results --------------------------------------------------------

    @in_thread
    def list_results(
        self,
        name: str,
        start: dt.datetime | None,
        end: dt.datetime | None,
        requested: int,
        token: str,
    ) -> Page[WindowResult]:
        """Stored results of ``name``'s scheduled windows, oldest first."""
        row = _assay_row(name)
        query = tables.AssayResult.select().where(tables.AssayResult.assay == row)
        if start is not None:
            query = query.where(tables.AssayResult.window_start >= _naive(start))
        if end is not None:
            query = query.where(tables.AssayResult.window_start < _naive(end))
        fingerprint = {
            "list": "assay-results", "assay": name,
            "start": None if start is None else start.isoformat(),
            "end": None if end is None else end.isoformat(),
        }  # fmt: skip
        listing = Listing(
            query, tables.AssayResult.id, lambda r: result_of(name, r), lambda r: r.id, fingerprint
        )
        return self.tokens.page(listing, requested, token)


def result_of(name: str, row: Any) -> WindowResult:
    """A stored result row as a WindowResult."""
    data = json.loads(row.result)
    score = WindowScore(
        count=row.count,
        window_densities=np.asarray(data["window_densities"]),
        bin_scores=np.asarray(data["bin_scores"]),
        score=data["score"],
        status=Status(row.status),
        max_diff_bin=data["max_diff_bin"],
    )
    return WindowResult(
        name,
        aware(row.window_start),
        aware(row.window_end),
        np.asarray(data["edges"]),
        np.asarray(data["baseline_densities"]),
        score,
        aware(row.compute_time),
    )


def result_json(result: WindowResult) -> str:
    """What AssayResult.result keeps of a window."""
    return json.dumps(
        {
            "edges": result.edges.tolist(),
            "baseline_densities": result.baseline_densities.tolist(),
            "window_densities": result.score.window_densities.tolist(),
            "bin_scores": result.score.bin_scores.tolist(),
            "score": result.score.score,
            "max_diff_bin": result.score.max_diff_bin,
        }
    )


def _naive(moment: dt.datetime) -> dt.datetime:
    return moment.astimezone(dt.timezone.utc).replace(tzinfo=None)


def _readable_owner(spec: AssaySpec) -> None:
    """NotFound unless the caller may see the spec's model or pipeline."""
    if spec.pipeline:
        readable_pipeline(spec.pipeline)
    else:
        model_row(spec.model)


def _writable_owner(spec: AssaySpec) -> dict[str, Any]:
    """The Assay row's owner fields, if the caller may change the model or pipeline."""
    if spec.pipeline:
        return {"pipeline": writable_pipeline(spec.pipeline)}
    return {"model": writable_model(spec.model)}


def _owner(row: Any) -> Any:
    """The model or pipeline row an assay watches."""
    return row.pipeline if row.pipeline_id is not None else row.model


def _assay_row(name: str) -> Any:
    check_name(name, "assay name")
    row = tables.Assay.get_or_none(tables.Assay.name == name)
    if row is None or not rules.can_see_model(rules.caller(), _owner(row)):
        raise rules.not_found(name, "assay")
    return row


def _writable_row(name: str) -> Any:
    row = _assay_row(name)
    rules.check_model_write(_owner(row))
    return row


def _record(row: Any) -> AssayRecord:
    workspace_id = _owner(row).workspace_id
    workspace = workspace_names([workspace_id]).get(workspace_id, "") if workspace_id else ""
    return AssayRecord(
        spec=from_json(row.spec),
        active=row.active,
        workspace=workspace,
        create_time=aware(row.create_time),
        update_time=aware(row.update_time),
    )
