"""The inference log without a server: every Triton datatype round-trips
(raw and typed contents alike), truncation, sampling, paging, retention."""

from __future__ import annotations

import datetime as dt
import os
import re
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest
from prometheus_client import CollectorRegistry
from tritonclient.grpc import service_pb2

from mlserve.core.errors import InvalidArgument
from mlserve.core.paging import PageTokens
from mlserve.monitor import parquet, retention
from mlserve.monitor.log import ABANDONED_AFTER, InferenceLog, LogSettings
from mlserve.monitor.parquet import decode
from mlserve.monitor.policy import LoggingPolicy, Mode, mode_named
from mlserve.monitor.reader import LogQuery, RowsQuery, logged_rows, read_page
from mlserve.monitor.records import Capture, new_id
from mlserve.monitor.store import LogFile, LogStore
from mlserve.monitor.tensors import TensorColumn, chunk_of, to_raw

ALL = LoggingPolicy(Mode.ALL)

# datatype -> elements (what a client would send), typed field (None: raw only)
SAMPLES: dict[str, tuple[list[Any], str | None]] = {
    "BOOL": ([True, False, True], "bool_contents"),
    "INT8": ([-128, 0, 127], "int_contents"),
    "INT16": ([-32768, 1, 32767], "int_contents"),
    "INT32": ([-(2**31), 2, 2**31 - 1], "int_contents"),
    "INT64": ([-(2**63), 3, 2**63 - 1], "int64_contents"),
    "UINT8": ([0, 1, 255], "uint_contents"),
    "UINT16": ([0, 2, 65535], "uint_contents"),
    "UINT32": ([0, 3, 2**32 - 1], "uint_contents"),
    "UINT64": ([0, 4, 2**64 - 1], "uint64_contents"),
    "FP16": ([0.5, -2.0, 65504.0], None),
    "BF16": ([1.0, -3.5, 2.0**100], None),
    "FP32": ([1.5, -0.25, 3.4e38], "fp32_contents"),
    "FP64": ([1e-300, -2.5, 1.7e308], "fp64_contents"),
    "BYTES": ([b"", b"\x00\xff", "héllo".encode()], "bytes_contents"),
}


def _request(datatype: str, raw: bool) -> Any:
    elements, field = SAMPLES[datatype]
    request = service_pb2.ModelInferRequest(model_name="m", id=f"req-{datatype}")
    tensor = request.inputs.add(name="X", datatype=datatype, shape=[1, len(elements)])
    if raw:
        request.raw_input_contents.append(to_raw(datatype, elements))
    else:
        getattr(tensor.contents, field).extend(elements)
    return request


def _capture(request: Any, response: Any = None, policy: LoggingPolicy = ALL) -> Capture:
    return Capture(time.time(), "m", 1, "local", None, policy, request.SerializeToString(),
                   None if response is None else response.SerializeToString(), "OK", "",
                   0.002)  # fmt: skip


def _files(root: Path) -> list[Path]:
    return [Path(file.path) for file in LogStore.of(root).files()]


def _read_all(root: Path, **filters: Any) -> list[Any]:
    records, _ = read_page(root, LogQuery(("m",), **filters), None, 1000)
    return records


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
@pytest.mark.parametrize("datatype", list(SAMPLES))
def test_every_datatype_round_trips_through_the_log(
    tmp_path: Path, datatype: str, raw: bool
) -> None:
    elements, field = SAMPLES[datatype]
    if not raw and field is None:
        pytest.skip(f"Triton sends {datatype} as raw bytes only")
    request = _request(datatype, raw)
    response = service_pb2.ModelInferResponse(model_name="m", id=request.id)
    response.outputs.add(name="Y", datatype=datatype, shape=[len(elements)])
    response.raw_output_contents.append(to_raw(datatype, elements))
    record = decode(_capture(request, response))
    assert record is not None
    parquet.write(tmp_path, [record])

    [back] = _read_all(tmp_path)
    [tensor] = back.inputs
    [output] = back.outputs
    for decoded in (tensor, output):
        assert decoded.datatype == datatype
        assert decoded.raw() == to_raw(datatype, elements)
        assert not decoded.truncated
    assert tensor.shape == (1, len(elements))
    if datatype == "BYTES":
        assert tensor.values == elements
    else:
        assert tensor.values.tolist() == pytest.approx(elements, rel=1e-7)
    assert back.request_id == f"req-{datatype}"


