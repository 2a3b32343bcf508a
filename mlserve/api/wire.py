"""Reading a request's routing fields straight from its wire bytes.

The gateway forwards inference requests as the bytes it received, so tensor
data is never parsed or re-serialised. Every request it routes (ModelInfer,
ModelReady, ModelMetadata, ModelConfig, ModelStatistics) carries the model
name in field 1 and the version in field 2, both strings; this scanner reads
those two and skips every other field without copying it.
"""

from __future__ import annotations

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


def model_name_and_version(data: bytes) -> tuple[str, str]:
    """Fields 1 and 2 of a serialized request, as strings ("" when absent)."""
    name = version = ""
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
            if field == 1:
                name = data[position:stop].decode()
            elif field == 2:
                version = data[position:stop].decode()
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
    return name, version
