"""Reading the inference log from Python: records as messages, or as one table.

``Client.inference_logs`` pages through ``InferenceLogService/ListInferenceLogs``;
``records_table`` turns records into a pyarrow Table (pandas: ``.to_pandas()``),
one column per metadata field and one list column per tensor (``input.NAME``,
``output.NAME``), as the Parquet files on the server hold them.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from mlserve_api.v1 import inference_log_pb2

MODES = ("off", "metadata", "inputs", "outputs", "all")
_CONTENTS = ("bool_contents", "int_contents", "uint_contents", "fp_contents", "bytes_contents")
_META = (
    "id", "model", "version", "deployment", "server", "caller", "caller_kind", "app", "status",
    "message", "latency_ms", "request_id", "request_bytes", "response_bytes", "source",
    "truncated", "input_json", "output_json",
)  # fmt: skip
_SPAN = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_span(text: str) -> dt.timedelta:
    """``90s``, ``15m``, ``1h``, ``7d`` as a timedelta (ValueError otherwise)."""
    match = _SPAN.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a time span: use e.g. 90s, 15m, 1h or 7d")
    return dt.timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})


def policy(
    deployment: str,
    mode: str = "metadata",
    sample_rate: float | None = None,
    sampling_key: str = "",
    max_payload_bytes: int = 0,
) -> inference_log_pb2.LoggingPolicy:
    """A LoggingPolicy message; ``mode`` is one of MODES."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is unknown: use one of {', '.join(MODES)}")
    message = inference_log_pb2.LoggingPolicy(
        deployment=deployment,
        mode=inference_log_pb2.LoggingMode.Value(f"LOGGING_MODE_{mode.upper()}"),
        sampling_key=sampling_key,
        max_payload_bytes=max_payload_bytes,
    )
    if sample_rate is not None:
        message.sample_rate = sample_rate
    return message


def timestamp(moment: dt.datetime | dt.timedelta | None) -> Timestamp | None:
    """A timestamp for ``moment``; a timedelta means that long ago."""
    if moment is None:
        return None
    if isinstance(moment, dt.timedelta):
        moment = dt.datetime.now(dt.timezone.utc) - moment
    stamp = Timestamp()
    stamp.FromDatetime(moment.astimezone(dt.timezone.utc))
    return stamp


def tensor_values(tensor: inference_log_pb2.Tensor) -> list[Any]:
    """A tensor's elements, whichever typed field holds them."""
    for name in _CONTENTS:
        values = getattr(tensor, name)
        if len(values):
            return list(values)
    return []


def records_table(records: Iterable[inference_log_pb2.InferenceRecord]) -> Any:
    """A pyarrow Table of ``records`` (needs pyarrow; ``.to_pandas()`` for a DataFrame)."""
    import pyarrow as pa

    rows = list(records)
    columns: dict[str, list[Any]] = {name: [getattr(r, name) for r in rows] for name in _META}
    columns["time"] = [r.time.ToDatetime(tzinfo=dt.timezone.utc) for r in rows]
    for role in ("inputs", "outputs"):
        names = sorted({t.name for r in rows for t in getattr(r, role)})
        for name in names:
            found = [next((t for t in getattr(r, role) if t.name == name), None) for r in rows]
            prefix = role[:-1]
            columns[f"{prefix}.{name}"] = [None if t is None else tensor_values(t) for t in found]
            columns[f"{prefix}_shape.{name}"] = [
                None if t is None else list(t.shape) for t in found
            ]
    return pa.table(columns)
