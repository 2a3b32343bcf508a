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
from mlserve.assays import binned, maths, source
from mlserve.assays.binned import KeptBaseline
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
from mlserve.core.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from mlserve.core.names import check_name, check_update_mask
from mlserve.core.paging import Listing, Page, PageTokens
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
        inputs and outputs, a baseline with values) and store it, active, with its
        baseline binned (``binned``: what windows are scored against from now on). A
        table baseline's version 0 is stored as the version it read.

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
        spec, summary = self._baseline(self._checked(spec))
        if tables.Assay.select().where(tables.Assay.name == spec.name).exists():
            raise AlreadyExists(f"assay {spec.name!r} exists already: pick another name")
        row = tables.Assay.create(
            name=spec.name, spec=to_json(spec), **owner, **binned.kept_columns(spec, summary)
        )
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
        """Change the fields ``mask`` names, checked as on create. The baseline is
        binned again only when the change touches what its bins depend on (the
        baseline, path, version, or the summarizer's bin mode, bins and edges);
        otherwise the kept bins stay, even when the baseline's data is gone.

        Raises:
            FailedPrecondition: the change needs the baseline binned again, but its
                log range has lost values since it was binned (retention deleted
                them); nothing is changed.
            InvalidArgument, NotFound, PermissionDenied: as on create.
        """
        check_update_mask(mask, UPDATABLE_FIELDS)
        row = _writable_row(name)
        changes = {field: getattr(new, field) for field in mask}
        spec = self._checked(dataclasses.replace(from_json(row.spec), **changes))
        spec, summary = self._rebinned(spec, binned.kept_of(row))
        row.spec = to_json(spec)
        for column, value in binned.kept_columns(spec, summary).items():
            setattr(row, column, value)
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
        """The baseline binned as ``spec`` says, read now; stores nothing."""
        check_spec(spec)
        _readable_owner(spec)
        return self._baseline(self._checked(spec))[1]

    @in_thread
    def run(
        self, name: str, inline: AssaySpec | None, start: dt.datetime, end: dt.datetime
    ) -> tuple[BaselineSummary, list[WindowResult]]:
        """Every window of ``name`` (or of ``inline``) starting in [start, end); stores
        no result. A stored assay's windows are scored against its kept baseline (as
        the scheduler's are), an inline one's against its baseline binned now."""
        if end <= start:
            raise InvalidArgument("range: end_time must be after start_time")
        if name:
            row = _assay_row(name)
            spec, created = from_json(row.spec), aware(row.create_time)
            baseline = self.kept_baseline(row, spec)
        elif inline is not None:
            check_spec(inline)
            _readable_owner(inline)
            spec, created = self._checked(inline), dt.datetime.now(dt.timezone.utc)
            baseline = self._baseline(spec)[1]
        else:
            raise InvalidArgument("name or assay is required: the assay to run")
        spans = windows(spec, first_window_start(spec, created), start, end)
        return baseline, self.score(spec, baseline, spans)

    def score(
        self,
        spec: AssaySpec,
        baseline: BaselineSummary,
        spans: list[tuple[dt.datetime, dt.datetime]],
    ) -> list[WindowResult]:
        """Score ``spans`` (by start, as ``windows`` gives them) in one pass over the
        log they cover, holding no more of it than the hours the current window
        spans (``source.window_values``; blocking)."""
        found = source.window_values(self.log_root, spec.subject, spec.version, spec.path, spans)
        results = []
        for (begin, finish), values in zip(spans, found, strict=True):
            score = maths.score_window(values, baseline, spec.summarizer)
            results.append(
                WindowResult(spec.name, begin, finish, baseline.edges, baseline.densities, score)
            )
        return results

    def kept_baseline(self, row: Any, spec: AssaySpec) -> BaselineSummary:
        """The baseline stored assay ``row`` (whose spec is ``spec``) scores windows
        against: the one kept with it; for a row that keeps none (stored before
        schema 25) or one that no longer fits its spec, binned now and kept, unless
        the row changed meanwhile (blocking).

        Raises:
            InvalidArgument, FailedPrecondition: there is none kept and the baseline
                has no values now (as on create and update).
        """
        kept = binned.kept_of(row)
        if kept is not None and kept.serves(spec):
            return kept.summary
        spec, summary = self._rebinned(spec, kept)
        # Only over the spec it was binned for: an update since keeps its own.
        tables.Assay.update(**binned.kept_columns(spec, summary)).where(
            (tables.Assay.id == row.id) & (tables.Assay.spec == row.spec)
        ).execute()
        return summary

    def _rebinned(
        self, spec: AssaySpec, kept: KeptBaseline | None
    ) -> tuple[AssaySpec, BaselineSummary]:
        """``spec``'s binned baseline given the one kept so far: that one while it
        serves; binned again from its raw values when only the bins changed and it
        has them; else read again from the baseline's source, refusing when that is
        a log range that has lost values since it was binned."""
        if kept is None or not kept.same_source(spec):
            return self._baseline(spec)
        if kept.serves(spec):
            return spec, kept.summary
        if kept.has_values:
            return spec, maths.summarize_baseline(kept.summary.values, spec.summarizer)
        if not spec.baseline.is_range:
            return self._baseline(spec)
        values = maths.finite(self._logged_baseline(spec))
        if values.size < kept.summary.count:
            raise FailedPrecondition(
                f"baseline.range: the log of {spec.subject!r} {_range_text(spec)} now holds "
                f"{values.size} of the {kept.summary.count} values the assay's baseline was "
                "binned from (log retention deleted the rest), so it cannot be binned again: "
                "keep the summarizer's bins, or give a baseline that has its data (a later "
                "range, a dataset column or values)"
            )
        return spec, maths.summarize_baseline(values, spec.summarizer)

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

    def _baseline(self, spec: AssaySpec) -> tuple[AssaySpec, BaselineSummary]:
        """The baseline of a checked spec read and binned now, and ``spec`` with a table
        column's version 0 resolved; InvalidArgument when it has no values (blocking)."""
        baseline = spec.baseline
        if baseline.is_range:
            values = self._logged_baseline(spec)
            if not np.isfinite(values).any():
                raise InvalidArgument(
                    f"baseline.range: the log of {spec.subject!r} has no {spec.path.role} "
                    f"{spec.path.tensor!r}[{spec.path.index}] {_range_text(spec)}: choose a "
                    "range with logged calls"
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

    def _logged_baseline(self, spec: AssaySpec) -> npt.NDArray[np.float64]:
        """The values of a range baseline in the log (blocking)."""
        start, end = spec.baseline.start, spec.baseline.end
        assert start is not None
        assert end is not None
        return source.logged_values(
            self.log_root, spec.subject, spec.version, spec.path, start, end
        )[1]

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


def _range_text(spec: AssaySpec) -> str:
    """How messages name a range baseline: from START to END."""
    start, end = spec.baseline.start, spec.baseline.end
    assert start is not None
    assert end is not None
    return f"from {start.isoformat()} to {end.isoformat()}"


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
