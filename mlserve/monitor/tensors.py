"""Triton tensors as the log keeps them: decoded from a call's wire bytes, as
Arrow columns in Parquet, and back.

Every Triton datatype has one Arrow storage type (``STORAGE``): integers and
BOOL as themselves, FP32/FP64 as themselves, FP16 and BF16 widened to float32
(exact, and readable by every engine; the datatype in the column's metadata
says what to narrow back to), BYTES as binary. A tensor arrives either as raw
bytes (``raw_input_contents``) or typed (``InferTensorContents``); both decode
to the same array.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
import pyarrow as pa

from mlserve.core.errors import InvalidArgument

# datatype -> (numpy dtype of its raw bytes, Arrow storage type, InferTensorContents field)
_TYPES: dict[str, tuple[str, Any, str]] = {
    "BOOL": ("bool", pa.bool_(), "bool_contents"),
    "INT8": ("<i1", pa.int8(), "int_contents"),
    "INT16": ("<i2", pa.int16(), "int_contents"),
    "INT32": ("<i4", pa.int32(), "int_contents"),
    "INT64": ("<i8", pa.int64(), "int64_contents"),
    "UINT8": ("<u1", pa.uint8(), "uint_contents"),
    "UINT16": ("<u2", pa.uint16(), "uint_contents"),
    "UINT32": ("<u4", pa.uint32(), "uint_contents"),
    "UINT64": ("<u8", pa.uint64(), "uint64_contents"),
    "FP16": ("<f2", pa.float32(), ""),
    "BF16": ("<u2", pa.float32(), ""),
    "FP32": ("<f4", pa.float32(), "fp32_contents"),
    "FP64": ("<f8", pa.float64(), "fp64_contents"),
    "BYTES": ("", pa.binary(), "bytes_contents"),
}
DATATYPES = tuple(_TYPES)
_ITEMSIZE = {name: np.dtype(raw).itemsize for name, (raw, _, _) in _TYPES.items() if raw}
_STORAGE_ITEMSIZE = {
    name: np.dtype(arrow.to_pandas_dtype()).itemsize
    for name, (raw, arrow, _) in _TYPES.items()
    if raw
}


@dataclass(frozen=True, slots=True)
class Tensor:
    """One input or output: flattened elements in their storage form."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    values: Any  # numpy array in the storage dtype, or list[bytes] for BYTES
    truncated: bool = False

    def raw(self) -> bytes:
        """The tensor's elements as Triton's raw bytes (its binary tensor format)."""
        return to_raw(self.datatype, self.values)


def storage_type(datatype: str) -> Any:
    return _TYPES[datatype][1]


def known(datatype: str) -> bool:
    return datatype in _TYPES


def from_raw(datatype: str, raw: bytes) -> Any:
    """Decode Triton raw bytes to the storage form of ``datatype``."""
    if datatype == "BYTES":
        return _split_bytes(raw)
    dtype, _, _ = _TYPES[datatype]
    array = np.frombuffer(raw, dtype=dtype)
    if datatype == "FP16":
        return array.astype(np.float32)
    if datatype == "BF16":
        # bfloat16 is the upper half of a float32.
        return (array.astype(np.uint32) << 16).view(np.float32)
    return array


def from_contents(datatype: str, contents: Any) -> Any:
    """Decode a typed ``InferTensorContents`` to the storage form of ``datatype``."""
    _, arrow_type, field = _TYPES[datatype]
    if not field:
        raise InvalidArgument(f"{datatype} tensors travel as raw bytes only")
    values = getattr(contents, field)
    if datatype == "BYTES":
        return [bytes(v) for v in values]
    return np.asarray(values, dtype=arrow_type.to_pandas_dtype())


def to_raw(datatype: str, values: Any) -> bytes:
    """The inverse of ``from_raw``."""
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(v)) + bytes(v) for v in values)
    if datatype == "BF16":
        bits = np.asarray(values, dtype="<f4").view(np.uint32) >> 16
        return bits.astype("<u2").tobytes()
    return np.asarray(values, dtype=_TYPES[datatype][0]).tobytes()


def truncate(datatype: str, values: Any, max_bytes: int) -> tuple[Any, bool]:
    """The leading elements of ``values`` that fit ``max_bytes`` of raw payload, and
    whether any were cut."""
    if datatype == "BYTES":
        kept: list[bytes] = []
        total = 0
        for value in values:
            total += 4 + len(value)
            if total > max_bytes:
                return kept, True
            kept.append(value)
        return kept, False
    limit = max_bytes // _ITEMSIZE[datatype]
    if len(values) <= limit:
        return values, False
    return values[:limit], True