def test_a_file_the_log_wrote_opens_in_duckdb(tmp_path: Path) -> None:
    records = [decode(_capture(_request("FP32", True))) for _ in range(3)]
    parquet.write(tmp_path, [r for r in records if r is not None])
    rows = duckdb.sql(
        f'SELECT model, count(*) AS n, list_sum(first("input.X")) AS s '
        f"FROM read_parquet('{tmp_path}/**/*.parquet', hive_partitioning = true) GROUP BY model"
    ).fetchall()
    assert rows == [("m", 3, pytest.approx(1.5 - 0.25 + 3.4e38, rel=1e-6))]


def test_larger_tensors_are_kept_truncated_and_flagged(tmp_path: Path) -> None:
    request = service_pb2.ModelInferRequest(model_name="m")
    request.inputs.add(name="X", datatype="FP32", shape=[1000])
    request.raw_input_contents.append(np.arange(1000, dtype="<f4").tobytes())
    record = decode(_capture(request, policy=LoggingPolicy(Mode.ALL, max_payload_bytes=40)))
    assert record is not None
    parquet.write(tmp_path, [record])
    [back] = _read_all(tmp_path)
    [tensor] = back.inputs
    assert tensor.truncated
    assert back.truncated
    assert tensor.shape == (1000,)
    np.testing.assert_array_equal(tensor.values, np.arange(10, dtype=np.float32))


def test_metadata_mode_keeps_no_tensors(tmp_path: Path) -> None:
    record = decode(_capture(_request("INT32", True), policy=LoggingPolicy(Mode.METADATA)))
    assert record is not None
    assert record.inputs == []
    assert record.request_bytes > 0


def test_metadata_mode_reads_a_large_requests_id_without_parsing_it() -> None:
    request = _request("FP32", True)
    request.id = "call-7"
    request.raw_input_contents[0] += bytes(128 * 1024)  # past the size parsed whole
    metadata = LoggingPolicy(Mode.METADATA)
    record = decode(_capture(request, policy=metadata))
    assert record is not None
    assert record.request_id == "call-7"
    garbage = Capture(time.time(), "m", 1, "local", None, metadata, b"\xff\xff", None,
                      "INVALID_ARGUMENT", "bad", 0.001)  # fmt: skip
    broken = decode(garbage)
    assert broken is not None
    assert broken.request_id == ""
    assert broken.request_bytes == 2


@pytest.mark.parametrize(
    ("policy", "field"),
    [
        (LoggingPolicy(sample_rate=1.5), "logging.sample_rate"),
        (LoggingPolicy(sample_rate=-0.1), "logging.sample_rate"),
        (LoggingPolicy(max_payload_bytes=-1), "logging.max_payload_bytes"),
    ],
)
def test_a_policy_out_of_range_names_its_field(policy: LoggingPolicy, field: str) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(field)):
        policy.checked()


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(InvalidArgument, match=r"logging\.mode"):
        mode_named("everything")


def test_sampling_by_key_is_deterministic() -> None:
    policy = LoggingPolicy(sample_rate=0.5, sampling_key="user")
    answers = {policy.samples_key(f"user-{n}") for n in range(200)}
    assert answers == {True, False}
    assert all(policy.samples_key("user-7") == policy.samples_key("user-7") for _ in range(20))


def test_pages_follow_each_other_newest_first_without_gaps(tmp_path: Path) -> None:
    records = [decode(_capture(_request("INT8", True))) for _ in range(25)]
    parquet.write(tmp_path, [r for r in records if r is not None])
    seen: list[str] = []
    after = None
    while True:
        page, after = read_page(tmp_path, LogQuery(("m",)), after, 10)
        seen += [r.id for r in page]
        if after is None:
            break
    assert len(seen) == 25 == len(set(seen))
    times = [r.time for r in _read_all(tmp_path)]
    assert times == sorted(times, reverse=True)


