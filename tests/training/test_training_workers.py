"""Training jobs under ``mlserve serve --workers 2`` (SQLite, no Triton): a job runs
in the worker whose connection created it, and the other worker answers for it,
its log included, from the shared database.

Each new connection lands on one of the workers (SO_REUSEPORT) and stays there,
so the test opens fresh channels, creating a job through each, until one
channel's job names worker 0 and another's worker 1 (``TrainingJob.instance``);
then each worker's channel watches the other worker's job."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from mlserve_api.v1 import training_pb2
from tests.support.checks import wait_until
from tests.support.mlserve import MLServeProcess, Stubs
from tests.support.training import create, make_trainable, watch

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HELLO = b"print('hello from a worker', flush=True)\n"
# Fresh connections tried before giving up: both workers are hit unless the kernel
# sent 30 connections in a row to one (about 2 in 10^9 with two workers); a queue of
# more than that never refuses one of the jobs.
ATTEMPTS = 30


@pytest.fixture
def two_workers(tmp_path: Path) -> Iterator[MLServeProcess]:
    process = MLServeProcess(
        tmp_path / "home", "--workers", "2", "--no-embedded-triton", "--instance-name", "w",
        "--training-queue", str(ATTEMPTS + 1),
    )  # fmt: skip
    try:
        process.start(wait_for_triton=False)
        wait_until(lambda: "2 workers serve" in process.log.read_text(), timeout=120)
        yield process
    finally:
        process.stop()


def test_each_worker_reads_the_log_of_a_job_the_other_ran(two_workers: MLServeProcess) -> None:
    with contextlib.ExitStack() as opened:

        def fresh() -> Stubs:
            # A subchannel pool of its own: a new TCP connection, so the kernel picks a
            # worker again (channels otherwise share one connection).
            channel = grpc.insecure_channel(
                two_workers.address, options=[("grpc.use_local_subchannel_pool", 1)]
            )
            opened.callback(channel.close)
            return Stubs(channel, two_workers.key)

        first = fresh()
        dataset = make_trainable(first, "by-workers", {"hello.py": HELLO})
        by_worker: dict[str, tuple[Stubs, str]] = {}
        stubs = first
        for _ in range(ATTEMPTS):
            job = create(stubs, "by-workers", dataset, "hello.py")
            by_worker.setdefault(job.instance, (stubs, job.id))
            if len(by_worker) == 2:
                break
            stubs = fresh()
        assert sorted(by_worker) == ["w worker 0", "w worker 1"]
        (zero, zeros_job), (one, ones_job) = by_worker["w worker 0"], by_worker["w worker 1"]
        for watcher, job_id in ((one, zeros_job), (zero, ones_job)):
            lines, done = watch(watcher, job_id)
            assert done.state == training_pb2.TRAINING_JOB_STATE_FAILED  # it wrote no model
            assert "wrote no model files" in done.reason
            assert lines == ["hello from a worker"]
