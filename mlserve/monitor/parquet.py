"""The log on disk: Parquet (zstd), Hive-partitioned by model, date and hour.

    logs/model=NAME/date=YYYY-MM-DD/hour=HH/part-<time>-<id>.parquet

One file per partition per flush, written whole into the log's store (a
local directory or an s3:// prefix, ``store``): a reader (or a SIGKILL)
never meets a half-written file.

Columns: the metadata of every record (``META``), then per tensor a list
column ``input.NAME`` / ``output.NAME`` of its elements (typed, see
``tensors``) and ``input_shape.NAME`` / ``output_shape.NAME``; the tensor's
Triton datatype is in the column's field metadata (``datatype``). The
model, date and hour come from the path, as Hive partitioning does.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pyarrow as pa

from mlserve.core.errors import InvalidArgument
from mlserve.core.names import check_name
from mlserve.monitor import tensors
from mlserve.monitor.records import (
    INPUT,
    SCALARS,
    Capture,
    Record,
    Row,
    Scalars,
    row_of,
    row_of_record,
)
from mlserve.monitor.store import LogStore
from mlserve.monitor.tensors import Tensor

log = logging.getLogger(__name__)


META = pa.schema(
    [
        ("id", pa.string()),
        ("time", pa.timestamp("us", tz="UTC")),
        ("version", pa.int64()),
        ("deployment", pa.string()),
        ("server", pa.string()),
        ("caller", pa.string()),
        ("caller_kind", pa.string()),
        ("app", pa.string()),
        ("status", pa.string()),
        ("message", pa.string()),
        ("latency_ms", pa.float64()),
        ("request_id", pa.string()),
        ("request_bytes", pa.int64()),
        ("response_bytes", pa.int64()),
        ("source", pa.string()),
        ("truncated", pa.bool_()),
        ("truncated_tensors", pa.list_(pa.string())),
        ("input_json", pa.string()),
        ("output_json", pa.string()),
    ]
)
_DICTIONARY_COLUMNS = [
    "deployment", "server", "caller", "caller_kind", "app", "status", "message", "source",
]  # fmt: skip
_STATISTICS_COLUMNS = ["id", "time", "version", *_DICTIONARY_COLUMNS]
_SCALARS = list(SCALARS)
_SCALAR_TYPES = [META.field(name).type for name in _SCALARS]
_HOUR_MICROS = 3600 * 1_000_000
_GROUP_ELEMENTS = 64 * 1024**2
"""Tensor elements in one file at most: more start another file (and keep a list
column's 32-bit offsets far from overflowing)."""


@dataclass(frozen=True)
class Partition:
    model: str
    date: str  # YYYY-MM-DD
    hour: str  # HH

    def directory(self) -> str:
        """The partition's directory, relative to the log's root."""
        return f"model={self.model}/date={self.date}/hour={self.hour}"

    @staticmethod
    def of(model: str, micros: int) -> Partition:
        moment = time.gmtime(micros // 1_000_000)
        return Partition(model, time.strftime("%Y-%m-%d", moment), time.strftime("%H", moment))


@dataclass(frozen=True)
class Written:
    records: int
    bytes: int


def write(root: Path | LogStore, items: Iterable[Capture | Record], tag: str = "") -> Written:
    """Write captured calls and records as one file per partition (and tensor schema).

    A capture or record that cannot be decoded is logged and left out; so is one
    whose model is not a valid name (it never becomes a path).

    ``tag`` goes into the file names (``part-<time>-<tag><id>``): each writing
    process has its own, so several never pick the same name.

    Raises:
        OSError: the directory cannot be written (full disk, permissions).
    """
    store = LogStore.of(root)
    batches = _batches(items)
    records = written = 0
    for partition, groups in batches.items():
        for batch in groups:
            written += store.write_table(partition.directory(), batch.table(), tag, **_OPTIONS)
            records += batch.rows
    return Written(records, written)


def decode(capture: Capture) -> Record | None:
    """The record a capture becomes in the log, as reading it back gives it."""
    row = row_of(capture)
    if row is None:
        return None
    batch = Batch()
    batch.add(row)
    (record,) = records_of(batch.table(), capture.model)
    return record


def table_of(records: list[Record]) -> Any:
    """One Arrow table of records sharing tensor datatypes."""
    batch = Batch()
    for record in records:
        row = row_of_record(record)
        if not batch.fits(row):
            raise ValueError("records with one tensor name in two datatypes need two tables")
        batch.add(row)
    return batch.table()


class Batch:
    """Rows of one partition as columns, a tensor name having one datatype among them."""

    def __init__(self) -> None:
        self.rows = 0
        self._scalars: list[Scalars] = []
        self._micros: list[int] = []
        self._truncated: list[list[str]] = []
        self._tensors: dict[tuple[str, str], tensors.TensorColumn] = {}
        self._elements = 0

    def fits(self, row: Row) -> bool:
        """Whether ``row`` can join: its tensors' datatypes agree, and the batch has room."""
        if self._elements > _GROUP_ELEMENTS:
            return False
        for role, name, datatype, *_ in row.tensors:
            column = self._tensors.get((role, name))
            if column is not None and column.datatype != datatype:
                return False
        return True

    def add(self, row: Row) -> None:
        index = self.rows
        self.rows += 1
        self._scalars.append(row.scalars)
        self._micros.append(row.micros)
        cut: list[str] = []
        for role, name, datatype, shape, chunk, length, truncated in row.tensors:
            column = self._tensors.get((role, name))
            if column is None:
                column = self._tensors[(role, name)] = tensors.TensorColumn(datatype)
            column.add(index, shape, chunk, length)
            self._elements += length
            if truncated:
                cut.append(f"{role}.{name}")
        self._truncated.append(cut)

    def table(self) -> Any:
        """The batch as one Arrow table, each column built in one call."""
        columns = list(zip(*self._scalars, strict=True)) if self._scalars else [()] * len(_SCALARS)
        arrays: dict[str, Any] = {
            name: pa.array(values, kind)
            for name, values, kind in zip(_SCALARS, columns, _SCALAR_TYPES, strict=True)
        }
        arrays["time"] = pa.array(np.array(self._micros, dtype=np.int64)).cast(
            META.field("time").type
        )
        arrays["truncated"] = pa.array([bool(names) for names in self._truncated], pa.bool_())
        arrays["truncated_tensors"] = pa.array(self._truncated, pa.list_(pa.string()))
        fields = list(META)
        ordered = [arrays[name] for name in META.names]
        for (role, name), column in self._tensors.items():
            metadata = {"datatype": column.datatype, "tensor": name, "role": role}
            elements, shapes = column.arrays(self.rows)
            fields.append(pa.field(f"{role}.{name}", elements.type, metadata=metadata))
            fields.append(pa.field(f"{role}_shape.{name}", shapes.type, metadata=metadata))
            ordered += [elements, shapes]
        return pa.Table.from_arrays(ordered, schema=pa.schema(fields))


def _batches(items: Iterable[Capture | Record]) -> dict[Partition, list[Batch]]:
    batches: dict[Partition, list[Batch]] = {}
    names: dict[str, bool] = {}
    partitions: dict[tuple[str, int], Partition] = {}
    for item in items:
        valid = names.get(item.model)
        if valid is None:
            valid = names[item.model] = valid_name(item.model)
        if not valid:
            log.error("inference log record for %r dropped: not a model name", item.model)
            continue
        try:
            row = row_of(item) if isinstance(item, Capture) else row_of_record(item)
        except Exception:
            log.exception("could not decode an inference log record; it is dropped")
            continue
        if row is None:
            continue
        # One Partition per model and hour, not one strftime per record.
        key = (row.model, row.micros // _HOUR_MICROS)
        partition = partitions.get(key)
        if partition is None:
            partition = partitions[key] = Partition.of(row.model, row.micros)
        groups = batches.setdefault(partition, [])
        # The usual case: one signature, so the newest batch takes the row.
        for batch in reversed(groups):
            if batch.fits(row):
                break
        else:
            batch = Batch()
            groups.append(batch)
        batch.add(row)
    return batches


def records_of(table: Any, model: str) -> list[Record]:
    """Rows of a table read back from the log, decoded (the inverse of ``table_of``)."""
    meta = {
        name: table.column(name).to_pylist() for name in META.names if name in table.schema.names
    }
    tensor_fields = [
        f for f in table.schema if f.metadata and b"role" in f.metadata and "_shape." not in f.name
    ]
    records: list[Record] = []
    for row in range(table.num_rows):
        truncated = set(meta["truncated_tensors"][row] or ())
        record = Record(
            time=meta["time"][row],
            model=model,
            **{name: meta[name][row] for name in _SCALARS if name in meta},
        )
        for tensor_field in tensor_fields:
            role = tensor_field.metadata[b"role"].decode()
            name = tensor_field.metadata[b"tensor"].decode()
            datatype = tensor_field.metadata[b"datatype"].decode()
            values = tensors.values_of(datatype, table.column(tensor_field.name)[row])
            if values is None:
                continue
            shape = table.column(f"{role}_shape.{name}")[row].as_py()
            tensor = Tensor(name, datatype, tuple(shape), values, f"{role}.{name}" in truncated)
            (record.inputs if role == INPUT else record.outputs).append(tensor)
        records.append(record)
    return records


def valid_name(model: str) -> bool:
    """Whether ``model`` may name a partition directory (a valid resource name)."""
    try:
        check_name(model)
    except InvalidArgument:
        return False
    return True


_OPTIONS: dict[str, Any] = {
    "compression": "zstd",
    # Level 1: the writer must keep up with the gateway on one core.
    "compression_level": 1,
    # Dictionaries and statistics pay off on the metadata (filters, repeated
    # names), not on tensor elements, which are mostly distinct.
    "use_dictionary": _DICTIONARY_COLUMNS,
    "write_statistics": _STATISTICS_COLUMNS,
}


def partition_hour(where: str | Path) -> dt.datetime | None:
    """The UTC hour a file's partition stands for, from its path."""
    path = PurePosixPath(where)
    try:
        date = path.parent.parent.name.removeprefix("date=")
        hour = path.parent.name.removeprefix("hour=")
        return dt.datetime.strptime(f"{date} {hour}", "%Y-%m-%d %H").replace(tzinfo=dt.timezone.utc)
    except ValueError:
        return None