def test_logged_rows_of_a_long_window_are_thinned_as_they_are_read(tmp_path: Path) -> None:
    """Rows 0..n-1 over several files: the limit's worth, in order, the first kept,
    spread over the whole window, never more than 2·limit held at once."""
    first = dt.datetime(2026, 3, 1, 9, 0, tzinfo=dt.timezone.utc)
    for hour in range(5):  # one file an hour, 40 calls of one row each
        records = []
        for call in range(40):
            number = hour * 40 + call
            request = service_pb2.ModelInferRequest(model_name="m")
            request.inputs.add(name="X", datatype="FP64", shape=[1, 2])
            request.raw_input_contents.append(np.asarray([number, -number], np.float64).tobytes())
            moment = first + dt.timedelta(hours=hour, seconds=call)
            capture = Capture(moment.timestamp(), "m", 1, "local", None,
                              LoggingPolicy(Mode.INPUTS), request.SerializeToString(), None,
                              "OK", "", 0.001)  # fmt: skip
            records.append(decode(capture))
        parquet.write(tmp_path, [r for r in records if r is not None])
    rows = logged_rows(tmp_path, RowsQuery("m", "X", 2, None, None, 7))
    assert len(rows) == 7
    numbers = rows[:, 0].astype(int).tolist()
    assert numbers == sorted(numbers)
    assert numbers[0] == 0
    assert numbers[-1] >= 200 - 200 // 7  # the last hour is in it
    np.testing.assert_array_equal(rows[:, 1], -rows[:, 0])
    everything = logged_rows(tmp_path, RowsQuery("m", "X", 2, None, None, 1000))
    np.testing.assert_array_equal(everything[:, 0], np.arange(200))


class _RacedByRetention(LogStore):
    """A store whose first listings still name a file retention has just deleted."""

    def __init__(self, directory: Path, stale: int) -> None:
        local = LogStore.local_directory(directory)
        super().__init__(local.filesystem, local.root, local.where)
        self.stale = stale

    def files(self, *under: str) -> list[LogFile]:
        found = super().files(*under)
        if self.stale > 0:
            self.stale -= 1
            gone = str(Path(found[0].path).with_name("part-deleted.parquet"))
            found = [LogFile(gone, 1, 0.0), *found]
        return found


def test_a_file_deleted_after_the_listing_is_no_error(tmp_path: Path) -> None:
    records = [decode(_capture(_request("FP32", True))) for _ in range(3)]
    parquet.write(tmp_path, [r for r in records if r is not None])
    page, after = read_page(_RacedByRetention(tmp_path, 1), LogQuery(("m",)), None, 10)
    assert len(page) == 3
    assert after is None
    rows = logged_rows(_RacedByRetention(tmp_path, 1), RowsQuery("m", "X", 3, None, None, 10))
    assert rows.shape == (3, 3)
    # Stale every time: the listing's own error, not a page missing records.
    with pytest.raises(FileNotFoundError):
        read_page(_RacedByRetention(tmp_path, 99), LogQuery(("m",)), None, 10)


def test_retention_deletes_old_files_then_bytes_beyond_the_cap(tmp_path: Path) -> None:
    for _ in range(3):
        record = decode(_capture(_request("INT8", True)))
        assert record is not None
        parquet.write(tmp_path, [record])
    files = _files(tmp_path)
    old = time.time() - 3600
    os.utime(files[0], (old, old))
    assert retention.apply(tmp_path, max_age_seconds=60, max_bytes_per_model=10**9) == 1
    assert retention.apply(tmp_path, max_age_seconds=60, max_bytes_per_model=1) == 2
    assert _files(tmp_path) == []


