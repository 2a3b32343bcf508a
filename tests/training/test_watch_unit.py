"""TrainingJobs.watch against a scripted runner: the runner marks its shared status
finished before the commit and the row are written, so a watcher must wait for the
row before it answers (else a success showed version 0)."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any, cast

from mlserve.training.jobs import TrainingJobs
from mlserve.training.runner import JobState, JobStatus, Runner
from mlserve.training.store import TrainingJobRecord

RUNNING_ROW = TrainingJobRecord(
    job_id="j1", model="m", code_version=1, code_path="train.py", dataset="d",
    dataset_version=1, instance="here", state=JobState.RUNNING,
)  # fmt: skip


class ScriptedRows(TrainingJobs):
    """The job table as a dict, so the order of events can be played exactly."""

    rows: dict[str, TrainingJobRecord]

    async def get(self, job_id: str) -> TrainingJobRecord:
        return self.rows[job_id]


class OneJobRunner:
    def __init__(self, status: JobStatus) -> None:
        self.queue: asyncio.Queue[JobStatus | str] = asyncio.Queue()
        self.status = status

    def watch(self, job_id: str) -> asyncio.Queue[JobStatus | str]:
        return self.queue


def test_a_watcher_answers_a_success_with_its_committed_version(tmp_path: Path) -> None:
    async def scenario() -> list[str | TrainingJobRecord]:
        status = JobStatus("j1", state=JobState.RUNNING)
        runner = OneJobRunner(status)
        jobs = ScriptedRows(
            cast(Runner, runner), cast(Any, None), cast(Any, None), tmp_path,
            cast(Any, None), "here",
        )  # fmt: skip
        jobs.rows = {"j1": RUNNING_ROW}
        runner.queue.put_nowait("training")
        runner.queue.put_nowait(status)  # published when it started running ...
        status.state = JobState.SUCCEEDED  # ... and already marked finished by the runner

        async def commit_then_record() -> None:
            await asyncio.sleep(0.05)  # the commit of the new version takes a while
            jobs.rows["j1"] = dataclasses.replace(RUNNING_ROW, state=JobState.SUCCEEDED, version=3)
            status.ended.set()

        committing = asyncio.create_task(commit_then_record())
        seen = [item async for item in jobs.watch("j1")]
        await committing
        return seen

    seen = asyncio.run(scenario())
    assert seen[0] == "training"
    final = seen[-1]
    assert isinstance(final, TrainingJobRecord)
    assert (final.state, final.version) == (JobState.SUCCEEDED, 3)
