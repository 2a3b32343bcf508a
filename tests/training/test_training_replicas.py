"""Training jobs on two MLServe replicas without a shared disk: different homes, one
PostgreSQL, one bucket (a real S3-compatible server, moto's), no Triton. A job runs
on the replica it was created through; the other answers for it from the database:
its state, its version, and its log, followed while it runs and read once it
ended; and a finished job's log is there after the replica that ran it was killed
and started again."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest

from mlserve_api.v1 import training_pb2
from tests.support.mlserve import MLServeProcess, Stubs, hand_on_admin_key, stubs_of
from tests.support.postgres import PostgresCluster
from tests.support.s3 import MotoServer, moto_server  # noqa: F401 (a fixture)
from tests.support.training import TRAIN, create, make_trainable, watch

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SUCCEEDED, CANCELLED, RUNNING = (
    training_pb2.TRAINING_JOB_STATE_SUCCEEDED,
    training_pb2.TRAINING_JOB_STATE_CANCELLED,
    training_pb2.TRAINING_JOB_STATE_RUNNING,
)
# Three lines, then it waits to be cancelled: its watcher elsewhere sees them while
# it runs, however slow the machine.
WAITS = b"import time\nfor n in range(3):\n    print('go', n, flush=True)\ntime.sleep(600)\n"


@dataclass
class Replicas:
    a: MLServeProcess
    b: MLServeProcess


@pytest.fixture(scope="module")
def replicas(
    postgres_cluster: PostgresCluster,
    moto_server: MotoServer,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Replicas]:
    database = postgres_cluster.create_database("trainingreplicas")
    url = postgres_cluster.url(database, max_connections=8)
    storage = f"s3://{moto_server.bucket()}/training"
    root = tmp_path_factory.mktemp("training-replicas")
    started: list[MLServeProcess] = []
    try:
        for name in ("a", "b"):
            process = MLServeProcess(
                root / f"home-{name}", "--no-embedded-triton", "--instance-name", name,
                "--database", url, "--storage", storage, env=moto_server.env(),
            )  # fmt: skip
            if started:  # the admin key is the first replica's
                hand_on_admin_key(started[0], process)
            started.append(process.start(wait_for_triton=False))
        yield Replicas(*started)
    finally:
        for process in started:
            process.stop()
        postgres_cluster.drop_database(database)


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:6]}"


def get(stubs: Stubs, job_id: str) -> training_pb2.TrainingJob:
    return stubs.training.GetTrainingJob(
        training_pb2.GetTrainingJobRequest(id=job_id), metadata=stubs.auth, timeout=60
    )


def test_a_job_run_through_one_replica_is_followed_and_read_through_the_other(
    replicas: Replicas,
) -> None:
    model = unique("trained-on-a")  # a rerun of this test starts afresh
    with stubs_of(replicas.a) as a, stubs_of(replicas.b) as b:
        dataset = make_trainable(a, model, {"train.py": TRAIN, "waits.py": WAITS})
        waiting = create(a, model, dataset, "waits.py")
        assert waiting.instance == "a"
        followed = b.training.WatchTrainingJob(
            training_pb2.WatchTrainingJobRequest(id=waiting.id), metadata=b.auth, timeout=120
        )
        try:
            lines: list[str] = []
            states = []
            for event in followed:  # through b, while the job runs on a
                if event.HasField("log_line"):
                    lines.append(event.log_line)
                else:
                    states.append(event.job.state)
                # A watcher that starts late gets the lines stored so far, then the state.
                if len(lines) == 3 and RUNNING in states:
                    break
            assert lines == ["go 0", "go 1", "go 2"]
            assert states[-1] == RUNNING  # seen before it ended: it waits to be cancelled
            assert get(b, waiting.id).state == RUNNING
            a.training.CancelTrainingJob(
                training_pb2.CancelTrainingJobRequest(id=waiting.id), metadata=a.auth, timeout=60
            )
            rest = list(followed)
        finally:
            followed.cancel()
            # Never leave the job waiting: it would hold the runner from the next tests.
            with contextlib.suppress(grpc.RpcError):
                a.training.CancelTrainingJob(
                    training_pb2.CancelTrainingJobRequest(id=waiting.id), metadata=a.auth,
                    timeout=60,
                )  # fmt: skip
        assert [e.job.state for e in rest if e.HasField("job")] == [CANCELLED]
        assert not [e for e in rest if e.HasField("log_line")]

        trained = create(a, model, dataset, "train.py", parameters={"note": "a"})
        done = watch(a, trained.id)[1]
        assert (done.state, done.version) == (SUCCEEDED, 2), done.reason
        assert get(b, trained.id) == done
        # Its log, read through the replica that did not run it.
        assert watch(b, trained.id) == (["fitted 2.0"], done)
        assert watch(b, waiting.id)[0] == ["go 0", "go 1", "go 2"]


def test_a_finished_jobs_log_outlives_a_kill_of_the_replica_that_ran_it(
    replicas: Replicas,
) -> None:
    model = unique("trained-then-killed")  # a rerun of this test starts afresh
    with stubs_of(replicas.a) as a:
        dataset = make_trainable(a, model, {"train.py": TRAIN})
        done = watch(a, create(a, model, dataset, "train.py", parameters={"note": "k"}).id)
    assert done[1].state == SUCCEEDED, done[1].reason
    replicas.a.kill()
    replicas.a.start(wait_for_triton=False)
    for replica in (replicas.a, replicas.b):
        with stubs_of(replica) as stubs:
            assert watch(stubs, done[1].id) == done
