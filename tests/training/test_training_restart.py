"""Training jobs across MLServe's restarts and with the admin's settings, each on its
own Triton-less MLServe: jobs are rows of the database (SQLite and PostgreSQL), so
they are there after a SIGKILL and a start, with their logs, the ones queued or
running then ended FAILED "interrupted by a restart"; a job asking for the network
gets it only where the admin allows it, and reaches a loopback port the test opens."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from mlserve_api.v1 import training_pb2
from tests.support.mlserve import MLServeProcess, Stubs, started_without_triton
from tests.support.procfs import descendants, gone
from tests.support.training import SLOW, TRAIN, create, job_ids, make_trainable, wait_running, watch

pytestmark = pytest.mark.slow  # each test starts (and restarts) its own MLServe

SUCCEEDED, FAILED = (
    training_pb2.TRAINING_JOB_STATE_SUCCEEDED,
    training_pb2.TRAINING_JOB_STATE_FAILED,
)
QUEUED = training_pb2.TRAINING_JOB_STATE_QUEUED


def get(stubs: Stubs, job_id: str) -> training_pb2.TrainingJob:
    return stubs.training.GetTrainingJob(
        training_pb2.GetTrainingJobRequest(id=job_id), metadata=stubs.auth
    )


def test_jobs_survive_a_restart_and_unfinished_ones_end_failed(
    tmp_path: Path, database_url: str
) -> None:
    process = MLServeProcess(
        tmp_path / "home", "--no-embedded-triton", "--instance-name", "trainer-a",
        "--database", database_url,
    )  # fmt: skip
    process.start(wait_for_triton=False)
    try:
        stubs = process.stubs()
        model = "restarted"
        dataset = make_trainable(stubs, model, {"train.py": TRAIN, "slow.py": SLOW})
        done = watch(stubs, create(stubs, model, dataset, "train.py", parameters={"note": "a"}).id)
        assert done[1].state == SUCCEEDED, done[1].reason
        running = create(stubs, model, dataset, "slow.py")
        wait_running(stubs, running.id)
        queued = create(stubs, model, dataset, "slow.py")  # one at a time: it waits
        assert get(stubs, queued.id).state == QUEUED
        first_page = stubs.training.ListTrainingJobs(
            training_pb2.ListTrainingJobsRequest(model=model, page_size=1), metadata=stubs.auth
        )
        assert process.process is not None
        sandboxed = descendants(process.process.pid)
        assert sandboxed  # the running job's bubblewrap and script
        process.kill()  # no word to anyone: the rows still say RUNNING and QUEUED
        assert gone(sandboxed)  # the script dies with MLServe (bubblewrap's --die-with-parent)

        process.start(wait_for_triton=False)
        stubs = process.stubs()
        for job_id in (running.id, queued.id):
            ended = get(stubs, job_id)
            assert ended.state == FAILED
            assert ended.reason.startswith("interrupted by a restart of MLServe"), ended.reason
            assert ended.end_time.seconds
            assert ended.version == 0
            assert not (process.home / "training" / job_id).exists()
        assert get(stubs, done[1].id) == done[1]  # a finished job as it was
        assert watch(stubs, done[1].id) == done  # its log included
        # The killed job keeps the lines written before the kill (a watcher saw "go",
        # read from the database).
        assert watch(stubs, running.id)[0] == ["go"]
        assert job_ids(stubs, model) == [queued.id, running.id, done[1].id]
        # A token from before the restart goes on where it left off.
        rest = stubs.training.ListTrainingJobs(
            training_pb2.ListTrainingJobsRequest(
                model=model, page_size=10, page_token=first_page.next_page_token
            ),
            metadata=stubs.auth,
        )
        assert [job.id for job in rest.jobs] == [running.id, done[1].id]
        # The runner takes jobs again, and nothing the killed jobs did was committed.
        after = watch(stubs, create(stubs, model, dataset, "train.py", parameters={"note": "b"}).id)
        assert (after[1].state, after[1].version) == (SUCCEEDED, 3), after[1].reason
    finally:
        process.stop()


def test_a_graceful_stop_ends_a_running_job_failed_not_cancelled(tmp_path: Path) -> None:
    process = MLServeProcess(tmp_path / "home", "--no-embedded-triton")
    process.start(wait_for_triton=False)
    try:
        stubs = process.stubs()
        dataset = make_trainable(stubs, "stopped", {"slow.py": SLOW})
        running = create(stubs, "stopped", dataset, "slow.py")
        wait_running(stubs, running.id)
        assert process.stop() == 0  # SIGTERM: the runner ends its job and says why
        process.start(wait_for_triton=False)
        ended = get(process.stubs(), running.id)
        assert (ended.state, ended.reason) == (
            FAILED,
            "interrupted: MLServe stopped while it ran; create it again",
        )
        assert ended.version == 0
    finally:
        process.stop()


CONNECT = """
import os, pathlib, socket
with socket.create_connection(("127.0.0.1", {port}), timeout=30) as connection:
    connection.sendall(b"from the job")
pathlib.Path(os.environ["MLSERVE_OUTPUT"], "model.py").write_text("# networked\\n")
"""


def test_where_the_admin_allows_it_a_job_asking_for_network_reaches_a_loopback_port(
    tmp_path: Path,
) -> None:
    with (
        socket.socket() as listener,
        started_without_triton(
            tmp_path / "home", "--training-allow-network", "--training-labels", "cpu,local"
        ) as process,
    ):
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        stubs = process.stubs()
        script = CONNECT.format(port=port).encode()
        dataset = make_trainable(stubs, "networked", {"connect.py": script})
        # Without asking for it, a job has no network even here.
        closed = watch(stubs, create(stubs, "networked", dataset, "connect.py").id)[1]
        assert closed.state == FAILED
        assert "exited with code 1" in closed.reason
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing came through
        listener.setblocking(True)
        job = create(stubs, "networked", dataset, "connect.py", network=True, runner_labels=["cpu"])
        assert job.network
        done = watch(stubs, job.id)[1]
        assert (done.state, done.version) == (SUCCEEDED, 2), done.reason
        listener.settimeout(30)
        accepted, _ = listener.accept()
        with accepted:
            assert accepted.recv(100) == b"from the job"
