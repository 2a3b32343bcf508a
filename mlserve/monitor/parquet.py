"""The log on disk: Parquet (zstd), Hive-partitioned by model, date and hour.

    logs/model=NAME/date=YYYY-MM-DD/hour=HH/part-<time>-<id>.parquet

One file per partition per flush. A file is written under a hidden
temporary name and renamed into place, so a reader (or a SIGKILL) never
meets a half-written file; leftovers of a killed writer are swept at start.

Columns: the metadata of every record (``META``), then per tensor a list
column ``input.NAME`` / ``output.NAME`` of its elements (typed, see
``tensors``) and ``input_shape.NAME`` / ``output_shape.NAME``; the tensor's
Triton datatype is in the column's field metadata (``datatype``). The
model, date and hour come from the path, as Hive partitioning does.
"""

from __future__ import annotations

import datetime as dt
import logging
import operator
import os
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mlserve.core.errors import InvalidArgument
from mlserve.core.names import check_name
from mlserve.monitor import tensors
from mlserve.monitor.records import Record
from mlserve.monitor.tensors import Tensor

log = logging.getLogger(__name__)

SUFFIX = ".parquet"
_TEMPORARY = ".tmp"
INPUT, OUTPUT = "input", "output"

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
_SCALARS = [name for name in META.names if name not in ("time", "truncated", "truncated_tensors")]
_SCALAR_GETTER = operator.attrgetter(*_SCALARS)


@dataclass(frozen=True)
class Partition:
    model: str
    date: str  # YYYY-MM-DD
    hour: str  # HH

    def directory(self, root: Path) -> Path:
        return root / f"model={self.model}" / f"date={self.date}" / f"hour={self.hour}"

    @staticmethod
    def of(record: Record) -> Partition:
        return Partition(record.model, record.time.strftime("%Y-%m-%d"), record.time.strftime("%H"))


