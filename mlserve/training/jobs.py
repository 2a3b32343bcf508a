"""Training jobs: checked, materialised into a job folder, run by a ``Runner``, and on
success committed as the model's next version (with its training dataset).

A job is a row of the database from its create on (``store``); the runner of this
process runs it, and its log lines go to the database as they come (``logs``), so
any process on that database answers for it and follows its log. At start, the jobs this
instance had queued or running when it stopped end FAILED ("interrupted by a
restart"), not re-queued: a script may have half-done its work, and it runs
again only when someone asks. A job is seen through its model: NotFound alike
for a missing job and one of a model the caller may not see.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import shutil
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import Requirement

from mlserve.catalog.artifacts import ArtifactRecord, find_artifact
from mlserve.catalog.datasets import find_dataset_version, is_table
from mlserve.catalog.models import writable_model
from mlserve.catalog.uploads import Chunk, UploadHeader, Uploads
from mlserve.core.errors import FailedPrecondition, InvalidArgument, NotFound
from mlserve.core.paging import Page, PageTokens
from mlserve.storage.blobs import FileSpec
from mlserve.storage.db import in_thread
from mlserve.storage.repository import Repository, sha256_of
from mlserve.training import store
from mlserve.training.logs import JobLogs
from mlserve.training.requirements import (
    MAX_ENV_BYTES,
    check_requirements,
    parse_requirements,
)
from mlserve.training.runner import Capabilities, JobState, JobStatus, Runner
from mlserve.training.sandboxed import JobLimits, JobSpec
from mlserve.training.store import TrainingJobRecord

CHUNK_BYTES = 1024 * 1024
# What the script may write beside the model's files, which are not files of the version.
_CONFIG, _METRICS = "config.pbtxt", "metrics.json"
# Log lines read from the database at once by a watcher.
WATCH_PAGE_LINES = 1000
STOPPED = "interrupted: MLServe stopped while it ran; create it again"


@dataclass(frozen=True)
class JobRequest:
    model: str
    code_version: int
    code_path: str
    dataset: str
    dataset_version: int
    parameters: Mapping[str, str] = field(default_factory=dict)
    env_path: str = ""
    runner_labels: Sequence[str] = ()
    network: bool = False
    code_dataset: str = ""
    code_dataset_version: int = 0


@dataclass(frozen=True)
class _Code:
    """Where a job's script comes from: its files (sha256, path in the code folder), the
    one to run, and its lineage."""

    files: list[tuple[str, str]]
    entry_point: str
    sha256: str
    version: int = 0
    dataset_version: int = 0


class TrainingJobs:
    def __init__(
        self,
        runner: Runner,
        uploads: Uploads,
        repository: Repository,
        workdir: Path,
        tokens: PageTokens,
        instance: str,
        limits: JobLimits | None = None,
    ) -> None:
        self.runner = runner
        self.uploads = uploads
        self.repository = repository
        self.workdir = workdir
        self.tokens = tokens
        self.instance = instance
        self.limits = limits or JobLimits()
        self.logs = JobLogs(self.limits.log_lines)
        self._flushing: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        """Start writing log lines to the database (call from the running event loop,
        before the runner takes jobs)."""
        self._flushing = asyncio.create_task(self.logs.run(), name="training-log-writer")

    async def recover(self) -> list[str]:
        """End as FAILED the jobs this instance had queued or running when it last
        stopped (killed, or its host went down), and drop their folders; their ids.
        Call once at start, before the runner takes jobs."""
        interrupted = await in_thread(store.interrupt_unfinished)(self.instance)
        for job_id in interrupted:
            await in_thread(shutil.rmtree)(self.workdir / job_id, ignore_errors=True)
        return interrupted

    async def stop(self) -> None:
        """Stop the runner; the jobs it ends so are FAILED (``STOPPED``), not CANCELLED,
        each with its log written."""
        self._stopping = True
        await self.runner.stop()
        if self._flushing is not None:
            self._flushing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flushing
        await self.logs.flush()

    def logged(self, job_id: str, line: str) -> None:
        """The runner's word that a job printed ``line``: it goes to the database."""
        self.logs.append(job_id, line)

    async def create(self, request: JobRequest) -> TrainingJobRecord:
        """Check the request (the caller must be able to change the model and see the code,
        env and dataset; the runner must offer the labels, network and requirements it
        asks for), lay out the job's folder, record the job and queue it.

        Raises:
            NotFound: the model, code or env artifact or dataset version, or one hidden.
            PermissionDenied: the caller may not change the model.
            InvalidArgument: the code artifact is not a Python script, the env artifact
                is not of kind env or not requirements, a label is empty.
            FailedPrecondition: a label no runner has, network not allowed, a
                requirement missing or of another version (each named).
            ResourceExhausted: the runner's queue is full.
        """
        job_id = "job-" + uuid.uuid4().hex[:16]
        offered = await self.runner.capabilities()
        record, entry_point = await in_thread(self._prepare)(job_id, request, offered)
        folder = self.workdir / job_id
        spec = JobSpec(
            code=folder / "code",
            entry_point=entry_point,
            data=folder / "data",
            output=folder / "output",
            parameters=dict(request.parameters),
            limits=self.limits,
            network=request.network,
        )
        try:
            await self.runner.submit(job_id, spec)
        except Exception:
            await in_thread(store.delete_job)(job_id)
            await in_thread(shutil.rmtree)(folder, ignore_errors=True)
            raise
        return record

    def _prepare(
        self, job_id: str, request: JobRequest, offered: Capabilities
    ) -> tuple[TrainingJobRecord, str]:
        """The stored job and its entry point (relative to its code folder)."""
        model = writable_model(request.model)
        if not request.code_path.endswith(".py"):
            raise InvalidArgument(
                f"code_path {request.code_path!r} is not a Python script: name a .py file"
            )
        code = _code_of(request)
        env, requirements = self._env(request, code.version)
        dataset = find_dataset_version(request.dataset, request.dataset_version)
        _check_placement(request, offered)
        if requirements:
            check_requirements(requirements, offered.packages, request.env_path)
        folder = self.workdir / job_id
        (folder / "code").mkdir(parents=True)
        try:
            (folder / "data").mkdir()
            for sha256, path in code.files:
                self._copy_blob(sha256, folder / "code" / path)
            for entry in dataset.files:
                self._copy_blob(entry.spec.sha256, folder / "data" / entry.spec.path)
            stored = store.insert_job(
                TrainingJobRecord(
                    job_id=job_id,
                    model=request.model,
                    code_version=code.version,
                    code_path=request.code_path,
                    dataset=request.dataset,
                    dataset_version=dataset.version,
                    instance=self.instance,
                    parameters=dict(request.parameters),
                    code_sha256=code.sha256,
                    code_dataset=request.code_dataset,
                    code_dataset_version=code.dataset_version,
                    dataset_sha256=dataset.sha256,
                    env_path=request.env_path,
                    env_sha256=env.sha256 if env is not None else "",
                    env_requirements=[str(r) for r in requirements],
                    runner_labels=sorted(set(request.runner_labels)),
                    network=request.network,
                ),
                model,
            )
            return stored, code.entry_point
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    def _env(
        self, request: JobRequest, version: int
    ) -> tuple[ArtifactRecord | None, list[Requirement]]:
        """The env artifact of the code's version and its requirements (none without one)."""
        if not request.env_path:
            return None, []
        env = find_artifact(request.model, version, request.env_path)
        if env.kind != "env":
            raise InvalidArgument(
                f"artifact {request.env_path!r} is of kind {env.kind!r}, not 'env': attach "
                "the requirements with --kind env"
            )
        with self.repository.open_blob(env.sha256) as handle:
            content = handle.read(MAX_ENV_BYTES + 1)  # more is refused, unread
        return env, parse_requirements(content, request.env_path)

    def _copy_blob(self, sha256: str, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        with self.repository.open_blob(sha256) as source, target.open("wb") as sink:
            shutil.copyfileobj(source, sink)
        target.chmod(0o444)

    async def get(self, job_id: str) -> TrainingJobRecord:
        """The job, if the caller may see its model; NotFound alike otherwise."""
        return await in_thread(store.find_job)(job_id)

    async def list(
        self, model: str, state: JobState | None, requested_size: int, token: str
    ) -> Page[TrainingJobRecord]:
        """One page of the visible jobs, newest first, of ``model`` and in ``state`` when
        given (INVALID_ARGUMENT for a token not issued for these filters)."""
        return await in_thread(store.list_jobs)(self.tokens, model, state, requested_size, token)

    async def cancel(self, job_id: str) -> TrainingJobRecord:
        """End the job (its processes are gone on return); the model's editors only.
        A finished job is returned as it is."""
        record = await self.get(job_id)
        await in_thread(writable_model)(record.model)
        if record.state.finished:
            return record
        try:
            await self.runner.cancel(job_id)
        except NotFound:
            # Ended meanwhile (the runner forgets a job once its end is stored), or not ours.
            record = await self.get(job_id)
            if not record.state.finished:
                raise self._elsewhere(record, "cancel") from None
        return await self.get(job_id)

    async def watch(self, job_id: str) -> AsyncIterator[str | TrainingJobRecord]:
        """The job's stored log lines (its newest ``log_lines``) and its state, then new
        lines and each change of state as they come, until it ends; from any process
        on the job's database (``logs`` says how soon). A watcher that falls behind a
        flood skips the lines deleted meanwhile. A finished job gives its log and its
        final state. NotFound if the job (or its model) is gone or hidden."""
        shown: JobState | None = None
        after = 0
        while True:
            change = self.logs.next_change()
            # The state first: a job's lines are all written before its end is, so
            # the lines read after a final state are all of them.
            record = await self.get(job_id)
            while True:
                lines = await in_thread(store.log_lines)(job_id, after, WATCH_PAGE_LINES)
                for seq, line in lines:
                    yield line
                    after = seq
                if len(lines) < WATCH_PAGE_LINES:
                    break
            if record.state is not shown:
                shown = record.state
                yield record
            if record.state.finished:
                return
            await self.logs.wait(change)

    def _elsewhere(self, record: TrainingJobRecord, what: str) -> FailedPrecondition:
        return FailedPrecondition(
            f"training job {record.job_id!r} runs on MLServe instance {record.instance!r}, "
            f"not this one ({self.instance!r}): {what} it there"
        )

    async def changed(self, status: JobStatus) -> None:
        """The runner's word that a job started or ended. An end commits a success, then
        drops the job's folder, and records the final state.

        A success whose output cannot be committed (no files, a bad config)
        becomes FAILED with the reason; nothing is committed then. A job whose row
        is gone (its model was deleted) commits nothing.
        """
        if status.state is JobState.RUNNING:
            await in_thread(store.record_start)(status.job_id, status.start_time)
            self.logs.notify()
            return
        folder = self.workdir / status.job_id
        reason, version = "", 0
        metrics: dict[str, float] = {}
        try:
            if status.result is not None:
                reason = status.result.reason
            if status.state is JobState.CANCELLED:
                if self._stopping:
                    status.state, reason = JobState.FAILED, STOPPED
                reason = reason or "cancelled"
            if status.state is JobState.SUCCEEDED:
                try:
                    if not await in_thread(store.job_exists)(status.job_id):
                        raise NotFound("its model was deleted while it ran")
                    record = await self.get(status.job_id)
                    metrics, version = await self._commit(record, folder / "output")
                except Exception as error:  # the script's output is the untrusted part
                    status.state = JobState.FAILED
                    reason = f"its output could not be committed: {error}"
        finally:
            await in_thread(shutil.rmtree)(folder, ignore_errors=True)
            await self.logs.close(status.job_id)  # before the end: see watch
            await in_thread(store.record_end)(
                status.job_id, status.state, reason, status.end_time, metrics, version
            )
            self.logs.notify()

    async def _commit(
        self, record: TrainingJobRecord, output: Path
    ) -> tuple[dict[str, float], int]:
        config = await in_thread(_read_text)(output / _CONFIG)
        metrics = await in_thread(_read_metrics)(output / _METRICS)
        specs = await in_thread(_output_files)(output)
        if not specs:
            raise InvalidArgument("the script wrote no model files to $MLSERVE_OUTPUT")
        header = UploadHeader(
            model=record.model,
            upload_id=f"train-{record.job_id}",
            files=specs,
            config=config,
            training_dataset=(record.dataset, record.dataset_version),
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
        return metrics, version.version


def _code_of(request: JobRequest) -> _Code:
    """The job's script: a code artifact of the model's ``code_version``, or a file of
    the ``code_dataset`` version with the dataset's other scripts beside it (blocking).

    Raises:
        NotFound: the artifact, dataset version or file (or one hidden).
        InvalidArgument: both a code version and a code dataset, or an env artifact
            with a code dataset.
    """
    if not request.code_dataset:
        artifact = find_artifact(request.model, request.code_version, request.code_path)
        name = Path(artifact.path).name
        return _Code([(artifact.sha256, name)], name, artifact.sha256, version=artifact.version)
    if request.code_version:
        raise InvalidArgument(
            "give code_version (the script is a code artifact) or code_dataset (the script is "
            "a dataset's file), not both"
        )
    if request.env_path:
        raise InvalidArgument(
            "env_path names an env artifact of code_version; a job whose code comes from a "
            "dataset cannot name one yet: drop env_path, or attach the script as a code artifact"
        )
    source = find_dataset_version(request.code_dataset, request.code_dataset_version)
    scripts = {e.spec.path: e.spec.sha256 for e in source.files if not is_table(e.spec.path)}
    if request.code_path not in scripts:
        raise NotFound(
            f"dataset {request.code_dataset!r} version {source.version} has no script "
            f"{request.code_path!r} (it has: {', '.join(sorted(scripts)) or 'none'})"
        )
    return _Code(
        [(sha256, path) for path, sha256 in sorted(scripts.items())],
        request.code_path,
        scripts[request.code_path],
        dataset_version=source.version,
    )


def _check_placement(request: JobRequest, offered: Capabilities) -> None:
    """FailedPrecondition naming a label the runner lacks, or network it does not allow."""
    for label in request.runner_labels:
        if not label.strip():
            raise InvalidArgument("runner_labels holds an empty label: name a label or drop it")
    missing = sorted(set(request.runner_labels) - offered.labels)
    if missing:
        have = ", ".join(sorted(offered.labels)) or "none"
        raise FailedPrecondition(
            f"no training runner has the label {missing[0]!r} (this MLServe's runner has: "
            f"{have}; an admin sets them with --training-labels)"
        )
    if request.network and not offered.network:
        raise FailedPrecondition(
            "this MLServe gives training jobs no network: an admin allows it with "
            "--training-allow-network, or run the job without network"
        )


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
