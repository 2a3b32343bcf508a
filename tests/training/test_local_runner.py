"""The local runner with real sandboxed jobs: a bounded queue, N at a time, cancel of
a queued and of a running job, log lines handed on as they come, each cut."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.metadata
from pathlib import Path

import pytest

from mlserve.core.errors import FailedPrecondition, NotFound, ResourceExhausted
from mlserve.training.runner import JobState, JobStatus, LocalRunner, RunnerLimits
from mlserve.training.sandboxed import TRUNCATED_MARK, JobLimits, JobSpec
from mlserve.triton.sandbox import Sandbox

LIMITS = JobLimits(wall_seconds=60)


class Lines:
    """What the runner hands on: each job's lines, and a wake-up for each line."""

    def __init__(self) -> None:
        self.of: dict[str, list[str]] = {}
        self.printed = asyncio.Event()

    def __call__(self, job_id: str, line: str) -> None:
        self.of.setdefault(job_id, []).append(line)
        self.printed.set()

    async def wait_for(self, job_id: str, line: str) -> None:
        while True:
            self.printed.clear()  # before the look: a line after it sets it again
            if line in self.of.get(job_id, []):
                return
            await self.printed.wait()


async def ignore(status: JobStatus) -> None:
    pass


def spec(tmp_path: Path, name: str, script: str) -> JobSpec:
    code = tmp_path / name / "code"
    code.mkdir(parents=True)
    (code / "train.py").write_text(script)
    data = tmp_path / name / "data"
    data.mkdir()
    return JobSpec(code, "train.py", data, tmp_path / name / "out", limits=LIMITS)


def test_one_at_a_time_a_bounded_queue_cancel_and_watch(tmp_path: Path) -> None:
    finished: list[tuple[str, JobState]] = []

    async def record(status: JobStatus) -> None:
        if status.state.finished:
            finished.append((status.job_id, status.state))

    async def scenario() -> None:
        lines = Lines()
        runner = LocalRunner(Sandbox.find(), RunnerLimits(concurrent=1, queued=2), record, lines)
        runner.start()
        try:
            slow = await runner.submit(
                "slow",
                spec(tmp_path, "slow", "import time\nprint('hi', flush=True)\ntime.sleep(600)"),
            )
            await lines.wait_for("slow", "hi")  # its first line: it runs, the queue is empty
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
            await done.ended.wait()
            assert done.state is JobState.SUCCEEDED
            assert lines.of["third"] == ["third"]
            assert lines.of["slow"] == ["hi"]
            assert "waiting" not in lines.of
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
    async def scenario() -> None:
        runner = LocalRunner(
            Sandbox.find(), RunnerLimits(), ignore, Lines(), labels=frozenset({"cpu", "local"})
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


def test_a_flood_of_output_is_handed_on_cut_and_kept_as_a_bounded_tail(tmp_path: Path) -> None:
    async def scenario() -> tuple[JobStatus, list[str]]:
        lines = Lines()
        runner = LocalRunner(Sandbox.find(), RunnerLimits(), ignore, lines)
        runner.start()
        try:
            status = await runner.submit("flood", spec(tmp_path, "flood", HOSTILE))
            await status.ended.wait()
            return status, lines.of["flood"]
        finally:
            await runner.stop()

    status, streamed = asyncio.run(scenario())
    assert status.state is JobState.SUCCEEDED, status.result
    cap = LIMITS.log_line_bytes
    # Every line is handed on (the log's writer keeps the tail), the long one cut and
    # marked so; the result keeps the last log_lines for its reason.
    assert len(streamed) == HOSTILE_LINES + 2
    assert streamed[0] == "x" * cap + TRUNCATED_MARK.format(cap=cap)
    assert max(len(line) for line in streamed) == len(streamed[0])
    assert streamed[-2:] == [str(HOSTILE_LINES - 1), "last line, without its newline"]
    assert status.result is not None
    kept = status.result.log.splitlines()
    assert len(kept) == LIMITS.log_lines
    assert kept[-1] == "last line, without its newline"
