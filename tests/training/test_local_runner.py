"""The local runner with real sandboxed jobs: a bounded queue, N at a time, cancel of
a queued and of a running job, watching log lines and states."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.metadata
from pathlib import Path

import pytest

from mlserve.core.errors import FailedPrecondition, NotFound, ResourceExhausted
from mlserve.training.runner import JobState, JobStatus, LocalRunner, RunnerLimits
from mlserve.training.sandboxed import (
    LINE_CAP_BYTES,
    LOG_TAIL_LINES,
    TRUNCATED_MARK,
    JobLimits,
    JobSpec,
)
from mlserve.triton.sandbox import Sandbox


def spec(tmp_path: Path, name: str, script: str) -> JobSpec:
    code = tmp_path / name / "code"
    code.mkdir(parents=True)
    (code / "train.py").write_text(script)
    data = tmp_path / name / "data"
    data.mkdir()
    return JobSpec(
        code, "train.py", data, tmp_path / name / "out", limits=JobLimits(wall_seconds=60)
    )


def test_one_at_a_time_a_bounded_queue_cancel_and_watch(tmp_path: Path) -> None:
    finished: list[tuple[str, JobState]] = []

    async def record(status: JobStatus) -> None:
        if status.state.finished:
            finished.append((status.job_id, status.state))

    async def scenario() -> None:
        runner = LocalRunner(Sandbox.find(), RunnerLimits(concurrent=1, queued=2), record)
        runner.start()
        try:
            slow = await runner.submit(
                "slow",
                spec(tmp_path, "slow", "import time\nprint('hi', flush=True)\ntime.sleep(600)"),
            )
            watched = runner.watch("slow")
            seen: list[JobStatus | str] = []
            while "hi" not in seen:  # its first line: it runs, the queue is empty again
                seen.append(await watched.get())
            assert slow.state is JobState.RUNNING
            waiting = await runner.submit("waiting", spec(tmp_path, "waiting", "pass"))
            third = spec(tmp_path, "third", "print('third', flush=True)")
            done = await runner.submit("third", third)
            with pytest.raises(ResourceExhausted):
                await runner.submit("fourth", spec(tmp_path, "fourth", "pass"))
            assert waiting.state is JobState.QUEUED  # one at a time
            await runner.cancel("waiting")
            assert waiting.state is JobState.CANCELLED
            await runner.cancel("slow")
            assert slow.state is JobState.CANCELLED
            while True:
                item = await watched.get()
                seen.append(item)
                if isinstance(item, JobStatus) and item.state.finished:
                    break
            assert "hi" in seen
            await done.ended.wait()
            assert done.state is JobState.SUCCEEDED
            assert list(done.lines) == ["third"]
            # Its end recorded, the runner forgets it: the database answers for it.
            for gone in ("slow", "waiting", "third"):
                with pytest.raises(NotFound):
                    runner.status(gone)
            with pytest.raises(NotFound):
                runner.status("never")
        finally:
            await runner.stop()

    asyncio.run(scenario())
    assert sorted(finished) == [
        ("slow", JobState.CANCELLED),
        ("third", JobState.SUCCEEDED),
        ("waiting", JobState.CANCELLED),
    ]


def test_capabilities_name_the_labels_network_and_the_sandboxs_packages(tmp_path: Path) -> None:
    async def ignore(status: JobStatus) -> None:
        pass

    async def scenario() -> None:
        runner = LocalRunner(
            Sandbox.find(), RunnerLimits(), ignore, labels=frozenset({"cpu", "local"})
        )
        offered = await runner.capabilities()
        assert offered.labels == {"cpu", "local"}
        assert offered.network is False
        # What the sandbox's interpreter imports, by canonical name.
        assert offered.packages["numpy"] == importlib.metadata.version("numpy")
        assert offered.packages["scikit-learn"] == importlib.metadata.version("scikit-learn")
        networked = spec(tmp_path, "net", "pass")
        with pytest.raises(FailedPrecondition, match="--training-allow-network"):
            await runner.submit("net", dataclasses.replace(networked, network=True))
        with pytest.raises(NotFound):
            runner.status("net")  # refused: never queued

    asyncio.run(scenario())


HOSTILE_LINES = 100_000
# One line of 1 MiB (no newline for all of it: past any reader's buffer), then many.
HOSTILE = f"""
import sys
sys.stdout.write("x" * (1024 * 1024) + "\\n")
for n in range({HOSTILE_LINES}):
    print(n)
sys.stdout.write("last line, without its newline")
"""


def test_a_flood_of_output_is_held_as_a_bounded_tail(tmp_path: Path) -> None:
    async def ignore(status: JobStatus) -> None:
        pass

    async def scenario() -> tuple[JobStatus, list[str]]:
        runner = LocalRunner(Sandbox.find(), RunnerLimits(), ignore)
        runner.start()
        try:
            status = await runner.submit("flood", spec(tmp_path, "flood", HOSTILE))
            watched = runner.watch("flood")
            streamed: list[str] = []
            while True:
                item = await watched.get()
                if isinstance(item, str):
                    streamed.append(item)
                elif item.state.finished:
                    break
            return status, streamed
        finally:
            await runner.stop()

    status, streamed = asyncio.run(scenario())
    assert status.state is JobState.SUCCEEDED, status.result
    assert status.lines.maxlen == LOG_TAIL_LINES
    assert len(status.lines) == LOG_TAIL_LINES
    assert status.lines[-1] == "last line, without its newline"
    assert status.lines[-2] == str(HOSTILE_LINES - 1)
    assert status.result is not None
    assert len(status.result.log.splitlines()) == LOG_TAIL_LINES
    # The long line reached the watcher cut, and marked so.
    assert streamed[0] == "x" * LINE_CAP_BYTES + TRUNCATED_MARK.format(cap=LINE_CAP_BYTES)
    assert max(len(line) for line in streamed) == len(streamed[0])
