"""MLServe on a bucket: ``mlserve serve --storage s3://bucket/prefix`` against a real
S3-compatible server (moto's), one PostgreSQL, and two replicas with *different*
homes (no shared disk). Replica a runs the embedded Triton, which gets pushes; a
second Triton reads the bucket itself (``--model-repository=s3://host:port/…``)
and is registered with shares_repository, so it loads by name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from mlserve_api.v1 import deployment_pb2, inference_log_pb2, model_pb2
from mlserve_client import Client
from tests.support.mlserve import (
    MLServeProcess,
    free_port,
    hand_on_admin_key,
    stubs_of,
)
from tests.support.models import upload_add
from tests.support.postgres import PostgresCluster
from tests.support.rollouts import ANSWERS, roll_to
from tests.support.s3 import MotoServer, moto_server  # noqa: F401 (a fixture)
from tests.support.tritons import (
    TritonProcess,
    add_inputs,
    deploy,
    register,
    remove_model,
    wait_for,
)
from tests.support.uploading import chunks, header

# Over ~20 s each (or a slow module start): `pytest -m "not slow"` leaves them out.
pytestmark = [pytest.mark.integration, pytest.mark.slow]


@dataclass
class OnBucket:
    a: MLServeProcess
    b: MLServeProcess
    moto: MotoServer
    bucket: str
    reader: TritonProcess
    database: str  # the URL
    storage: str


@pytest.fixture(scope="module")
def on_bucket(
    postgres_cluster: PostgresCluster,
    moto_server: MotoServer,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OnBucket]:
    database = postgres_cluster.create_database("onbucket")
    url = postgres_cluster.url(database, max_connections=8)
    bucket = moto_server.bucket()
    # Parts of 5 MiB (S3's smallest): a small file already spans several.
    storage = f"s3://{bucket}/fleet?part_mib=5"
    root = tmp_path_factory.mktemp("on-bucket")
    reader = TritonProcess(
        "reader",
        root,
        {},
        repository_url=f"s3://{moto_server.endpoint}/{bucket}/fleet/repository",
        environment=moto_server.env(),
    )
    started: list[MLServeProcess] = []
    try:
        for name, extra in (("a", ()), ("b", ("--no-embedded-triton",))):
            process = MLServeProcess(
                root / f"home-{name}",
                "--database", url, "--storage", storage, *extra,
                env=moto_server.env(),
            )  # fmt: skip
            if started:  # the admin key is the first replica's
                hand_on_admin_key(started[0], process)
            started.append(process.start(wait_for_triton=name == "a"))
        reader.start()
        with stubs_of(started[0]) as stubs:
            register(stubs, "reader", reader.address, shares_repository=True)
        yield OnBucket(started[0], started[1], moto_server, bucket, reader, url, storage)
    finally:
        reader.stop()
        for process in started:
            process.stop()
        postgres_cluster.drop_database(database)


def infer(replica: MLServeProcess, model: str) -> np.ndarray:
    gateway = triton.InferenceServerClient(replica.address)
    result = gateway.infer(model, add_inputs(), headers={"authorization": f"Bearer {replica.key}"})
    return np.asarray(result.as_numpy("OUTPUT0"))


def routed(replica: MLServeProcess, model: str, answer: Sequence[float] = (11, 22, 33, 44)) -> bool:
    """True once ``replica`` answers ``model`` with the right sums (``answer``)."""
    try:
        return bool(np.allclose(infer(replica, model), answer))
    except InferenceServerException:
        return False


def test_upload_through_one_replica_download_through_the_other(
    on_bucket: OnBucket, tmp_path: Path
) -> None:
    folder = tmp_path / "m"
    (folder / "1").mkdir(parents=True)
    (folder / "1" / "model.py").write_bytes(b"# on the bucket\n")
    with Client(on_bucket.a.address, on_bucket.a.key) as a:
        first = a.upload(folder, "bucketed", upload_id="bucketed-1")
    with Client(on_bucket.b.address, on_bucket.b.key) as b:
        b.download("bucketed", first.version, tmp_path / "via-b")
        (folder / "1" / "model.py").write_bytes(b"# second, through b\n")
        assert b.upload(folder, "bucketed", upload_id="bucketed-2").version == 2
    assert (tmp_path / "via-b" / "model.py").read_bytes() == b"# on the bucket\n"
    # Each content once, where its upload's bytes went; nothing in Triton's layout
    # until a Triton reading the bucket loads the version.
    for upload_id in ("bucketed-1", "bucketed-2"):
        stored = on_bucket.moto.keys(on_bucket.bucket, f"fleet/blobs/uploads/{upload_id}/")
        assert len(stored) == 1, stored
    assert on_bucket.moto.keys(on_bucket.bucket, "fleet/repository/bucketed/") == []
    # Neither home holds a repository or blobs: they are in the bucket.
    for replica in (on_bucket.a, on_bucket.b):
        assert not (replica.home / "blobs").exists()
        assert not list((replica.home / "staging").iterdir())


@contextlib.contextmanager
def deployed(replica: MLServeProcess, model: str, server: str) -> Iterator[None]:
    """ "add" uploaded as ``model`` and deployed on ``server`` through ``replica``."""
    with stubs_of(replica) as stubs:
        try:
            assert upload_add(stubs, model).version == 1
            deployment = deploy(stubs, model, servers=[server])
            assert deployment.state == deployment_pb2.DEPLOYMENT_STATE_READY, deployment
            yield
        finally:
            remove_model(stubs, model)


def test_deployed_through_b_pushed_to_the_embedded_triton(on_bucket: OnBucket) -> None:
    with deployed(on_bucket.b, "add-pushed", "local"):
        wait_for(lambda: routed(on_bucket.a, "add-pushed"), 30, "a to route add-pushed")
        np.testing.assert_allclose(infer(on_bucket.b, "add-pushed"), [11, 22, 33, 44])
        # Pushed from the blobs: the version is not stored a second time in the layout.
        assert on_bucket.moto.keys(on_bucket.bucket, "fleet/repository/add-pushed/") == []


def test_a_triton_reading_the_bucket_loads_by_name(on_bucket: OnBucket) -> None:
    with deployed(on_bucket.a, "add-read", "reader"):
        # Straight from the Triton: it read the version out of the bucket, where
        # the deployment put it in Triton's layout (files, then the config).
        assert on_bucket.reader.client().is_model_ready("add-read", "1")
        laid_out = on_bucket.moto.keys(on_bucket.bucket, "fleet/repository/add-read/")
        assert "fleet/repository/add-read/1/model.py" in laid_out
        assert "fleet/repository/add-read/config.pbtxt" in laid_out
        np.testing.assert_allclose(infer(on_bucket.a, "add-read"), [11, 22, 33, 44])
        # b learns of the deployment from the database at its next health round.
        wait_for(lambda: routed(on_bucket.b, "add-read"), 30, "b to route add-read")


def test_a_rollout_on_a_triton_reading_the_bucket_lays_out_the_new_version(
    on_bucket: OnBucket,
) -> None:
    """v1 deployed on the bucket reader through a, v2 uploaded and rolled to through
    b: v2 is put in Triton's layout before the reader loads it, and serves."""
    with deployed(on_bucket.a, "add-rolled", "reader"), stubs_of(on_bucket.b) as stubs:
        prefix = "fleet/repository/add-rolled/"
        assert upload_add(stubs, "add-rolled", offset=100).version == 2
        assert not [k for k in on_bucket.moto.keys(on_bucket.bucket, prefix) if "/2/" in k]
        rolled = roll_to(stubs, "add-rolled", 2)
        assert rolled.state == deployment_pb2.DEPLOYMENT_STATE_READY, rolled
        assert f"{prefix}2/model.py" in on_bucket.moto.keys(on_bucket.bucket, prefix)
        assert on_bucket.reader.client().is_model_ready("add-rolled", "2")
        wait_for(
            lambda: routed(on_bucket.a, "add-rolled", ANSWERS[2]),
            60,
            "a to route add-rolled to version 2",
        )


