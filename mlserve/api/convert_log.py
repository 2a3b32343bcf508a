"""The inference log's domain types to protos and back; nothing else."""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np

from mlserve.api.convert import enum_name, enum_value, timestamp
from mlserve.core.errors import InvalidArgument
from mlserve.monitor import tensors
from mlserve.monitor.policy import DEFAULT, LoggingPolicy, mode_named
from mlserve.monitor.records import Record
from mlserve.monitor.tensors import Tensor
from mlserve_api.v1 import inference_log_pb2

_MODE = (inference_log_pb2.LoggingMode.DESCRIPTOR, "LOGGING_MODE_")
# Triton datatype -> the typed field of a Tensor message holding its elements.
_FIELDS = {
    "BOOL": "bool_contents",
    **dict.fromkeys(("INT8", "INT16", "INT32", "INT64"), "int_contents"),
    **dict.fromkeys(("UINT8", "UINT16", "UINT32", "UINT64"), "uint_contents"),
    **dict.fromkeys(("FP16", "BF16", "FP32", "FP64"), "fp_contents"),
    "BYTES": "bytes_contents",
}


def logging_policy(message: inference_log_pb2.LoggingPolicy) -> LoggingPolicy:
    """A policy as sent; ``checked()`` (in the domain) refuses what is out of range."""
    mode = enum_name(*_MODE, message.mode)
    return LoggingPolicy(
        mode_named(mode) if mode else DEFAULT.mode,
        message.sample_rate if message.HasField("sample_rate") else DEFAULT.sample_rate,
        message.sampling_key,
        message.max_payload_bytes,
    )


def logging_policy_message(
    deployment: str, policy: LoggingPolicy, dropped: int
) -> inference_log_pb2.LoggingPolicy:
    return inference_log_pb2.LoggingPolicy(
        deployment=deployment,
        mode=enum_value(*_MODE, policy.mode.value),  # type: ignore[arg-type]
        sample_rate=policy.sample_rate,
        sampling_key=policy.sampling_key,
        max_payload_bytes=policy.max_payload_bytes,
        dropped=dropped,
    )


def time_of(message: Any, present: bool) -> dt.datetime | None:
    if not present:
        return None
    return message.ToDatetime(tzinfo=dt.timezone.utc)  # type: ignore[no-any-return]


def tensor(message: inference_log_pb2.Tensor, where: str) -> Tensor:
    """A tensor sent to RecordInference, in the log's storage form."""
    if not tensors.known(message.datatype):
        raise InvalidArgument(
            f"{where}.datatype {message.datatype!r} is not a Triton datatype: use one of "
            f"{', '.join(tensors.DATATYPES)}"
        )
    elements = list(getattr(message, _FIELDS[message.datatype]))
    if any(dim < 0 for dim in message.shape):
        raise InvalidArgument(f"{where}.shape must not have negative dimensions")
    expected = int(np.prod(message.shape)) if message.shape else len(elements)
    if expected != len(elements):
        raise InvalidArgument(
            f"{where} has {len(elements)} elements in {_FIELDS[message.datatype]}; its shape "
            f"{list(message.shape)} needs {expected}"
        )
    if message.datatype == "BYTES":
        values: Any = [bytes(v) for v in elements]
    else:
        dtype = tensors.storage_type(message.datatype).to_pandas_dtype()
        try:
            values = np.asarray(elements, dtype=dtype)
        except OverflowError:
            raise InvalidArgument(f"{where} has elements outside {message.datatype}") from None
    return Tensor(message.name, message.datatype, tuple(message.shape) or (len(elements),), values)


def tensor_message(value: Tensor) -> inference_log_pb2.Tensor:
    message = inference_log_pb2.Tensor(
        name=value.name, datatype=value.datatype, shape=value.shape, truncated=value.truncated
    )
    elements = value.values if value.datatype == "BYTES" else np.asarray(value.values).tolist()
    getattr(message, _FIELDS[value.datatype]).extend(elements)
    return message


def record_message(record: Record) -> inference_log_pb2.InferenceRecord:
    return inference_log_pb2.InferenceRecord(
        id=record.id,
        time=timestamp(record.time),
        model=record.model,
        version=record.version,
        deployment=record.deployment,
        server=record.server,
        caller=record.caller,
        caller_kind=record.caller_kind,
        app=record.app,
        status=record.status,
        message=record.message,
        latency_ms=record.latency_ms,
        request_id=record.request_id,
        request_bytes=record.request_bytes,
        response_bytes=record.response_bytes,
        source=record.source,
        truncated=record.truncated,
        inputs=[tensor_message(t) for t in record.inputs],
        outputs=[tensor_message(t) for t in record.outputs],
        input_json=record.input_json,
        output_json=record.output_json,
    )
