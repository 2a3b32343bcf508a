"""Training jobs: checked, materialised into a job folder, run by a ``Runner``, and on
success committed as the model's next version (with its training dataset).

Jobs live in this process's memory (the README says so). A job is seen through its
model: NotFound alike for a missing job and one of a model the caller may not see.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
import shutil
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mlserve.catalog.artifacts import find_artifact
from mlserve.catalog.datasets import find_dataset_version
from mlserve.catalog.models import model_row, writable_model
from mlserve.catalog.uploads import Chunk, UploadHeader, Uploads
from mlserve.core.errors import InvalidArgument, NotFound
from mlserve.storage.blobs import FileSpec
from mlserve.storage.db import in_thread
from mlserve.storage.repository import Repository, sha256_of
from mlserve.training.runner import JobState, JobStatus, Runner
from mlserve.training.sandboxed import JobLimits, JobSpec

CHUNK_BYTES = 1024 * 1024
# What the script may write beside the model's files, which are not files of the version.
_CONFIG, _METRICS = "config.pbtxt", "metrics.json"


@dataclass(frozen=True)
class JobRequest:
    model: str
    code_version: int
    code_path: str
    dataset: str
    dataset_version: int
    parameters: Mapping[str, str] = field(default_factory=dict)


@dataclass
class TrainingJobRecord:
    job_id: str
    request: JobRequest
    create_time: dt.datetime
    code_sha256: str = ""
    dataset_sha256: str = ""
    dataset_version: int = 0
    status: JobStatus | None = None
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    version: int = 0

    @property
    def state(self) -> JobState:
        return JobState.QUEUED if self.status is None else self.status.state


class TrainingJobs:
    def __init__(
        self, runner: Runner, uploads: Uploads, repository: Repository, workdir: Path,
        limits: JobLimits | None = None,
    ) -> None:  # fmt: skip
        self.runner = runner
        self.uploads = uploads
        self.repository = repository
        self.workdir = workdir
        self.limits = limits or JobLimits()
        self._jobs: dict[str, TrainingJobRecord] = {}

    async def create(self, request: JobRequest) -> TrainingJobRecord:
        """Check the request (the caller must be able to change the model and see the code
        and the dataset), lay out the job's folder and queue it.

        Raises:
            NotFound: the model, code artifact or dataset version, or one hidden.
            PermissionDenied: the caller may not change the model.
            InvalidArgument: the code artifact is not a Python script.
            ResourceExhausted: the runner's queue is full.
        """
        job_id = "job-" + uuid.uuid4().hex[:16]
        record = await in_thread(self._prepare)(job_id, request)
        folder = self.workdir / job_id
        spec = JobSpec(
            code=folder / "code",
            entry_point=Path(request.code_path).name,
            data=folder / "data",
            output=folder / "output",
            parameters=dict(request.parameters),
            limits=self.limits,
        )
        try:
            record.status = await self.runner.submit(job_id, spec)
        except Exception:
            await in_thread(shutil.rmtree)(folder, ignore_errors=True)
            raise
        self._jobs[job_id] = record
        return record

    def _prepare(self, job_id: str, request: JobRequest) -> TrainingJobRecord:
        writable_model(request.model)
        if not request.code_path.endswith(".py"):
            raise InvalidArgument(
                f"code_path {request.code_path!r} is not a Python script: name a .py artifact"
            )
        code = find_artifact(request.model, request.code_version, request.code_path)
        dataset = find_dataset_version(request.dataset, request.dataset_version)
        folder = self.workdir / job_id
        (folder / "code").mkdir(parents=True)
        (folder / "data").mkdir()
        self._copy_blob(code.sha256, folder / "code" / Path(code.path).name)
        for entry in dataset.files:
            self._copy_blob(entry.spec.sha256, folder / "data" / entry.spec.path)
        return TrainingJobRecord(
            job_id=job_id,
            request=request,
            create_time=dt.datetime.now(dt.UTC).replace(tzinfo=None),
            code_sha256=code.sha256,
            dataset_sha256=dataset.sha256,
            dataset_version=dataset.version,
        )

    def _copy_blob(self, sha256: str, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        with self.repository.open_blob(sha256) as source, target.open("wb") as sink:
            shutil.copyfileobj(source, sink)
        target.chmod(0o444)

    async def get(self, job_id: str) -> TrainingJobRecord:
        """The job, if the caller may see its model; NotFound alike otherwise."""
        record = self._jobs.get(job_id)
        if record is None or not await in_thread(_visible)(record.request.model):
            raise NotFound(f"training job {job_id!r} does not exist")
        return record

    async def list(self, model: str = "", state: JobState | None = None) -> list[TrainingJobRecord]:
        """The visible jobs, newest first, of ``model`` and in ``state`` when given."""
        if model:
            await in_thread(model_row)(model)
        found = [
            record
            for record in self._jobs.values()
            if (not model or record.request.model == model)
            and (state is None or record.state is state)
        ]
        visible = [r for r in found if await in_thread(_visible)(r.request.model)]
        return sorted(visible, key=lambda r: r.create_time, reverse=True)

    async def cancel(self, job_id: str) -> TrainingJobRecord:
        """End the job (its processes are gone on return); the model's editors only."""
        record = await self.get(job_id)
        await in_thread(writable_model)(record.request.model)
        await self.runner.cancel(job_id)
        return record

    async def watch(self, job_id: str) -> AsyncIterator[str | TrainingJobRecord]:
        """The job's log lines so far and as they come, and its states, until it ends."""
        record = await self.get(job_id)
        queue = self.runner.watch(job_id)
        while True:
            item = await queue.get()
            if isinstance(item, str):
                yield item
                continue
            yield record
            if item.state.finished:
                return

    async def finished(self, status: JobStatus) -> None:
        """The runner's word that a job ended: commit a success, then drop its folder.

        A success whose output cannot be committed (no files, a bad config)
        becomes FAILED with the reason; nothing is committed then.
        """
        record = self._jobs.get(status.job_id)
        folder = self.workdir / status.job_id
        try:
            if record is None:
                return
            if status.result is not None:
                record.reason = status.result.reason
            if status.state is JobState.CANCELLED:
                record.reason = record.reason or "cancelled"
            if status.state is JobState.SUCCEEDED:
                try:
                    await self._commit(record, folder / "output")
                except Exception as error:  # the script's output is the untrusted part
                    status.state = JobState.FAILED
                    record.reason = f"its output could not be committed: {error}"
        finally:
            await in_thread(shutil.rmtree)(folder, ignore_errors=True)

    async def _commit(self, record: TrainingJobRecord, output: Path) -> None:
        request = record.request
        config = await in_thread(_read_text)(output / _CONFIG)
        record.metrics = await in_thread(_read_metrics)(output / _METRICS)
        specs = await in_thread(_output_files)(output)
        if not specs:
            raise InvalidArgument("the script wrote no model files to $MLSERVE_OUTPUT")
        header = UploadHeader(
            model=request.model,
            upload_id=f"train-{record.job_id}",
            files=specs,
            config=config,
            training_dataset=(request.dataset, record.dataset_version),
        )

        async def parts() -> AsyncIterator[UploadHeader | Chunk]:
            yield header
            for spec in specs:
                with (output / spec.path).open("rb") as handle:
                    offset = 0
                    while data := await asyncio.to_thread(handle.read, CHUNK_BYTES):
                        yield Chunk(spec.path, offset, data)
                        offset += len(data)

        version = await self.uploads.receive(parts())
        record.version = version.version


def _visible(model: str) -> bool:
    """Whether the caller may see ``model`` (and so its jobs)."""
    try:
        model_row(model)
    except NotFound:
        return False
    return True


def _read_text(path: Path) -> str:
    return path.read_text() if path.is_file() else ""


def _read_metrics(path: Path) -> dict[str, float]:
    if not path.is_file():
        return {}
    try:
        loaded = json.loads(path.read_text())
    except ValueError as error:
        raise InvalidArgument(f"metrics.json is not JSON: {error}") from None
    if not isinstance(loaded, dict) or not all(
        isinstance(v, (int, float)) and math.isfinite(v) for v in loaded.values()
    ):
        raise InvalidArgument("metrics.json must be an object of finite numbers")
    return {str(k): float(v) for k, v in loaded.items()}


def _output_files(output: Path) -> list[FileSpec]:
    specs = []
    for path in sorted(output.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        relative = path.relative_to(output).as_posix()
        if relative in (_CONFIG, _METRICS):
            continue
        with path.open("rb") as handle:
            specs.append(FileSpec(relative, path.stat().st_size, sha256_of(handle)))
    return specs
