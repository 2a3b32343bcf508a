"""Reading a request's routing fields straight from its wire bytes.

The gateway forwards inference requests as the bytes it received, so tensor
data is never parsed or re-serialised. Every request it routes (ModelInfer,
ModelReady, ModelMetadata, ModelConfig, ModelStatistics) carries the model
name in field 1 and the version in field 2, both strings; this scanner reads
those two and skips every other field without copying it.
"""

from __future__ import annotations

from typing import Any

_LENGTH_DELIMITED = 2
_VARINT = 0
_FIXED64 = 1
_FIXED32 = 5


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def _varint(data: bytes, position: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if position >= len(data) or shift > 63:
            raise WireError("truncated varint")
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, position
        shift += 7


def _spans(data: bytes, wanted: tuple[int, ...]) -> dict[int, tuple[int, int]]:
    """Where the length-delimited top-level fields numbered ``wanted`` lie in ``data``."""
    spans: dict[int, tuple[int, int]] = {}
    position = 0
    end = len(data)
    while position < end:
        key, position = _varint(data, position)
        field, wire_type = key >> 3, key & 7
        if wire_type == _LENGTH_DELIMITED:
            length, position = _varint(data, position)
            stop = position + length
            if stop > end:
                raise WireError("truncated field")
            if field in wanted:
                spans[field] = (position, stop)
            position = stop
        elif wire_type == _VARINT:
            _, position = _varint(data, position)
        elif wire_type == _FIXED64:
            position += 8
        elif wire_type == _FIXED32:
            position += 4
        else:
            raise WireError(f"unsupported wire type {wire_type}")
    if position != end:
        raise WireError("truncated message")
    return spans


def model_name_and_version(data: bytes) -> tuple[str, str]:
    """Fields 1 and 2 of a serialized request, as strings ("" when absent)."""
    spans = _spans(data, (1, 2))
    name = data[slice(*spans[1])].decode() if 1 in spans else ""
    version = data[slice(*spans[2])].decode() if 2 in spans else ""
    return name, version


def string_field(data: bytes, number: int) -> str:
    """Top-level string field ``number`` of a serialized message ("" when absent)."""
    span = _spans(data, (number,)).get(number)
    return "" if span is None else data[slice(*span)].decode()


def with_version(data: bytes, version: int) -> bytes:
    """A serialized request ``data`` naming ``version`` in field 2 (its version).

    Protobuf keeps the last value of a repeated scalar field, so appending the
    field overrides whatever ``data`` named: nothing is parsed or copied apart.
    """
    text = str(version).encode()
    return data + bytes([2 << 3 | _LENGTH_DELIMITED, len(text)]) + text


def stream_response_failed(data: bytes) -> bool:
    """True when a ModelStreamInferResponse carries an error_message (field 1)."""
    start, stop = _spans(data, (1,)).get(1, (0, 0))
    return stop > start


def encode(message: Any) -> bytes:
    """A tritonclient message's bytes (its messages are untyped: the Any stays here)."""
    return bytes(message.SerializeToString())
