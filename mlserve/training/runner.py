"""Where training jobs run. ``Runner`` is what the training service needs of any
engine; ``LocalRunner`` runs jobs on this host in the sandbox, from a bounded
queue, a fixed number at a time. A cluster engine (Ray Jobs, Kubernetes Jobs)
is another ``Runner``: it takes the same ``JobSpec``, reports the same
``JobResult``, hands each log line to ``Logged`` as it comes, and says what it
offers (``Capabilities``: labels, network, the packages of its interpreter) so a
job is refused at create, not after it queued, when it asks for what the runner
lacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import enum
import functools
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from mlserve.core.errors import FailedPrecondition, NotFound, ResourceExhausted
from mlserve.training.sandboxed import JobResult, JobSpec, Outcome, SandboxedJob
from mlserve.triton.sandbox import Sandbox, scrubbed_environment

log = logging.getLogger(__name__)


class JobState(enum.Enum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def finished(self) -> bool:
        """A state a job never leaves."""
        return self not in (JobState.QUEUED, JobState.RUNNING)


@dataclass
class JobStatus:
    """What a runner knows of one job (its log lines went to ``Logged``)."""

    job_id: str
    state: JobState = JobState.QUEUED
    result: JobResult | None = None
    start_time: dt.datetime | None = None
    end_time: dt.datetime | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)


Changed = Callable[[JobStatus], Awaitable[None]]
"""Called when a job starts running and once it ends (any final state), before its
anyone is told it ended."""
Logged = Callable[[str, str], None]
"""Called with (job id, line) for each line a job prints, each cut to the job's
``log_line_bytes``, as it comes; it must not block (it runs on the event loop)."""

# What the sandbox's interpreter has installed: canonical name -> version.
_PACKAGES_PROBE = """
import importlib.metadata as m, json, re
print(json.dumps({re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower(): d.version
                  for d in m.distributions() if d.metadata["Name"]}))
"""


@dataclass(frozen=True)
class Capabilities:
    """What a runner offers jobs: its labels, whether they may use the network, and
    the distributions its interpreter has (canonical name -> version)."""

    labels: frozenset[str]
    network: bool
    packages: Mapping[str, str]


class Runner(Protocol):
    async def capabilities(self) -> Capabilities:
        """What this runner offers; CreateTrainingJob checks a job against it."""

    async def submit(self, job_id: str, spec: JobSpec) -> JobStatus:
        """Queue the job; ResourceExhausted when the queue is full."""

    async def cancel(self, job_id: str) -> JobStatus:
        """End the job (a queued one never starts); its processes are gone on return."""

    def status(self, job_id: str) -> JobStatus:
        """The job's status; NotFound for a job this runner does not know (a finished
        job is forgotten once its end is recorded: the database has it)."""

    async def stop(self) -> None:
        """End every running job (each reported as CANCELLED) and take no more."""


@dataclass(frozen=True)
class RunnerLimits:
    concurrent: int = 1
    queued: int = 16


class LocalRunner:
    """Jobs on this host: at most ``limits.queued`` waiting, ``limits.concurrent`` running,
    with ``labels``, and the network only when ``allow_network``."""

    def __init__(
        self,
        sandbox: Sandbox,
        limits: RunnerLimits,
        changed: Changed,
        logged: Logged,
        labels: frozenset[str] = frozenset(),
        allow_network: bool = False,
    ) -> None:
        self.sandbox = sandbox
        self.limits = limits
        self.changed = changed
        self.logged = logged
        self.labels = labels
        self.allow_network = allow_network
        self._packages: dict[str, str] | None = None
        self._queue: asyncio.Queue[tuple[JobStatus, JobSpec]] = asyncio.Queue(limits.queued)
        # Queued and running jobs, and finished ones whose end could not be recorded.
        self._jobs: dict[str, JobStatus] = {}
        self._running: dict[str, SandboxedJob] = {}
        self._workers: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Start the workers (call from the running event loop)."""
        self._workers = [
            asyncio.create_task(self._work(), name=f"training-worker-{index}")
            for index in range(self.limits.concurrent)
        ]

    async def stop(self) -> None:
        """Cancel every job and stop the workers."""
        for job_id in list(self._running):
            with contextlib.suppress(NotFound):  # it ended meanwhile, and was forgotten
                await self.cancel(job_id)
        for worker in self._workers:
            worker.cancel()
        for worker in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await worker

    async def capabilities(self) -> Capabilities:
        if self._packages is None:
            self._packages = await self._probe_packages()
        return Capabilities(self.labels, self.allow_network, self._packages)

    async def _probe_packages(self) -> dict[str, str]:
        """The distributions the interpreter jobs run in sees, asked of it in the sandbox
        (once: the installation does not change under a running MLServe)."""
        command = self.sandbox.wrap(
            [sys.executable, "-E", "-s", "-c", _PACKAGES_PROBE],
            placed={},
            read_only=(),
            network=False,
        )
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=scrubbed_environment((), ()),
        )
        out, err = await process.communicate()
        if process.returncode != 0:
            raise FailedPrecondition(
                "could not list the training runner's packages to check the env artifact: "
                f"{err.decode(errors='replace').strip()[-500:]}"
            )
        packages: dict[str, str] = json.loads(out)
        return packages

    async def submit(self, job_id: str, spec: JobSpec) -> JobStatus:
        if spec.network and not self.allow_network:
            raise FailedPrecondition(
                "this runner gives training jobs no network: an admin allows it with "
                "--training-allow-network"
            )
        if job_id in self._jobs:
            raise FailedPrecondition(f"training job {job_id!r} was submitted already")
        status = JobStatus(job_id)
        try:
            self._queue.put_nowait((status, spec))
        except asyncio.QueueFull:
            raise ResourceExhausted(
                f"{self._queue.qsize()} training jobs are queued already, the most this "
                "runner holds (--training-queue): retry once some have finished"
            ) from None
        self._jobs[job_id] = status
        return status

    async def cancel(self, job_id: str) -> JobStatus:
        status = self.status(job_id)
        if status.state.finished:
            return status
        running = self._running.get(job_id)
        if running is not None:
            await running.cancel()
            # The worker records CANCELLED once run() returns; wait for it.
            await status.ended.wait()
        else:
            await self._finish(status, JobState.CANCELLED, None)
        return status

    def status(self, job_id: str) -> JobStatus:
        found = self._jobs.get(job_id)
        if found is None:
            raise NotFound(f"training job {job_id!r} does not exist")
        return found

    async def _work(self) -> None:
        while True:
            status, spec = await self._queue.get()
            job_id = status.job_id
            if status.state.finished:  # cancelled while queued
                continue
            job = SandboxedJob(spec, self.sandbox, on_line=functools.partial(self.logged, job_id))
            self._running[job_id] = job
            status.start_time = _now()
            status.state = JobState.RUNNING
            try:
                await self.changed(status)
            except Exception:  # the job runs all the same; its end is recorded again
                log.exception("training job %s: recording its start failed", job_id)
            try:
                result = await job.run()
            except Exception as error:  # a job's fault must not stop the worker
                result = JobResult(Outcome.FAILED, f"could not be started: {error}", None, "")
            finally:
                del self._running[job_id]
            await self._finish(status, JobState(result.outcome.value), result)

    async def _finish(self, status: JobStatus, state: JobState, result: JobResult | None) -> None:
        status.result = result
        status.end_time = _now()
        status.state = state
        try:
            await self.changed(status)
            # Recorded: the database answers for it from now on, not this process's memory.
            self._jobs.pop(status.job_id, None)
        finally:
            status.ended.set()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)
