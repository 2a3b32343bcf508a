"""Training jobs' log lines in the database, on SQLite and PostgreSQL: a job keeps
its newest lines only however much it prints, a retried batch is stored once, a
NUL a script printed is stored, the lines go with the job's model; and a watcher
with its own ``TrainingJobs`` (as on another replica) follows a job another one
runs: its lines as they come, then its final state; lines whose write failed
wait for the next one."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any, cast

import peewee as pw
import pytest

from mlserve.core.errors import Unavailable
from mlserve.storage import tables
from mlserve.training import store
from mlserve.training.jobs import TrainingJobs
from mlserve.training.logs import JobLogs
from mlserve.training.runner import JobState, JobStatus, Runner
from mlserve.training.sandboxed import JobLimits, JobResult, Outcome
from mlserve.training.store import TrainingJobRecord


def add_job(job_id: str, model: Any) -> None:
    store.insert_job(
        TrainingJobRecord(
            job_id=job_id, model=model.name, code_version=1, code_path="train.py",
            dataset="ds", dataset_version=1, instance="a",
        ),
        model,
    )  # fmt: skip


def stored(job_id: str) -> list[tuple[int, str]]:
    return store.log_lines(job_id, 0, 1_000_000)


def test_a_job_keeps_its_newest_lines_and_they_go_with_its_model(store_db: pw.Database) -> None:
    model = tables.Model.create(name="logged")
    add_job("job-1", model)
    add_job("job-2", model)
    for start in range(1, 2501, 500):  # 2,500 lines in batches of 500, keeping 1,000
        batch = [(seq, f"line {seq}") for seq in range(start, start + 500)]
        assert store.append_log("job-1", batch, keep=1000)
    assert [seq for seq, _ in stored("job-1")] == list(range(1501, 2501))
    assert store.append_log("job-1", [(2500, "again")], keep=1000)  # a retried batch
    assert stored("job-1")[-1] == (2500, "line 2500")
    assert store.log_lines("job-1", 2400, 10) == [(s, f"line {s}") for s in range(2401, 2411)]
    assert store.append_log("job-2", [(1, "other job")], keep=1000)
    model.delete_instance()  # deleting the model deletes its jobs and their lines
    assert tables.TrainingJobLogLine.select().count() == 0
    assert not store.append_log("job-1", [(2501, "after")], keep=1000)  # gone: not stored
    assert tables.TrainingJobLogLine.select().count() == 0


def test_a_flood_waits_as_a_bounded_ring_and_is_written_as_its_tail(
    store_db: pw.Database,
) -> None:
    model = tables.Model.create(name="flooded")
    add_job("job-f", model)

    async def scenario() -> int:
        logs = JobLogs(keep=50)
        for number in range(100_000):  # faster than any flush: only the ring grows
            logs.append("job-f", f"n{number}")
        logs.append("job-f", "a NUL \x00 in it")
        waiting = len(logs._pending["job-f"].lines)
        await logs.close("job-f")
        return waiting

    assert asyncio.run(scenario()) == 50
    lines = stored("job-f")
    assert [seq for seq, _ in lines] == list(range(100_001 - 49, 100_002))
    assert lines[-1] == (100_001, "a NUL \ufffd in it")
    assert lines[-2] == (100_000, "n99999")


class NoRunner:
    """What these TrainingJobs need of a runner: that it stops."""

    async def stop(self) -> None:
        pass


def test_a_watcher_elsewhere_follows_the_lines_then_the_final_state(
    store_db: pw.Database, tmp_path: Path
) -> None:
    model = tables.Model.create(name="followed")
    add_job("job-w", model)

    def jobs(poll: float) -> TrainingJobs:
        made = TrainingJobs(
            cast(Runner, NoRunner()), cast(Any, None), cast(Any, None), tmp_path,
            cast(Any, None), "a", JobLimits(log_lines=100),
        )  # fmt: skip
        made.logs.poll_seconds = poll
        return made

    async def scenario() -> list[str | TrainingJobRecord]:
        running, watching = jobs(poll=30), jobs(poll=0.05)
        running.start()
        seen: list[str | TrainingJobRecord] = []
        try:
            follow = watching.watch("job-w")
            first = await anext(follow)  # queued, no line yet
            assert isinstance(first, TrainingJobRecord)
            seen.append(first)
            now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
            status = JobStatus("job-w", JobState.RUNNING, start_time=now)
            await running.changed(status)
            for number in range(3):
                running.logged("job-w", f"step {number}")
                while (item := await anext(follow)) != f"step {number}":  # as it comes
                    seen.append(item)
                seen.append(item)
            for number in range(3, 300):  # more than the job keeps, then the end
                running.logged("job-w", f"step {number}")
            status.state = JobState.FAILED
            status.result = JobResult(Outcome.FAILED, "exited with code 3", 3, "")
            await running.changed(status)
            seen += [item async for item in follow]
        finally:
            await running.stop()
        return seen

    seen = asyncio.run(scenario())
    records = [item for item in seen if isinstance(item, TrainingJobRecord)]
    lines = [item for item in seen if isinstance(item, str)]
    assert [r.state for r in records] == [JobState.QUEUED, JobState.RUNNING, JobState.FAILED]
    assert seen[-1] is records[-1]  # the final state after every line
    assert records[-1].reason == "exited with code 3"
    assert lines[:3] == ["step 0", "step 1", "step 2"]
    assert lines[-1] == "step 299"
    # Lines come in order, none twice; the ones the job no longer keeps may be skipped.
    numbers = [int(line.split()[1]) for line in lines]
    assert numbers == sorted(set(numbers))
    assert [seq for seq, _ in stored("job-w")] == list(range(201, 301))


def test_lines_whose_write_failed_wait_for_the_next_within_the_bound(
    store_db: pw.Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tables.Model.create(name="outage")
    add_job("job-o", model)
    written = store.append_log

    def unreachable(job_id: str, lines: list[tuple[int, str]], keep: int) -> bool:
        raise Unavailable("the database is unreachable")

    async def scenario() -> None:
        logs = JobLogs(keep=5)
        for number in range(4):
            logs.append("job-o", f"before {number}")
        with monkeypatch.context() as outage:
            outage.setattr(store, "append_log", unreachable)
            await logs.flush()  # fails: the lines wait
        for number in range(3):
            logs.append("job-o", f"during {number}")
        assert store.append_log is written
        await logs.close("job-o")

    asyncio.run(scenario())
    # The newest 5 of the 7, in order: the ring bounds what waits.
    assert [line for _, line in stored("job-o")] == [
        "before 2", "before 3", "during 0", "during 1", "during 2",
    ]  # fmt: skip
