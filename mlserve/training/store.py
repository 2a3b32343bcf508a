"""Training jobs in the database (``tables.TrainingJob`` and their log lines,
``tables.TrainingJobLogLine``, owned here): every job is a row from its create
on, so GetTrainingJob and ListTrainingJobs answer after a restart and on every
replica, and so do its log lines (``logs``). Blocking functions (call them through
``db.in_thread``). A job is seen through its model: NotFound alike for a missing
job and one of a model the caller may not see.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import peewee as pw

from mlserve.catalog.models import model_names, model_row, visible_model_ids
from mlserve.core.errors import NotFound
from mlserve.core.paging import Listing, Page, PageTokens
from mlserve.storage import db, tables
from mlserve.training.runner import JobState

# Rows per INSERT of log lines: well under SQLite's and PostgreSQL's parameter limits.
_INSERT_ROWS = 250
INTERRUPTED = "interrupted by a restart of MLServe while it was queued or running; create it again"


@dataclass(frozen=True)
class TrainingJobRecord:
    """One job as the database has it."""

    job_id: str
    model: str
    code_version: int
    code_path: str
    dataset: str
    dataset_version: int
    instance: str
    state: JobState = JobState.QUEUED
    parameters: Mapping[str, str] = field(default_factory=dict)
    code_sha256: str = ""
    code_dataset: str = ""
    code_dataset_version: int = 0
    dataset_sha256: str = ""
    env_path: str = ""
    env_sha256: str = ""
    env_requirements: Sequence[str] = ()
    runner_labels: Sequence[str] = ()
    network: bool = False
    reason: str = ""
    metrics: Mapping[str, float] = field(default_factory=dict)
    version: int = 0
    create_time: dt.datetime | None = None
    start_time: dt.datetime | None = None
    end_time: dt.datetime | None = None


def insert_job(record: TrainingJobRecord, model: Any) -> TrainingJobRecord:
    """Add ``record`` (QUEUED) as a job of ``model`` (its row); the stored record."""
    row = tables.TrainingJob.create(
        job_id=record.job_id,
        model=model,
        code_version=record.code_version,
        code_path=record.code_path,
        code_sha256=record.code_sha256,
        code_dataset=record.code_dataset,
        code_dataset_version=record.code_dataset_version,
        dataset=record.dataset,
        dataset_version=record.dataset_version,
        dataset_sha256=record.dataset_sha256,
        parameters=json.dumps(dict(record.parameters), sort_keys=True),
        env_path=record.env_path,
        env_sha256=record.env_sha256,
        env_requirements=json.dumps(list(record.env_requirements)),
        runner_labels=json.dumps(list(record.runner_labels)),
        network=record.network,
        instance=record.instance,
        state=record.state.value,
    )
    return _record(row, model.name)


def delete_job(job_id: str) -> None:
    """Forget a job the runner refused (its queue was full)."""
    tables.TrainingJob.delete().where(tables.TrainingJob.job_id == job_id).execute()


def job_exists(job_id: str) -> bool:
    """Whether the job's row is there (its model may have been deleted meanwhile)."""
    return bool(tables.TrainingJob.select().where(tables.TrainingJob.job_id == job_id).exists())


def record_start(job_id: str, start_time: dt.datetime | None) -> None:
    job = tables.TrainingJob
    job.update(state=JobState.RUNNING.value, start_time=start_time).where(
        (job.job_id == job_id) & (job.state == JobState.QUEUED.value)
    ).execute()


def record_end(
    job_id: str,
    state: JobState,
    reason: str,
    end_time: dt.datetime | None,
    metrics: Mapping[str, float],
    version: int,
) -> None:
    """The job's final state; a job already final (a restart got there first) stays."""
    job = tables.TrainingJob
    job.update(
        state=state.value,
        reason=reason,
        end_time=end_time or db.utcnow(),
        metrics=json.dumps(dict(metrics), sort_keys=True),
        version=version,
    ).where(
        (job.job_id == job_id) & job.state.in_([JobState.QUEUED.value, JobState.RUNNING.value])
    ).execute()


