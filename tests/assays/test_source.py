"""Reading one number per call out of the log without a server: the range, the
version, the element index and files that lack the tensor (``source.logged_values``
over ``reader.logged_tables``)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path as FilePath
from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2

from mlserve.assays import source
from mlserve.assays.spec import Path
from mlserve.monitor import parquet
from mlserve.monitor.parquet import decode
from mlserve.monitor.policy import LoggingPolicy, Mode
from mlserve.monitor.reader import micros
from mlserve.monitor.records import Capture

START = dt.datetime(2026, 3, 1, 10, 30, tzinfo=dt.timezone.utc)


def _call(at: dt.datetime, values: list[float], version: int = 1, tensor: str = "X") -> Any:
    request = service_pb2.ModelInferRequest(model_name="m")
    request.inputs.add(name=tensor, datatype="FP32", shape=[1, len(values)])
    request.raw_input_contents.append(np.asarray(values, dtype=np.float32).tobytes())
    capture = Capture(at.timestamp(), "m", version, "local", None, LoggingPolicy(Mode.INPUTS),
                      request.SerializeToString(), None, "OK", "", 0.001)  # fmt: skip
    return decode(capture)


def test_logged_values_are_the_element_of_each_call_in_the_range(tmp_path: FilePath) -> None:
    minute = dt.timedelta(minutes=1)
    records = [
        _call(START, [1, 10]),
        _call(START + 20 * minute, [2, 20]),  # 10:50
        _call(START + 40 * minute, [3, 30], version=2),  # 11:10, the next hour's file
        _call(START + 50 * minute, [4]),  # too short for element 1
        _call(START + 60 * minute, [5, 50], tensor="Y"),  # 11:30: another tensor
        _call(START + 90 * minute, [6, 60]),  # 12:00: past the range
    ]
    parquet.write(tmp_path, records)
    end = START + 90 * minute
    times, values = source.logged_values(tmp_path, "m", 0, Path("input", "X", 1), START, end)
    np.testing.assert_array_equal(values, [10, 20, 30])
    expected = [START, START + 20 * minute, START + 40 * minute]
    assert times.tolist() == [micros(moment) for moment in expected]
    _, first = source.logged_values(tmp_path, "m", 0, Path("input", "X", 0), START, end)
    np.testing.assert_array_equal(first, [1, 2, 3, 4])
    # One version only; a later start; a tensor with calls only in its own file.
    _, second = source.logged_values(tmp_path, "m", 2, Path("input", "X", 0), START, end)
    np.testing.assert_array_equal(second, [3])
    _, later = source.logged_values(tmp_path, "m", 0, Path("input", "X", 0), START + minute, end)
    np.testing.assert_array_equal(later, [2, 3, 4])
    _, other = source.logged_values(tmp_path, "m", 0, Path("input", "Y", 0), START, end)
    np.testing.assert_array_equal(other, [5])
    for path, model in ((Path("input", "Z", 0), "m"), (Path("input", "X", 0), "other")):
        times, nothing = source.logged_values(tmp_path, model, 0, path, START, end)
        assert times.size == 0
        assert nothing.size == 0


def _one_shot(
    root: FilePath, version: int, path: Path, spans: list[tuple[dt.datetime, dt.datetime]]
) -> list[np.ndarray]:
    """Each span's values cut from one read of the whole range (how RunAssay read the
    log before it read it hour by hour)."""
    times, values = source.logged_values(root, "m", version, path, spans[0][0], spans[-1][1])
    cuts = []
    for begin, finish in spans:
        low, high = np.searchsorted(times, [micros(begin), micros(finish)])
        cuts.append(values[low:high])
    return cuts


def test_window_values_read_hour_by_hour_equal_one_read_of_the_range(
    tmp_path: FilePath,
) -> None:
    """Overlapping 25-minute windows every 10 minutes over five hours: windows across
    hour boundaries, an hour with two files whose calls interleave (two replicas), an
    empty hour, versions, and windows past the last call."""
    rng = np.random.default_rng(3)
    second = dt.timedelta(seconds=1)
    base = START.replace(minute=0)
    calls = [
        _call(base + int(s) * second, [float(v), float(v) * 2], version=1 + int(s) % 2)
        for s, v in zip(rng.integers(0, 2 * 3600, 400), rng.normal(0, 1, 400), strict=True)
    ]
    later = [  # hour 3 is empty; hour 4 has calls
        _call(base + int(s) * second, [float(v), 0.0])
        for s, v in zip(rng.integers(4 * 3600, 5 * 3600, 100), rng.normal(3, 1, 100), strict=True)
    ]
    half = len(calls) // 2
    parquet.write(tmp_path, calls[:half])  # each write is one file per hour, in time order
    parquet.write(tmp_path, calls[half:] + later)
    assert len(list(tmp_path.rglob("*.parquet"))) == 5
    minute = dt.timedelta(minutes=1)
    spans = [(base + 10 * k * minute, base + (10 * k + 25) * minute) for k in range(36)]
    for version, path in ((0, Path("input", "X", 0)), (2, Path("input", "X", 1))):
        expected = _one_shot(tmp_path, version, path, spans)
        found = list(source.window_values(tmp_path, "m", version, path, spans))
        assert len(found) == len(spans)
        for got, want in zip(found, expected, strict=True):
            np.testing.assert_array_equal(got, want)
        _, whole = source.logged_values(tmp_path, "m", version, path, base, spans[-1][1])
        assert sum(map(len, found)) > len(whole) > 0  # the windows overlap
    assert list(source.window_values(tmp_path, "m", 0, Path("input", "X", 0), [])) == []


def test_window_values_do_not_read_an_hour_before_a_window_needs_it(
    tmp_path: FilePath,
) -> None:
    """The first window's values come before the later hours' files are opened: a file
    removed in between (as retention would) is not in memory, so its window is empty."""
    minute = dt.timedelta(minutes=1)
    parquet.write(tmp_path, [_call(START, [1.0]), _call(START + 60 * minute, [2.0])])
    spans = [(START, START + 10 * minute), (START + 60 * minute, START + 70 * minute)]
    found = source.window_values(tmp_path, "m", 0, Path("input", "X", 0), spans)
    np.testing.assert_array_equal(next(found), [1.0])
    (later,) = (tmp_path / "model=m").glob("date=*/hour=11/*.parquet")
    later.unlink()
    assert next(found).size == 0
    assert next(found, None) is None