def test_the_inference_log_goes_to_the_bucket_from_each_replica(on_bucket: OnBucket) -> None:
    """Every call is logged (the default policy, metadata); each replica writes whole
    Parquet objects of its own under the bucket's logs/ prefix, nothing on its disk,
    and either replica lists the calls both took."""
    with deployed(on_bucket.a, "add-logged", "local"):
        wait_for(lambda: routed(on_bucket.b, "add-logged"), 30, "b to route add-logged")
        sent = {"a-0", "a-1", "a-2", "b-0", "b-1"}  # request ids, apart from routed()'s calls
        for request_id in sorted(sent):
            replica = on_bucket.a if request_id.startswith("a") else on_bucket.b
            gateway = triton.InferenceServerClient(replica.address)
            gateway.infer("add-logged", add_inputs(), request_id=request_id,
                          headers={"authorization": f"Bearer {replica.key}"})  # fmt: skip
        prefix = "fleet/logs/model=add-logged/"

        def objects() -> list[str]:
            return [
                k for k in on_bucket.moto.keys(on_bucket.bucket, prefix) if k.endswith(".parquet")
            ]

        def replicas() -> set[str]:
            return {key.rsplit("-", 2)[-2] for key in objects()}  # part-<time>-<replica>-<id>

        wait_for(lambda: len(replicas()) == 2, 30, "both replicas' log files in the bucket")
        for replica in (on_bucket.a, on_bucket.b):
            assert not list((replica.home / "logs").rglob("*.parquet"))

        def listed(replica: MLServeProcess) -> set[str]:
            with stubs_of(replica) as stubs:
                request = inference_log_pb2.ListInferenceLogsRequest(model="add-logged")
                records = stubs.logs.ListInferenceLogs(request, metadata=stubs.auth).records
                return {record.request_id for record in records} & sent

        wait_for(lambda: listed(on_bucket.a) == sent, 30, "a to list the five calls")
        assert listed(on_bucket.b) == sent