def interrupt_unfinished(instance: str) -> list[str]:
    """End as FAILED (reason ``INTERRUPTED``) the jobs ``instance`` had queued or running
    when it stopped; their ids. Other instances' jobs are theirs to end."""
    job = tables.TrainingJob
    unfinished = (job.instance == instance) & job.state.in_(
        [JobState.QUEUED.value, JobState.RUNNING.value]
    )
    with db.database.atomic():
        ids = [row.job_id for row in job.select(job.job_id).where(unfinished)]
        if ids:
            job.update(state=JobState.FAILED.value, reason=INTERRUPTED, end_time=db.utcnow()).where(
                unfinished & job.job_id.in_(ids)
            ).execute()
    return ids


def append_log(job_id: str, lines: Sequence[tuple[int, str]], keep: int) -> bool:
    """Store the job's ``lines`` (seq, text; ascending) and delete its lines older than
    the newest ``keep``, in one transaction; a line stored already (a retried batch)
    stays as it was. False, storing nothing, when the job's row is gone (its model was
    deleted meanwhile)."""
    if not lines:
        return True
    line = tables.TrainingJobLogLine
    rows = [{"job": job_id, "seq": seq, "line": text} for seq, text in lines]
    try:
        with db.database.atomic():
            if not job_exists(job_id):
                return False
            for batch in pw.chunked(rows, _INSERT_ROWS):
                line.insert_many(batch).on_conflict_ignore().execute()
            oldest_kept = lines[-1][0] - keep + 1
            line.delete().where((line.job == job_id) & (line.seq < oldest_kept)).execute()
    except pw.IntegrityError:  # the row went between the check and the insert
        return False
    return True


def log_lines(job_id: str, after: int, limit: int) -> list[tuple[int, str]]:
    """Up to ``limit`` of the job's stored lines numbered above ``after``, oldest first
    (seq, text). The caller checked the job is visible."""
    line = tables.TrainingJobLogLine
    query = (
        line.select(line.seq, line.line)
        .where((line.job == job_id) & (line.seq > after))
        .order_by(line.seq)
        .limit(limit)
    )
    return [(row.seq, row.line) for row in query]


def find_job(job_id: str) -> TrainingJobRecord:
    """The job, if the caller may see its model; NotFound alike otherwise."""
    row: Any = tables.TrainingJob.get_or_none(tables.TrainingJob.job_id == job_id)
    names = model_names([row.model_id]) if row is not None else {}
    if row is None or not _visible(names.get(row.model_id, "")):
        raise NotFound(f"training job {job_id!r} does not exist")
    return _record(row, names[row.model_id])


def list_jobs(
    tokens: PageTokens, model: str, state: JobState | None, requested_size: int, token: str
) -> Page[TrainingJobRecord]:
    """One page of the visible jobs, newest first, of ``model`` and in ``state`` when
    given; NotFound for a ``model`` the caller may not see."""
    job = tables.TrainingJob
    conditions: list[Any] = []
    if model:
        conditions.append(job.model == model_row(model).id)
    if state is not None:
        conditions.append(job.state == state.value)
    visible = visible_model_ids()
    if visible is not None:
        conditions.append(job.model.in_(visible))
    select = job.select()
    listing = Listing(
        select.where(*conditions) if conditions else select,
        job.id,
        lambda row: row,
        lambda row: row.id,
        {"list": "training_jobs", "model": model, "state": state.value if state else ""},
        descending=True,
    )
    page = tokens.page(listing, requested_size, token)
    names = model_names([row.model_id for row in page.items])
    records = [_record(row, names[row.model_id]) for row in page.items]
    return Page(records, page.next_page_token)


def _visible(model: str) -> bool:
    if not model:
        return False
    try:
        model_row(model)
    except NotFound:
        return False
    return True


def _record(row: Any, model: str) -> TrainingJobRecord:
    return TrainingJobRecord(
        job_id=row.job_id,
        model=model,
        code_version=row.code_version,
        code_path=row.code_path,
        dataset=row.dataset,
        dataset_version=row.dataset_version,
        instance=row.instance,
        state=JobState(row.state),
        parameters=json.loads(row.parameters),
        code_sha256=row.code_sha256,
        code_dataset=row.code_dataset,
        code_dataset_version=row.code_dataset_version,
        dataset_sha256=row.dataset_sha256,
        env_path=row.env_path,
        env_sha256=row.env_sha256,
        env_requirements=json.loads(row.env_requirements),
        runner_labels=json.loads(row.runner_labels),
        network=row.network,
        reason=row.reason,
        metrics=json.loads(row.metrics),
        version=row.version,
        create_time=row.create_time,
        start_time=row.start_time,
        end_time=row.end_time,
    )
