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
