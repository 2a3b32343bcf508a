"""Two MLServe replicas on one PostgreSQL database, and that database restarting.

Both processes run ``mlserve serve --database postgresql://…`` with the same
``--home``, so they share the repository, the staging area (and its upload
locks) and the admin key; everything else they know comes from the database.
Replica a runs the embedded Triton (server ``local``), b runs with
``--no-embedded-triton`` and reaches that Triton through the server row.
Clients nobody here wrote talk to them: the Python client, tritonclient and
grpcurl.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import psycopg2
import pytest
import tritonclient.grpc as triton
from google.protobuf import field_mask_pb2

from mlserve.storage import db
from mlserve_api.v1 import deployment_pb2, model_pb2
from mlserve_client import Client
from tests.support.commands import grpcurl
from tests.support.mlserve import MLServeProcess, Stubs
from tests.support.models import infer_add, local_triton, upload_add
from tests.support.postgres import PostgresCluster
from tests.support.tritons import add_inputs, deploy, remove_model
from tests.support.uploading import chunks, header, stream

# Over ~20 s each (or a slow module start): `pytest -m "not slow"` leaves them out.
pytestmark = [pytest.mark.integration, pytest.mark.slow]


@dataclass
class Replicas:
    a: MLServeProcess
    b: MLServeProcess
    database: str
    url: str  # the database's, for psycopg2 (no pool settings)

    def client(self, which: MLServeProcess) -> Client:
        return Client(which.address, which.key)


@pytest.fixture(scope="module")
def replicas(
    postgres_cluster: PostgresCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Replicas]:
    database = postgres_cluster.create_database("replicas")
    url = postgres_cluster.url(database, max_connections=8)
    home = tmp_path_factory.mktemp("shared-home")
    started: list[MLServeProcess] = []
    try:
        for name, extra in (("a", ()), ("b", ("--no-embedded-triton",))):
            process = MLServeProcess(home, "--database", url, *extra)
            process.log = home / f"mlserve-{name}.log"
            started.append(process.start(wait_for_triton=name == "a"))
        yield Replicas(started[0], started[1], database, postgres_cluster.url(database))
    finally:
        for process in started:
            process.stop()
        postgres_cluster.drop_database(database)


def model_dir(root: Path, content: bytes) -> Path:
    root.mkdir(parents=True)
    (root / "model.py").write_bytes(b"# " + content + b"\n")
    return root


def versions(client: Client, model: str) -> list[int]:
    return [version.version for version in client.list_versions(model)]


def test_uploads_through_either_replica_appear_in_both(replicas: Replicas, tmp_path: Path) -> None:
    with replicas.client(replicas.a) as a, replicas.client(replicas.b) as b:
        first = a.upload(model_dir(tmp_path / "one", b"uploaded through a"), "shared")
        seen = b.models.GetModelVersion(model_pb2.GetModelVersionRequest(model="shared", version=1))
        assert (first.version, seen.sha256) == (1, first.sha256)
        b.download("shared", 1, tmp_path / "via-b")  # files from the shared repository
        assert (tmp_path / "via-b" / "model.py").read_bytes() == b"# uploaded through a\n"

        second = b.upload(model_dir(tmp_path / "two", b"uploaded through b"), "shared")
        assert second.version == 2
        assert versions(a, "shared") == versions(b, "shared") == [1, 2]
        assert "shared" in {model.name for model in a.list_models()}


def test_deployed_through_one_replica_served_through_the_other(replicas: Replicas) -> None:
    b_stubs = replicas.b.stubs()
    a_stubs = replicas.a.stubs()
    try:
        assert upload_add(b_stubs, "add-shared").version == 1
        deployment = deploy(a_stubs, "add-shared")
        assert deployment.state == deployment_pb2.DEPLOYMENT_STATE_READY, deployment
        # b's gateway routes to the Triton a registered, found through the database.
        gateway = triton.InferenceServerClient(replicas.b.address)
        result = gateway.infer(
            "add-shared", add_inputs(), headers={"authorization": f"Bearer {replicas.b.key}"}
        )
        np.testing.assert_allclose(result.as_numpy("OUTPUT0"), [11, 22, 33, 44])
    finally:
        remove_model(a_stubs, "add-shared")
        a_stubs.channel.close()
        b_stubs.channel.close()


def test_concurrent_uploads_through_both_get_distinct_versions(
    replicas: Replicas, tmp_path: Path
) -> None:
    count = 8
    barrier = threading.Barrier(count)

    def upload(index: int) -> int:
        replica = replicas.a if index % 2 else replicas.b
        folder = model_dir(tmp_path / str(index), f"concurrent upload {index}".encode())
        with replicas.client(replica) as client:
            barrier.wait()
            return client.upload(folder, "raced").version

    with ThreadPoolExecutor(count) as pool:
        numbers = sorted(pool.map(upload, range(count)))
    assert numbers == list(range(1, count + 1))
    with replicas.client(replicas.a) as a:
        listed = list(a.list_versions("raced"))
    assert [version.version for version in listed] == numbers
    assert len({version.sha256 for version in listed}) == count


def test_one_upload_cannot_be_written_through_both_replicas(replicas: Replicas) -> None:
    """The staging lock (flock on the shared disk) holds across the two processes."""
    files = {"model.py": b"# held\n", "weights.bin": b"x" * (2 * 1024 * 1024)}
    upload_id = "held-by-a"
    first_chunk_in, finish = threading.Event(), threading.Event()
    staged = replicas.a.home / "staging" / upload_id / "weights.bin"

    def held_open() -> Iterator[model_pb2.UploadModelVersionRequest]:
        yield header("locked", files, upload_id=upload_id)
        parts = chunks(files, size=1024 * 1024)
        yield next(parts)  # model.py
        yield next(parts)  # the first MiB of weights.bin
        first_chunk_in.set()
        finish.wait(60)
        yield from parts

    a_stubs, b_stubs = replicas.a.stubs(), replicas.b.stubs()
    with ThreadPoolExecutor(1) as pool:
        through_a = pool.submit(
            a_stubs.models.UploadModelVersion, held_open(), metadata=a_stubs.auth, timeout=120
        )
        try:
            assert first_chunk_in.wait(60)
            # The chunk on disk means replica a holds the upload's lock.
            while not staged.exists() or staged.stat().st_size < 1024 * 1024:
                assert not through_a.done(), through_a.result()
                time.sleep(0.05)
            with pytest.raises(grpc.RpcError) as refused:
                b_stubs.models.UploadModelVersion(
                    iter([header("locked", files, upload_id=upload_id), *chunks(files)]),
                    metadata=b_stubs.auth,
                    timeout=60,
                )
            assert refused.value.code() == grpc.StatusCode.ABORTED
        finally:
            finish.set()
        assert through_a.result().version == 1
    a_stubs.channel.close()
    b_stubs.channel.close()


def upload_or_code(
    stubs: Stubs, files: dict[str, bytes], upload_id: str, barrier: threading.Barrier
) -> int | grpc.StatusCode:
    """The version uploaded, or the status code the upload failed with."""
    barrier.wait()
    try:
        request = stream("twice", files, upload_id=upload_id)
        return stubs.models.UploadModelVersion(request, metadata=stubs.auth, timeout=60).version
    except grpc.RpcError as error:
        return error.code()


def test_one_new_upload_sent_through_both_at_once(replicas: Replicas) -> None:
    """Both replicas record the same new upload id at the same moment: one writes it,
    the other is ABORTED or gets the same version. Never INTERNAL."""
    a_stubs, b_stubs = replicas.a.stubs(), replicas.b.stubs()
    try:
        for round_ in range(4):
            files = {"model.py": f"# round {round_}\n".encode()}
            barrier = threading.Barrier(2)
            with ThreadPoolExecutor(2) as pool:
                sent = [
                    pool.submit(upload_or_code, stubs, files, f"twice-{round_}", barrier)
                    for stubs in (a_stubs, b_stubs)
                ]
                outcomes = [future.result() for future in sent]
            versions = {outcome for outcome in outcomes if isinstance(outcome, int)}
            refused = [outcome for outcome in outcomes if not isinstance(outcome, int)]
            assert len(versions) == 1, outcomes
            assert refused in ([], [grpc.StatusCode.ABORTED]), outcomes
    finally:
        a_stubs.channel.close()
        b_stubs.channel.close()


def test_postgresql_restart_mid_run(
    replicas: Replicas, postgres_cluster: PostgresCluster, tmp_path: Path
) -> None:
    with replicas.client(replicas.a) as a, replicas.client(replicas.b) as b:
        a.models.CreateModel(model_pb2.CreateModelRequest(model=model_pb2.Model(name="before")))
        postgres_cluster.stop()
        try:
            with pytest.raises(grpc.RpcError) as during:
                a.models.GetModel(model_pb2.GetModelRequest(name="before"), timeout=60)
            assert during.value.code() == grpc.StatusCode.UNAVAILABLE
            assert f"PostgreSQL database {replicas.database!r}" in str(during.value.details())
            with pytest.raises(grpc.RpcError) as write:
                b.models.CreateModel(
                    model_pb2.CreateModelRequest(model=model_pb2.Model(name="during")), timeout=60
                )
            assert write.value.code() == grpc.StatusCode.UNAVAILABLE
            listed = grpcurl(
                replicas.b, "-d", "{}", replicas.b.address, "mlserve.v1.ModelService/ListModels"
            )
            assert listed.returncode != 0
            assert "Code: Unavailable" in listed.stderr, listed.stderr
        finally:
            postgres_cluster.start()

        # Back without restarting either MLServe.
        assert a.models.GetModel(model_pb2.GetModelRequest(name="before")).name == "before"
        with pytest.raises(grpc.RpcError) as missing:
            b.models.GetModel(model_pb2.GetModelRequest(name="during"))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        after = b.upload(model_dir(tmp_path / "after", b"after the restart"), "after-restart")
        assert versions(a, "after-restart") == [after.version] == [1]
        listed = grpcurl(
            replicas.a, "-d", "{}", replicas.a.address, "mlserve.v1.ModelService/ListModels"
        )
        assert listed.returncode == 0, listed.stderr
        assert "after-restart" in listed.stdout


def test_two_replicas_changing_one_deployment_at_once_take_turns(replicas: Replicas) -> None:
    """Each replica holds the model's database lock while it writes and loads, so the
    version the database names is the one Triton serves, whoever wrote last."""
    a_stubs, b_stubs = replicas.a.stubs(), replicas.b.stubs()
    try:
        for offset in (0.0, 100.0, 200.0):
            upload_add(a_stubs, "contended", offset=offset)
        assert (
            deploy(a_stubs, "contended", version=1).state == deployment_pb2.DEPLOYMENT_STATE_READY
        )
        local = local_triton(a_stubs)

        def update(stubs: Stubs, version: int) -> None:
            stubs.deployments.UpdateDeployment(
                deployment_pb2.UpdateDeploymentRequest(
                    wait=True,
                    deployment=deployment_pb2.Deployment(name="contended", version=version),
                    update_mask=field_mask_pb2.FieldMask(paths=["version"]),
                ),
                metadata=stubs.auth,
                timeout=120,
            )

        for turn in range(4):
            first, second = (2, 3) if turn % 2 else (3, 2)
            with ThreadPoolExecutor(2) as pool:
                for done in [
                    pool.submit(update, a_stubs, first),
                    pool.submit(update, b_stubs, second),
                ]:
                    done.result()
            record = a_stubs.deployments.GetDeployment(
                deployment_pb2.GetDeploymentRequest(name="contended"), metadata=a_stubs.auth
            )
            assert record.state == deployment_pb2.DEPLOYMENT_STATE_READY, record
            serving = [
                int(entry["version"])
                for entry in local.get_model_repository_index(as_json=True)["models"]
                if entry["name"] == "contended" and entry.get("state") == "READY"
            ]
            assert serving == [record.version], f"turn {turn}: the database says {record.version}"
            offset = {1: 0, 2: 100, 3: 200}[record.version]
            np.testing.assert_allclose(
                infer_add(local, "contended"), np.array([11, 22, 33, 44]) + offset
            )
    finally:
        remove_model(a_stubs, "contended")
        a_stubs.channel.close()
        b_stubs.channel.close()


def test_a_change_waits_while_another_replica_holds_the_model(replicas: Replicas) -> None:
    """The test holds the model's lock as another replica changing it would: an
    UpdateDeployment through b writes nothing until the lock is let go, then goes on."""
    a_stubs, b_stubs = replicas.a.stubs(), replicas.b.stubs()
    holder = psycopg2.connect(replicas.url)
    holder.autocommit = True
    try:
        upload_add(a_stubs, "held")
        upload_add(a_stubs, "held", offset=100.0)
        assert deploy(a_stubs, "held", version=1).state == deployment_pb2.DEPLOYMENT_STATE_READY
        with holder.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s, %s)", db.named_lock_key("held"))
        with ThreadPoolExecutor(1) as pool:
            update = pool.submit(
                b_stubs.deployments.UpdateDeployment,
                deployment_pb2.UpdateDeploymentRequest(
                    wait=True,
                    deployment=deployment_pb2.Deployment(name="held", version=2),
                    update_mask=field_mask_pb2.FieldMask(paths=["version"]),
                ),
                metadata=b_stubs.auth,
                timeout=120,
            )
            for _ in range(10):  # while the lock is held, nothing changes
                time.sleep(0.2)
                record = a_stubs.deployments.GetDeployment(
                    deployment_pb2.GetDeploymentRequest(name="held"), metadata=a_stubs.auth
                )
                assert record.version == 1, record
                assert not update.done()
            with holder.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s, %s)", db.named_lock_key("held"))
            updated = update.result()
        assert (updated.version, updated.state) == (2, deployment_pb2.DEPLOYMENT_STATE_READY)
    finally:
        holder.close()
        remove_model(a_stubs, "held")
        a_stubs.channel.close()
        b_stubs.channel.close()