class TensorColumn:
    """One tensor's column of a batch, filled row by row and built in bulk.

    A row adds its elements as one chunk: bytes in the storage layout (a raw
    payload is one, as it crossed the wire) or, for BYTES, a list of elements.
    Fixed-width chunks are appended to one values buffer at once, so the chunk
    itself is freed straight away; ``arrays`` makes the list column from that
    buffer and the rows' offsets with NumPy: a few Arrow calls per batch, not
    per record. Rows that never added a chunk are null.

    The buffer comes from Arrow's memory pool, which keeps freed pages: a batch's
    payload held as separate bytes objects (or joined into a fresh one) is mapped
    anew each flush, and on this VM touching new pages costs more than the copy.
    """

    __slots__ = (
        "_buffer", "_elements", "_lengths", "_rows", "_shapes", "_used", "_view", "datatype",
    )  # fmt: skip

    def __init__(self, datatype: str) -> None:
        self.datatype = datatype
        self._buffer: Any = None  # fixed-width: a resizable buffer of Arrow's pool
        self._view = memoryview(b"")
        self._used = 0
        self._elements: list[bytes] = []  # BYTES
        self._lengths: list[int] = []
        self._rows: list[int] = []
        self._shapes: list[tuple[int, ...]] = []

    def add(self, row: int, shape: tuple[int, ...], chunk: Any, length: int) -> None:
        """Row ``row``'s ``length`` elements (``chunk``) and the tensor's shape."""
        self._rows.append(row)
        self._shapes.append(shape)
        self._lengths.append(length)
        if self.datatype == "BYTES":
            self._elements.extend(chunk)
            return
        used = self._used
        end = used + len(chunk)
        if end > len(self._view):
            self._grow(end)
        self._view[used:end] = chunk
        self._used = end

    def _grow(self, needed: int) -> None:
        self._view.release()
        if self._buffer is None:
            self._buffer = pa.allocate_buffer(max(needed, 1 << 16), resizable=True)
        else:
            self._buffer.resize(max(needed, 2 * self._buffer.size))
        self._view = memoryview(self._buffer).cast("B")

    def arrays(self, rows: int) -> tuple[Any, Any]:
        """The list column of the elements and the list<int64> column of the shapes."""
        arrow_type = storage_type(self.datatype)
        if self.datatype == "BYTES":
            values = pa.array(self._elements, type=arrow_type)
        else:
            self._view.release()
            buffer = pa.py_buffer(b"") if self._buffer is None else self._buffer
            buffer = buffer.slice(0, self._used)
            if self.datatype == "BOOL":  # bit-packed in Arrow
                values = pa.array(np.frombuffer(buffer, dtype=np.bool_), type=arrow_type)
            else:
                values = pa.Array.from_buffers(arrow_type, sum(self._lengths), [None, buffer])
        mask = None
        if len(self._rows) != rows:
            missing = np.ones(rows, dtype=np.bool_)
            missing[self._rows] = False
            mask = pa.array(missing)
        elements = pa.ListArray.from_arrays(_offsets(rows, self._rows, self._lengths), values,
                                            mask=mask)  # fmt: skip
        dims = pa.array(list(chain.from_iterable(self._shapes)), type=pa.int64())
        shape_lengths = [len(shape) for shape in self._shapes]
        shapes = pa.ListArray.from_arrays(_offsets(rows, self._rows, shape_lengths), dims,
                                          mask=mask)  # fmt: skip
        return elements, shapes


def _offsets(rows: int, present: list[int], lengths: list[int]) -> Any:
    per_row = np.zeros(rows, dtype=np.int64)
    per_row[present] = lengths
    offsets = np.zeros(rows + 1, dtype=np.int64)
    np.cumsum(per_row, out=offsets[1:])
    if offsets[-1] > _MAX_OFFSET:
        raise ValueError("a batch's tensor column holds more than 2**31 - 1 elements")
    return pa.array(offsets.astype(np.int32))


_MAX_OFFSET = 2**31 - 1


def chunk_of(datatype: str, values: Any) -> tuple[Any, int]:
    """A tensor's values in the storage form as a ``TensorColumn`` chunk, and its length.

    Values not already in the storage dtype are cast by Arrow, which refuses a
    lossy cast.
    """
    if datatype == "BYTES":
        return list(values), len(values)
    dtype = np.dtype(storage_type(datatype).to_pandas_dtype())
    if not (isinstance(values, np.ndarray) and values.dtype == dtype):
        values = pa.array(np.asarray(values), type=storage_type(datatype)).to_numpy(
            zero_copy_only=False
        )
    return np.ascontiguousarray(values).tobytes(), len(values)


def raw_chunk(datatype: str, raw: bytes, max_bytes: int) -> tuple[Any, int, bool]:
    """A raw payload as a ``TensorColumn`` chunk: (chunk, elements, truncated).

    For the common datatypes the raw bytes are the storage layout and are kept
    as they are; only the leading ``max_bytes`` are kept of a longer payload.
    """
    if datatype == "BYTES":
        elements, cut = truncate(datatype, _split_bytes(raw), max_bytes)
        return elements, len(elements), cut
    itemsize = _ITEMSIZE[datatype]
    size = len(raw)
    if size % itemsize:
        raise InvalidArgument(
            f"{size} bytes of raw contents are not a whole number of {datatype} elements"
        )
    cut = size > max_bytes
    if cut:
        raw = raw[: max_bytes // itemsize * itemsize]
    if datatype in _WIDENED:
        raw = from_raw(datatype, raw).tobytes()
    return raw, len(raw) // _STORAGE_ITEMSIZE[datatype], cut


_WIDENED = ("FP16", "BF16")
AS_STORED = {name: size for name, size in _ITEMSIZE.items() if name not in _WIDENED}
"""Datatype -> element size, for the datatypes whose raw bytes are their storage layout."""


def values_of(datatype: str, cell: Any) -> Any:
    """A list cell read back from Arrow, in the storage form (None stays None)."""
    if not cell.is_valid:
        return None
    if datatype == "BYTES":
        return [bytes(v) for v in cell.values.to_pylist()]
    return cell.values.to_numpy(zero_copy_only=False)


def _split_bytes(raw: bytes) -> list[bytes]:
    """Triton's BYTES raw format: each element a little-endian uint32 length, then the bytes."""
    elements: list[bytes] = []
    position = 0
    view = memoryview(raw)
    while position < len(raw):
        if position + 4 > len(raw):
            raise InvalidArgument("a BYTES tensor's raw contents end inside a length prefix")
        (length,) = struct.unpack_from("<I", raw, position)
        position += 4
        if position + length > len(raw):
            raise InvalidArgument("a BYTES tensor's raw contents end inside an element")
        elements.append(bytes(view[position : position + length]))
        position += length
    return elements
