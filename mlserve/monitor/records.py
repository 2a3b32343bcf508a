"""What the log holds: a call as the gateway captured it (raw bytes, on the
hot path) and as the writer decoded it (a ``Record``, one row of Parquet)."""

from __future__ import annotations

import datetime as dt
import os
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError
from tritonclient.grpc import service_pb2

from mlserve.access.rules import Principal
from mlserve.gateway import wire
from mlserve.monitor import tensors
from mlserve.monitor.policy import LoggingPolicy
from mlserve.monitor.tensors import Tensor

GATEWAY, RECORDED = "gateway", "recorded"
STREAMED = "STREAM"  # a capture's status while its response is a ModelStreamInferResponse
STREAM_ERROR = "STREAM_ERROR"  # a stream answer carrying error_message (no status code)
_REQUEST_ID_FIELD = service_pb2.ModelInferRequest.DESCRIPTOR.fields_by_name["id"].number


_IDS_PER_DRAW = 1024
_ids: deque[str] = deque()


def new_id() -> str:
    """A random (version 4) UUID as 32 hex digits, as ``uuid.uuid4().hex`` gives.

    Drawn 1,024 at a time: ``uuid4`` makes one ``urandom`` system call per id,
    about 9 µs on this VM, a sixth of the writer's whole per-record budget. The
    deque is shared by the event loop (RecordInference) and the writer thread;
    ``popleft`` and ``extend`` are atomic, so a race at worst draws twice.
    """
    while True:
        try:
            return _ids.popleft()
        except IndexError:
            _ids.extend(_uuid4_hexes(_IDS_PER_DRAW))


def _uuid4_hexes(count: int) -> list[str]:
    octets = np.frombuffer(os.urandom(16 * count), dtype=np.uint8).reshape(count, 16).copy()
    octets[:, 6] = (octets[:, 6] & 0x0F) | 0x40  # version 4
    octets[:, 8] = (octets[:, 8] & 0x3F) | 0x80  # RFC 4122 variant
    text = octets.tobytes().hex()
    return [text[start : start + 32] for start in range(0, 32 * count, 32)]


@dataclass(frozen=True, slots=True)
class Capture:
    """One gateway call, as it crossed: the bytes are the ones forwarded, never copied."""

    time: float  # time.time() when the call arrived
    model: str
    version: int
    server: str
    principal: Principal | None
    policy: LoggingPolicy
    request: bytes
    response: bytes | None
    status: str  # a status code name
    message: str
    latency: float  # seconds


@dataclass(slots=True)
class Record:
    """One recorded call, decoded: a row of the log."""

    time: dt.datetime  # UTC, aware
    model: str
    version: int
    deployment: str
    server: str = ""
    caller: str = ""
    caller_kind: str = "anonymous"
    app: str = ""
    status: str = "OK"
    message: str = ""
    latency_ms: float = 0.0
    request_id: str = ""
    request_bytes: int = 0
    response_bytes: int = 0
    source: str = GATEWAY
    inputs: list[Tensor] = field(default_factory=list)
    outputs: list[Tensor] = field(default_factory=list)
    input_json: str = ""
    output_json: str = ""
    id: str = field(default_factory=new_id)

    @property
    def truncated(self) -> bool:
        return any(t.truncated for t in (*self.inputs, *self.outputs))


def caller_of(principal: Principal | None) -> tuple[str, str, str]:
    """(caller, caller_kind, app) of a principal."""
    if principal is None:
        return "", "anonymous", ""
    if principal.is_consumer:
        return principal.name, "consumer", principal.app
    return principal.name, "user", ""


def decode(capture: Capture) -> Record | None:
    """The record of a captured call, or None when a sampling key leaves it out."""
    policy = capture.policy
    keyed = bool(policy.sampling_key) and not policy.header_key
    # Metadata alone needs only the request's id: read from the bytes, not parsed
    # (parsing copies every tensor: 8 MiB for a call with two 4 MiB inputs).
    request: Any = (
        _parse(service_pb2.ModelInferRequest, capture.request)
        if policy.mode.inputs or keyed
        else None
    )
    if keyed and not _key_sampled(policy, request):
        return None
    request_id = request.id if request is not None else _request_id(capture.request)
    response_bytes = capture.response
    status, message = capture.status, capture.message
    if status == STREAMED:
        streamed: Any = _parse(service_pb2.ModelStreamInferResponse, capture.response)
        failed = streamed is None or bool(streamed.error_message)
        status = STREAM_ERROR if failed else "OK"
        message = "" if streamed is None else streamed.error_message
        response_bytes = None if failed else streamed.infer_response.SerializeToString()
    caller, kind, app = caller_of(capture.principal)
    record = Record(
        time=dt.datetime.fromtimestamp(capture.time, dt.timezone.utc),
        model=capture.model,
        version=capture.version,
        deployment=capture.model,
        server=capture.server,
        caller=caller,
        caller_kind=kind,
        app=app,
        status=status,
        message=message,
        latency_ms=capture.latency * 1000,
        request_id=request_id,
        request_bytes=len(capture.request),
        response_bytes=len(response_bytes or b""),
    )
    notes: list[str] = []
    if policy.mode.inputs and request is not None:
        record.inputs = _tensors(
            request.inputs, request.raw_input_contents, policy.max_payload_bytes, notes
        )
    if policy.mode.outputs and response_bytes is not None:
        response: Any = _parse(service_pb2.ModelInferResponse, response_bytes)
        if response is not None:
            record.outputs = _tensors(
                response.outputs, response.raw_output_contents, policy.max_payload_bytes, notes
            )
    if notes:
        record.message = "; ".join(filter(None, [record.message, *notes]))
    return record


def _tensors(declared: Any, raws: Any, cap: int, notes: list[str]) -> list[Tensor]:
    decoded: list[Tensor] = []
    count = len(raws)
    for position, tensor in enumerate(declared):
        datatype = tensor.datatype
        if not tensors.known(datatype):
            notes.append(f"tensor {tensor.name!r} not logged: datatype {datatype!r}")
            continue
        try:
            if position < count:
                raw = raws[position]
                values = tensors.from_raw(datatype, raw)
                # A raw payload within the cap keeps every element: no need to count.
                cut = False
                if len(raw) > cap:
                    values, cut = tensors.truncate(datatype, values, cap)
            else:
                values = tensors.from_contents(datatype, tensor.contents)
                values, cut = tensors.truncate(datatype, values, cap)
        except Exception as error:  # a malformed tensor Triton will refuse too
            notes.append(f"tensor {tensor.name!r} not logged: {error}")
            continue
        # shape[:] first: a list converts to a tuple faster than upb's repeated field.
        decoded.append(Tensor(tensor.name, datatype, tuple(tensor.shape[:]), values, cut))
    return decoded


def _parse(kind: Any, data: bytes | None) -> Any:
    if data is None:
        return None
    try:
        return kind.FromString(data)
    except DecodeError:
        return None


def _request_id(data: bytes) -> str:
    """ModelInferRequest.id (field 3) straight from the bytes; "" when they are not a message."""
    try:
        return wire.string_field(data, _REQUEST_ID_FIELD)
    except (wire.WireError, UnicodeDecodeError):
        return ""


def _key_sampled(policy: LoggingPolicy, request: Any) -> bool:
    if request is None or policy.sampling_key not in request.parameters:
        return policy.samples()
    parameter = request.parameters[policy.sampling_key]
    choice = parameter.WhichOneof("parameter_choice")
    return policy.samples_key(str(getattr(parameter, choice)) if choice else "")
