"""The inference log under an s3:// prefix, on a real S3-compatible server (moto's on
loopback): files appear whole, each replica under its own names, retention and
reading back work there as on a local disk."""

from __future__ import annotations

import time
from typing import Any

import pyarrow.parquet as pq
import pytest
from prometheus_client import CollectorRegistry
from tritonclient.grpc import service_pb2

from mlserve.core.paging import PageTokens
from mlserve.monitor import parquet, retention
from mlserve.monitor.log import InferenceLog, LogSettings
from mlserve.monitor.policy import LoggingPolicy, Mode
from mlserve.monitor.reader import LogQuery, read_page
from mlserve.monitor.records import Capture
from mlserve.monitor.store import LogStore
from mlserve.storage.s3 import S3Location
from tests.support.s3 import MotoServer, moto_server  # noqa: F401 (a fixture)


@pytest.fixture
def bucket(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> str:  # noqa: F811
    for name, value in moto_server.env().items():
        monkeypatch.setenv(name, value)
    return moto_server.bucket()


def _capture(n: int) -> Capture:
    request = service_pb2.ModelInferRequest(model_name="m", id=f"r{n}")
    request.inputs.add(name="X", datatype="INT32", shape=[2])
    request.raw_input_contents.append(bytes(8))
    return Capture(time.time(), "m", 1, "local", None, LoggingPolicy(Mode.ALL),
                   request.SerializeToString(), None, "OK", "", 0.001)  # fmt: skip


def _store(bucket: str, replica: str = "replica-a") -> LogStore:
    return LogStore.bucket(S3Location.parse(f"s3://{bucket}/fleet"), "logs", replica)


def _parquet_keys(moto: MotoServer, bucket: str) -> list[str]:
    return [key for key in moto.keys(bucket, "fleet/logs/") if key.endswith(".parquet")]


def _ids(store: LogStore) -> list[Any]:
    records, _ = read_page(store, LogQuery(("m",)), None, 1000)
    return sorted(r.request_id for r in records)


def test_the_writer_puts_whole_files_under_the_prefix_and_reads_them_back(
    bucket: str,
    moto_server: MotoServer,  # noqa: F811
) -> None:
    store = _store(bucket)
    log = InferenceLog(LogSettings(store), CollectorRegistry(), PageTokens(b"k"))
    assert log.check_writable()
    for n in range(3):
        log._offer(_capture(n), "m")
    assert log.flush() == 3
    [key] = _parquet_keys(moto_server, bucket)
    assert key.startswith("fleet/logs/model=m/date=")
    assert "/hour=" in key
    assert key.endswith(".parquet")
    assert "-replica-a-" in key
    assert _ids(store) == ["r0", "r1", "r2"]
    assert log.models() == ["m"]
    # Any engine reads the object as it is: here pyarrow, straight from the bucket.
    table = pq.read_table(f"{bucket}/{key}", filesystem=store.filesystem)
    assert table.column("input.X").to_pylist() == [[0, 0]] * 3


def test_two_replicas_write_the_same_partition_without_clashing(
    bucket: str,
    moto_server: MotoServer,  # noqa: F811
) -> None:
    first, second = _store(bucket, "replica-a"), _store(bucket, "replica-b")
    parquet.write(first, [_capture(0)])
    parquet.write(second, [_capture(1)])
    keys = _parquet_keys(moto_server, bucket)
    assert len(keys) == 2
    assert sorted(key.split("-")[-2] for key in keys) == ["a", "b"]  # replica-a, replica-b
    assert _ids(first) == _ids(second) == ["r0", "r1"]


def test_retention_deletes_in_the_bucket_by_bytes(
    bucket: str,
    moto_server: MotoServer,  # noqa: F811
) -> None:
    store = _store(bucket)
    for n in range(3):
        parquet.write(store, [_capture(n)])
    assert retention.apply(store, max_age_seconds=3600, max_bytes_per_model=10**9) == 0
    assert retention.apply(store, max_age_seconds=3600, max_bytes_per_model=1) == 3
    assert _parquet_keys(moto_server, bucket) == []
    assert _ids(store) == []


def test_an_unreachable_bucket_marks_the_log_unwritable(bucket: str) -> None:
    store = _store("mlserve-no-such-bucket")
    log = InferenceLog(LogSettings(store), CollectorRegistry(), PageTokens(b"k"))
    assert not log.check_writable()
    log._offer(_capture(0), "m")
    assert log.flush() == 0
    assert not log.writable


def test_a_write_killed_before_it_closes_leaves_no_multipart_upload_behind(
    bucket: str,
    moto_server: MotoServer,  # noqa: F811
) -> None:
    # A replica SIGKILLed between open and close (the probe, a small log file) must
    # not leave an incomplete multipart upload that the bucket bills until a
    # lifecycle rule removes it: small objects go up as one PutObject at close.
    store = _store(bucket)
    with store.filesystem.open_output_stream(store.path(".probe")) as stream:
        stream.write(b"half")
        pending = moto_server.client().list_multipart_uploads(Bucket=bucket)
    assert pending.get("Uploads", []) == []
    assert moto_server.keys(bucket, "fleet/logs/") == ["fleet/logs/.probe"]
