"""Assays: stored specs, interactive runs, and the scheduled windows' results.

Every call reads the model through the catalog's visibility rules, so an
assay of a model the caller may not see is NOT_FOUND exactly as a missing one.
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
from mlserve.access.workspaces import workspace_id_query, workspace_names
from mlserve.assays import maths, source
from mlserve.assays.maths import BaselineSummary, Status, WindowScore
from mlserve.assays.spec import (
    AssayRecord,
    AssaySpec,
    check_spec,
    first_window_start,
    from_json,
    resolve_path,
    to_json,
    windows,
)
from mlserve.catalog.models import model_row, writable_model
from mlserve.catalog.versions import find_version
from mlserve.core.errors import AlreadyExists, InvalidArgument, NotFound
from mlserve.core.names import check_name, check_update_mask
from mlserve.core.paging import Listing, Page, PageTokens
from mlserve.monitor.store import LogStore
from mlserve.storage import tables
from mlserve.storage.db import in_thread, utcnow

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
    def __init__(self, log_root: FilePath | LogStore, tokens: PageTokens) -> None:
        self.log_root = log_root
        self.tokens = tokens

    # --- stored assays ------------------------------------------------------------

    @in_thread
    def create(self, spec: AssaySpec) -> AssayRecord:
        """Check ``spec`` (fields, path against the model's config, a baseline with values)
        and store it, active.

        Raises:
            InvalidArgument: a field breaks a rule (named), or the baseline has no data.
            NotFound: no model of that name the caller may see.
            PermissionDenied: the caller may see the model but not change it.
            AlreadyExists: an assay of that name exists.
        """
        check_name(spec.name, "assay.name")
        model = writable_model(spec.model)
        spec = self._checked_with_data(spec)
        if tables.Assay.select().where(tables.Assay.name == spec.name).exists():
            raise AlreadyExists(f"assay {spec.name!r} exists already: pick another name")
        row = tables.Assay.create(name=spec.name, model=model, spec=to_json(spec))
        return _record(row)

    @in_thread
    def get(self, name: str) -> AssayRecord:
        """Assay ``name``; NotFound when absent or of a model the caller may not see."""
        return _record(_assay_row(name))

    @in_thread
    def list_assays(
        self, model: str, workspace: str, requested: int, token: str
    ) -> Page[AssayRecord]:
        """The assays of the models the caller may see, by name; of ``model`` or of
        ``workspace``'s models when given (NotFound for a model the caller may not see)."""
        query = tables.Assay.select().join(tables.Model)
        if model:
            query = query.where(tables.Assay.model == model_row(model))
        if workspace:
            query = query.where(tables.Model.workspace.in_(workspace_id_query(workspace)))
        visible = rules.visible_models()
        if visible is not None:
            query = query.where(visible)
        listing = Listing(
            query, tables.Assay.name, _record, lambda row: row.name,
            {"list": "assays", "model": model, "workspace": workspace},
        )  # fmt: skip
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
        model_row(spec.model)
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
            model_row(inline.model)
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
            self.log_root, spec.model, spec.version, spec.path, spans[0][0], spans[-1][1]
        )
        results = []
        for begin, finish in spans:
            low, high = np.searchsorted(times, [source.micros(begin), source.micros(finish)])
            score = maths.score_window(values[low:high], baseline, spec.summarizer)
            results.append(
                WindowResult(spec.name, begin, finish, baseline.edges, baseline.densities, score)
            )
        return results

    def _checked_with_data(self, spec: AssaySpec) -> AssaySpec:
        """``spec`` checked, and its baseline found to have values."""
        spec = self._checked(spec)
        self.baseline_of(spec)
        return spec

    def _checked(self, spec: AssaySpec) -> AssaySpec:
        """``spec`` checked, with its path resolved against the model version's config."""
        check_spec(spec)
        try:
            config = find_version(spec.model, spec.version).config
        except NotFound as error:
            raise InvalidArgument(f"version: {error.message}") from None
        return dataclasses.replace(spec, path=resolve_path(spec.path, config, spec.model))

    def baseline_of(self, spec: AssaySpec) -> BaselineSummary:
        """The binned baseline of a checked spec; InvalidArgument when it has no values
        (blocking)."""
        baseline = spec.baseline
        if baseline.is_range:
            assert baseline.start is not None
            assert baseline.end is not None
            _, values = source.logged_values(
                self.log_root, spec.model, spec.version, spec.path, baseline.start, baseline.end
            )
            if not np.isfinite(values).any():
                raise InvalidArgument(
                    f"baseline.range: the log of {spec.model!r} has no {spec.path.role} "
                    f"{spec.path.tensor!r}[{spec.path.index}] from {baseline.start.isoformat()} "
                    f"to {baseline.end.isoformat()}: choose a range with logged calls"
                )
            return maths.summarize_baseline(values, spec.summarizer)
        return maths.summarize_baseline(np.asarray(baseline.values), spec.summarizer)

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


def _assay_row(name: str) -> Any:
    check_name(name, "assay name")
    row = tables.Assay.get_or_none(tables.Assay.name == name)
    if row is None or not rules.can_see_model(rules.caller(), row.model):
        raise rules.not_found(name, "assay")
    return row


def _writable_row(name: str) -> Any:
    row = _assay_row(name)
    rules.check_model_write(row.model)
    return row


def _record(row: Any) -> AssayRecord:
    workspace_id = row.model.workspace_id
    workspace = workspace_names([workspace_id]).get(workspace_id, "") if workspace_id else ""
    return AssayRecord(
        spec=from_json(row.spec),
        active=row.active,
        workspace=workspace,
        create_time=aware(row.create_time),
        update_time=aware(row.update_time),
    )