def write(root: Path, records: Iterable[Record], tag: str = "") -> int:
    """Write ``records`` as one file per partition (and tensor schema); returns bytes written.

    ``tag`` goes into the file names (``part-<time>-<tag><id>``): each writing
    process has its own, so several never pick the same name.

    Raises:
        OSError: the directory cannot be written (full disk, permissions).
    """
    by_partition: defaultdict[Partition, list[Record]] = defaultdict(list)
    names: dict[str, bool] = {}
    partitions: dict[tuple[str, int], Partition] = {}
    for record in records:
        valid = names.get(record.model)
        if valid is None:
            valid = names[record.model] = valid_name(record.model)
        if not valid:
            log.error("inference log record for %r dropped: not a model name", record.model)
            continue
        # One Partition per model and hour, not one strftime per record.
        key = (record.model, int(record.time.timestamp()) // 3600)
        partition = partitions.get(key)
        if partition is None:
            partition = partitions[key] = Partition.of(record)
        by_partition[partition].append(record)
    written = 0
    for partition, rows in by_partition.items():
        directory = partition.directory(root)
        directory.mkdir(parents=True, exist_ok=True)
        for group in _compatible_groups(rows):
            written += _write_file(directory, table_of(group), tag)
    return written


def table_of(records: list[Record]) -> Any:
    """One Arrow table of records sharing tensor datatypes (see ``_compatible_groups``)."""
    # Column-wise: one attrgetter pass over the records, then one Arrow array per column.
    rows = [_SCALAR_GETTER(record) for record in records]
    scalars = list(zip(*rows, strict=True)) if rows else [()] * len(_SCALARS)
    columns: dict[str, Any] = {
        name: pa.array(values, META.field(name).type)
        for name, values in zip(_SCALARS, scalars, strict=True)
    }
    columns["time"] = pa.array([r.time for r in records], META.field("time").type)
    truncated = [_truncated_names(r) for r in records]
    columns["truncated"] = pa.array([bool(names) for names in truncated], pa.bool_())
    columns["truncated_tensors"] = pa.array(truncated, pa.list_(pa.string()))
    fields = list(META)
    arrays = [columns[name] for name in META.names]
    for (role, name), datatype in _tensor_columns(records).items():
        found = [_find(r, role, name) for r in records]
        metadata = {"datatype": datatype, "tensor": name, "role": role}
        fields.append(pa.field(f"{role}.{name}", pa.list_(tensors.storage_type(datatype)),
                               metadata=metadata))  # fmt: skip
        arrays.append(tensors.list_column(datatype, [None if t is None else t.values
                                                     for t in found]))  # fmt: skip
        fields.append(pa.field(f"{role}_shape.{name}", pa.list_(pa.int64()), metadata=metadata))
        arrays.append(tensors.shape_column([None if t is None else t.shape for t in found]))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


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


def files(directory: Path) -> Iterator[Path]:
    """The complete log files under ``directory`` (never a temporary one)."""
    if directory.is_dir():
        yield from sorted(directory.rglob(f"*{SUFFIX}"))


def sweep_temporary(root: Path) -> int:
    """Remove what a killed writer left half-written; returns how many."""
    removed = 0
    if root.is_dir():
        for leftover in root.rglob(f".*{SUFFIX}{_TEMPORARY}"):
            leftover.unlink(missing_ok=True)
            removed += 1
    return removed


def valid_name(model: str) -> bool:
    """Whether ``model`` may name a partition directory (a valid resource name)."""
    try:
        check_name(model)
    except InvalidArgument:
        return False
    return True


def _write_file(directory: Path, table: Any, tag: str) -> int:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    name = f"part-{stamp}-{tag}{uuid.uuid4().hex[:12]}{SUFFIX}"
    temporary = directory / f".{name}{_TEMPORARY}"
    try:
        pq.write_table(
            table,
            temporary,
            compression="zstd",
            # Level 1: the writer must keep up with the gateway on one core.
            compression_level=1,
            # Dictionaries and statistics pay off on the metadata (filters, repeated
            # names), not on tensor elements, which are mostly distinct.
            use_dictionary=_DICTIONARY_COLUMNS,
            write_statistics=_STATISTICS_COLUMNS,
        )
        os.replace(temporary, directory / name)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return (directory / name).stat().st_size


def _tensor_columns(records: list[Record]) -> dict[tuple[str, str], str]:
    columns: dict[tuple[str, str], str] = {}
    for record in records:
        for role, found in ((INPUT, record.inputs), (OUTPUT, record.outputs)):
            for tensor in found:
                columns.setdefault((role, tensor.name), tensor.datatype)
    return columns


def _compatible_groups(records: list[Record]) -> list[list[Record]]:
    """Split records so that in each group a tensor name has one datatype (one column type).

    Records with the same tensors (the usual case: one model, one signature) are
    grouped first, so the per-record work is one tuple.
    """
    by_signature: defaultdict[tuple[tuple[str, str, str], ...], list[Record]] = defaultdict(list)
    for record in records:
        signature = tuple((INPUT, t.name, t.datatype) for t in record.inputs) + tuple(
            (OUTPUT, t.name, t.datatype) for t in record.outputs
        )
        by_signature[signature].append(record)
    groups: list[tuple[dict[tuple[str, str], str], list[Record]]] = []
    for signature, members in by_signature.items():
        wanted = {(role, name): datatype for role, name, datatype in signature}
        for types, group in groups:
            if all(types.get(key, datatype) == datatype for key, datatype in wanted.items()):
                types.update(wanted)
                group.extend(members)
                break
        else:
            groups.append((wanted, list(members)))
    return [group for _, group in groups]


def _find(record: Record, role: str, name: str) -> Tensor | None:
    for tensor in record.inputs if role == INPUT else record.outputs:
        if tensor.name == name:
            return tensor
    return None


def _truncated_names(record: Record) -> list[str]:
    return [
        f"{role}.{t.name}"
        for role, found in ((INPUT, record.inputs), (OUTPUT, record.outputs))
        for t in found
        if t.truncated
    ]


def partition_hour(path: Path) -> dt.datetime | None:
    """The UTC hour a file's partition stands for, from its path."""
    try:
        date = path.parent.parent.name.removeprefix("date=")
        hour = path.parent.name.removeprefix("hour=")
        return dt.datetime.strptime(f"{date} {hour}", "%Y-%m-%d %H").replace(tzinfo=dt.timezone.utc)
    except ValueError:
        return None