def test_a_full_queue_drops_and_counts_instead_of_waiting(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    log = InferenceLog(LogSettings(tmp_path, queue_size=2), registry, PageTokens(b"k"))
    payload = _request("INT8", True).SerializeToString()
    for _ in range(5):
        log.capture("m", 1, "local", None, payload, None, "OK", "", time.time(), 0.001)
    assert log.dropped("m") == 3
    dropped = registry.get_sample_value("mlserve_inference_log_dropped_total", {"deployment": "m"})
    assert dropped == 3
    assert log.flush() == 2
    assert len(_read_all(tmp_path)) == 2


def _large_call() -> tuple[bytes, bytes]:
    request = service_pb2.ModelInferRequest(model_name="m", id="big-1")
    request.inputs.add(name="X", datatype="FP32", shape=[256 * 1024])
    request.raw_input_contents.append(np.ones(256 * 1024, np.float32).tobytes())
    response = service_pb2.ModelInferResponse(model_name="m", id="big-1")
    response.outputs.add(name="Y", datatype="FP32", shape=[256 * 1024])
    response.raw_output_contents.append(np.ones(256 * 1024, np.float32).tobytes())
    return request.SerializeToString(), response.SerializeToString()


def test_metadata_lets_a_large_calls_bytes_go_at_once_and_records_the_same(
    tmp_path: Path,
) -> None:
    request, response = _large_call()
    log = InferenceLog(LogSettings(tmp_path), CollectorRegistry(), PageTokens(b"k"))
    log.capture("m", 1, "local", None, request, response, "OK", "", time.time(), 0.001)
    (queued,) = log._queue
    assert isinstance(queued, Capture)
    assert len(queued.request) < 100
    assert queued.response == b""
    assert (queued.request_size, queued.response_size) == (len(request), len(response))
    assert log.flush() == 1
    (record,) = _read_all(tmp_path)
    assert (record.request_id, record.request_bytes) == ("big-1", len(request))
    assert record.response_bytes == len(response)


def test_a_policy_that_keeps_tensors_keeps_the_bytes(tmp_path: Path) -> None:
    request, response = _large_call()
    log = InferenceLog(LogSettings(tmp_path), CollectorRegistry(), PageTokens(b"k"))
    log.policies._policies.value["m"] = ALL
    log.capture("m", 1, "local", None, request, response, "OK", "", time.time(), 0.001)
    (queued,) = log._queue
    assert isinstance(queued, Capture)
    assert queued.request is request
    assert queued.response is response
    assert queued.request_size is None


def test_a_killed_writers_leftovers_are_swept_and_never_read(tmp_path: Path) -> None:
    record = decode(_capture(_request("INT8", True)))
    assert record is not None
    parquet.write(tmp_path, [record])
    directory = _files(tmp_path)[0].parent
    (directory / ".part-x.parquet.tmp").write_bytes(b"PAR1 half")
    assert len(_read_all(tmp_path)) == 1
    assert LogStore.of(tmp_path).sweep_temporary() == 1


def test_a_half_written_file_still_being_written_is_left_to_its_writer(tmp_path: Path) -> None:
    directory = tmp_path / "model=m"
    directory.mkdir()
    fresh = directory / ".part-live.parquet.tmp"  # another worker writing it now
    fresh.write_bytes(b"PAR1 half")
    stale = directory / ".part-dead.parquet.tmp"
    stale.write_bytes(b"PAR1 half")
    long_ago = time.time() - ABANDONED_AFTER - 60
    os.utime(stale, (long_ago, long_ago))
    assert LogStore.of(tmp_path).sweep_temporary(ABANDONED_AFTER) == 1
    assert fresh.exists()
    assert not stale.exists()


def test_an_unwritable_directory_marks_the_log_unwritable(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    log = InferenceLog(LogSettings(blocked / "logs"), CollectorRegistry(), PageTokens(b"k"))
    assert not log.check_writable()
    assert not log.writable


def test_time_filters(tmp_path: Path) -> None:
    record = decode(_capture(_request("INT8", True)))
    assert record is not None
    parquet.write(tmp_path, [record])
    later = record.time + dt.timedelta(seconds=1)
    assert _read_all(tmp_path, start=later) == []
    assert len(_read_all(tmp_path, end=later)) == 1
    assert pq.read_table(_files(tmp_path)[0]).num_rows == 1


def test_a_record_whose_model_is_not_a_name_never_becomes_a_path(tmp_path: Path) -> None:
    record = decode(_capture(_request("INT8", True)))
    assert record is not None
    record.model = "../escape"
    assert parquet.write(tmp_path / "logs", [record]).records == 0
    assert list(tmp_path.rglob("*.parquet")) == []


def test_a_header_sampling_key_is_decided_on_the_hot_path_by_its_value(tmp_path: Path) -> None:
    log = InferenceLog(LogSettings(tmp_path), CollectorRegistry(), PageTokens(b"k"))
    policy = LoggingPolicy(Mode.METADATA, 0.5, sampling_key="header:X-User").checked()
    log.policies._policies.write({"m": policy})
    payload = _request("INT8", True).SerializeToString()
    users = [f"user-{n}" for n in range(40)]
    for _ in range(3):  # the same users, three times over
        for user in users:
            headers = {"x-user": user}
            log.capture("m", 1, "local", None, payload, None, "OK", "", time.time(), 0.001,
                        headers.get)  # fmt: skip
    kept = [user for user in users if policy.samples_key(user)]
    assert 0 < len(kept) < len(users)
    assert log.flush() == 3 * len(kept)


def test_a_header_sampling_key_must_name_a_header() -> None:
    with pytest.raises(InvalidArgument, match="header:NAME"):
        LoggingPolicy(sampling_key="header:").checked()


def test_record_ids_are_distinct_version_4_uuids() -> None:
    ids = [new_id() for _ in range(3000)]  # more than one draw of the batched ids
    assert len(set(ids)) == len(ids)
    for text in ids[::997]:
        parsed = uuid.UUID(hex=text)
        assert (parsed.hex, parsed.version, parsed.variant) == (text, 4, uuid.RFC_4122)


def _list_column(datatype: str, rows: list[Any]) -> Any:
    column = TensorColumn(datatype)
    for index, values in enumerate(rows):
        if values is not None:
            column.add(index, (len(values),), *chunk_of(datatype, values))
    elements, shapes = column.arrays(len(rows))
    assert shapes.to_pylist() == [None if v is None else [len(v)] for v in rows]
    return elements


def test_a_list_column_keeps_missing_rows_and_casts_other_dtypes() -> None:
    pooled = _list_column("FP32", [np.array([1, 2], np.float32), None, np.array([3], np.float32)])
    cast = _list_column("FP32", [np.array([1, 2], np.float64), None, [3.0]])
    for column in (pooled, cast):
        assert column.to_pylist() == [[1.0, 2.0], None, [3.0]]
        assert str(column.type.value_type) == "float"
    assert _list_column("BOOL", [np.array([True, False])]).to_pylist() == [[True, False]]
    assert _list_column("BYTES", [None, [b"a", b""]]).to_pylist() == [None, [b"a", b""]]


def test_logged_rows_are_the_whole_finite_rows_of_successful_calls(tmp_path: Path) -> None:
    def call(rows: list[list[float]], status: str = "OK", mode: Mode = Mode.INPUTS) -> Any:
        request = service_pb2.ModelInferRequest(model_name="m")
        request.inputs.add(name="X", datatype="FP64", shape=[len(rows), len(rows[0])])
        request.raw_input_contents.append(np.asarray(rows, dtype=np.float64).tobytes())
        capture = Capture(time.time(), "m", 1, "local", None, LoggingPolicy(mode),
                          request.SerializeToString(), None, status, "", 0.002)  # fmt: skip
        return decode(capture)

    records = [
        call([[1, 2, 3], [4, 5, 6]]),
        call([[0, 0, 0, 0]]),  # four values: not rows of three
        call([[9, 9, 9]], status="INVALID_ARGUMENT"),  # refused: not what the model took
        call([[8, 8, 8]], mode=Mode.METADATA),  # its inputs were not recorded
        call([[7, 8, 9]]),
        call([[float("nan"), 1, 2], [float("inf"), 3, 4]]),  # no background holds them
    ]
    parquet.write(tmp_path, [r for r in records if r is not None])
    everything = RowsQuery("m", "X", 3, None, None, 100)
    np.testing.assert_array_equal(logged_rows(tmp_path, everything),
                                  [[1, 2, 3], [4, 5, 6], [7, 8, 9]])  # fmt: skip
    # More rows than the limit: spread evenly, the first and the last kept.
    np.testing.assert_array_equal(
        logged_rows(tmp_path, replace(everything, limit=2)), [[1, 2, 3], [7, 8, 9]]
    )
    first = records[0].time
    assert logged_rows(tmp_path, replace(everything, end=first)).shape == (0, 3)
    assert logged_rows(tmp_path, replace(everything, tensor="Y")).shape == (0, 3)
    assert logged_rows(tmp_path, replace(everything, model="other")).shape == (0, 3)