def test_an_unreachable_bucket_at_start_is_a_clear_error(tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    started = subprocess.run(
        [
            sys.executable, "-m", "mlserve", "--home", str(tmp_path), "serve",
            "--listen", f"127.0.0.1:{free_port()}", "--no-embedded-triton",
            "--storage", f"s3://nowhere/models?endpoint={endpoint}",
        ],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert started.returncode == 1, started
    assert endpoint in started.stderr
    assert "s3://nowhere/models" in started.stderr
    assert "Traceback" not in started.stderr


def test_an_upload_killed_on_one_replica_resumes_on_another_from_the_bucket(
    on_bucket: OnBucket, tmp_path: Path
) -> None:
    """Replica c (its own home) receives 12 of 13 MiB and is SIGKILLed; a resumes
    the upload from the parts c committed to the bucket (recorded in the database),
    not from 0, and the version has the right digest. No half version shows."""
    weights = os.urandom(13 * 1024 * 1024)
    files = {"model.py": b"# resumed\n", "weights.bin": weights}
    upload_id = "killed-on-c"
    c = MLServeProcess(
        tmp_path / "home-c",
        "--database", on_bucket.database, "--storage", on_bucket.storage,
        "--no-embedded-triton", env=on_bucket.moto.env(),
    )  # fmt: skip
    c.home.mkdir(parents=True)
    shutil.copy(on_bucket.a.home / "admin.key", c.home / "admin.key")
    c.start(wait_for_triton=False)
    held = threading.Event()

    def twelve_mib_then_hang() -> Iterator[model_pb2.UploadModelVersionRequest]:
        yield header("resumed", files, upload_id=upload_id)
        for request in chunks(files):
            if request.chunk.path == "weights.bin" and request.chunk.offset >= 12 * 1024**2:
                break
            yield request
        held.wait(120)

    def received(replica: MLServeProcess) -> int:
        """weights.bin's bytes as GetUpload reports them (0 before c recorded the upload)."""
        with stubs_of(replica) as stubs:
            try:
                status = stubs.models.GetUpload(
                    model_pb2.GetUploadRequest(upload_id=upload_id), metadata=stubs.auth, timeout=10
                )
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                return 0
        return sum(f.received_bytes for f in status.files if f.path == "weights.bin")

    c_stubs = c.stubs()
    try:
        with ThreadPoolExecutor(1) as pool:
            pool.submit(
                c_stubs.models.UploadModelVersion,
                twelve_mib_then_hang(),
                metadata=c_stubs.auth,
                timeout=120,
            )
            # Seen from a, through the database: c committed two 5 MiB parts.
            wait_for(lambda: received(on_bucket.a) == 10 * 1024**2, 60, "two parts from c")
            c.kill()
            held.set()
    finally:
        c_stubs.channel.close()
    assert on_bucket.moto.keys(on_bucket.bucket, "fleet/repository/resumed/") == []
    assert received(on_bucket.a) == 10 * 1024**2  # what a resume starts from
    folder = tmp_path / "resumed"
    (folder / "1").mkdir(parents=True)
    for path, data in files.items():
        (folder / "1" / path).write_bytes(data)
    with Client(on_bucket.a.address, on_bucket.a.key) as a:
        version = a.upload(folder, "resumed", upload_id=upload_id)
        a.download("resumed", version.version, tmp_path / "back")
    assert (tmp_path / "back" / "weights.bin").read_bytes() == weights
    # a continued from c's two parts (fetched back from the bucket), not from 0.
    restored = f"upload {upload_id}: {10 * 1024**2} bytes of weights.bin restored from the bucket"
    assert restored in on_bucket.a.log.read_text()
    assert on_bucket.moto.keys(on_bucket.bucket, "fleet/staging/") == []
    # No multipart upload of the upload's is left open (staging, blobs, repository).
    # The replicas' inference logs write under logs/ on their own clocks; a log
    # object being sent at this moment is theirs, not this upload's.
    pending = on_bucket.moto.client().list_multipart_uploads(Bucket=on_bucket.bucket)
    left = [u["Key"] for u in pending.get("Uploads", []) if not u["Key"].startswith("fleet/logs/")]
    assert left == [], pending.get("Uploads")


def test_a_file_failing_its_checksum_is_data_loss_and_leaves_nothing_in_the_bucket(
    on_bucket: OnBucket,
) -> None:
    """12 MiB through b in 5 MiB parts with a wrong sha256 declared: DATA_LOSS; the
    multipart upload aborted, no object, no version; the upload then resumes from 0."""
    weights = os.urandom(12 * 1024 * 1024 + 3)
    files = {"model.py": b"# checked\n", "weights.bin": weights}
    upload_id = "checksum-lie"
    lie = header("checked", files, upload_id=upload_id)
    lie.header.files[1].sha256 = "0" * 64  # weights.bin's (files sorted by path)
    with stubs_of(on_bucket.b) as stubs:
        with pytest.raises(grpc.RpcError) as refused:
            stubs.models.UploadModelVersion(
                iter([lie, *chunks(files)]), metadata=stubs.auth, timeout=120
            )
        assert refused.value.code() == grpc.StatusCode.DATA_LOSS
        pending = on_bucket.moto.client().list_multipart_uploads(
            Bucket=on_bucket.bucket, Prefix=f"fleet/blobs/uploads/{upload_id}/"
        )
        assert pending.get("Uploads", []) == []
        assert on_bucket.moto.keys(on_bucket.bucket, f"fleet/blobs/uploads/{upload_id}/") == []
        assert on_bucket.moto.keys(on_bucket.bucket, "fleet/repository/checked/") == []
        status = stubs.models.GetUpload(
            model_pb2.GetUploadRequest(upload_id=upload_id), metadata=stubs.auth, timeout=30
        )
        assert {f.path: f.received_bytes for f in status.files}["weights.bin"] == 0
        with pytest.raises(grpc.RpcError) as missing:
            stubs.models.GetModel(model_pb2.GetModelRequest(name="checked"), metadata=stubs.auth)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        stubs.models.CancelUpload(
            model_pb2.CancelUploadRequest(upload_id=upload_id), metadata=stubs.auth, timeout=30
        )
