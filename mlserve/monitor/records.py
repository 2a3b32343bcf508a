"""What the log holds: a call as the gateway captured it (raw bytes, on the
hot path) and as the writer decoded it (a ``Record``, one row of Parquet)."""

from __future__ import annotations

import datetime as dt
import operator
import os
from collections import deque
from dataclasses import dataclass, field, replace
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
_PARSED_BELOW = 64 * 1024  # bytes: a metadata record's request parsed, not scanned
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
    request_size: int | None = None
    """Bytes of the request as received, when ``request`` holds only what is kept of it."""
    response_size: int | None = None
    """Likewise for ``response``."""

    def trimmed(self) -> Capture:
        """This capture holding only what its policy records: a large request's or
        response's bytes are let go at once when no tensor of them is kept.

        The gateway's buffers are then freed when the call ends instead of waiting
        for the writer (up to a flush interval: hundreds of MiB at a few calls a
        second of 4 MiB tensors, which the allocator then maps afresh).
        """
        policy = self.policy
        request, response = self.request, self.response
        keep_request = (
            policy.mode.inputs
            or (bool(policy.sampling_key) and not policy.header_key)
            or len(request) <= _PARSED_BELOW
        )
        keep_response = (
            policy.mode.outputs or self.status == STREAMED or response is None
            or len(response) <= _PARSED_BELOW
        )  # fmt: skip
        if keep_request and keep_response:
            return self
        return replace(
            self,
            request=request if keep_request else _id_only(_request_id(request)),
            response=response if keep_response else b"",
            request_size=len(request),
            response_size=None if response is None else len(response),
        )


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


INPUT, OUTPUT = "input", "output"

Entry = tuple[str, str, str, tuple[int, ...], Any, int, bool]
"""One tensor of a row: (role, name, datatype, shape, chunk, elements, truncated), the
chunk as ``tensors.TensorColumn.add`` takes it."""

Scalars = tuple[Any, ...]
"""A row's metadata in the order of ``SCALARS``."""

SCALARS = (
    "id", "version", "deployment", "server", "caller", "caller_kind", "app", "status",
    "message", "latency_ms", "request_id", "request_bytes", "response_bytes", "source",
    "input_json", "output_json",
)  # fmt: skip
_SCALAR_GETTER = operator.attrgetter(*SCALARS)


@dataclass(frozen=True, slots=True)
class Row:
    """One record as the writer lays it into columns."""

    model: str
    micros: int  # microseconds since the epoch, UTC
    scalars: Scalars
    tensors: list[Entry]


def row_of(capture: Capture) -> Row | None:
    """The row of a captured call, or None when a sampling key leaves it out.

    Each message is parsed once; the raw tensor payloads go into the row as the
    bytes that crossed (cut to the policy's cap), never as per-record arrays.
    """
    policy = capture.policy
    keyed = bool(policy.sampling_key) and not policy.header_key
    # Metadata alone needs only the request's id. Parsing copies every tensor (8 MiB
    # for two 4 MiB inputs), so a large request's id is read from its bytes instead;
    # a small one parses faster (in C) than Python scans it.
    parse = policy.mode.inputs or keyed or len(capture.request) <= _PARSED_BELOW
    request: Any = _parse(service_pb2.ModelInferRequest, capture.request) if parse else None
    if keyed and not _key_sampled(policy, request):
        return None
    request_id = request.id if request is not None else _request_id(capture.request)
    status, message = capture.status, capture.message
    response: Any = None
    if status == STREAMED:
        streamed: Any = _parse(service_pb2.ModelStreamInferResponse, capture.response)
        failed = streamed is None or bool(streamed.error_message)
        status = STREAM_ERROR if failed else "OK"
        message = "" if streamed is None else streamed.error_message
        response = None if failed else streamed.infer_response
        response_size = 0 if response is None else response.ByteSize()
    else:
        response_size = len(capture.response or b"")
        if policy.mode.outputs:
            response = _parse(service_pb2.ModelInferResponse, capture.response)
    entries: list[Entry] = []
    notes: list[str] = []
    cap = policy.max_payload_bytes
    if policy.mode.inputs and request is not None:
        _entries(INPUT, request.inputs, request.raw_input_contents, cap, entries, notes)
    if policy.mode.outputs and response is not None:
        _entries(OUTPUT, response.outputs, response.raw_output_contents, cap, entries, notes)
    if notes:
        message = "; ".join(filter(None, [message, *notes]))
    caller, kind, app = caller_of(capture.principal)
    scalars = (
        new_id(), capture.version, capture.model, capture.server, caller, kind, app, status,
        message, capture.latency * 1000, request_id,
        len(capture.request) if capture.request_size is None else capture.request_size,
        response_size if capture.response_size is None else capture.response_size,
        GATEWAY, "", "",
    )  # fmt: skip
    return Row(capture.model, round(capture.time * 1_000_000), scalars, entries)


def row_of_record(record: Record) -> Row:
    """The row of a decoded record (one recorded from outside, or read back)."""
    entries: list[Entry] = []
    for role, found in ((INPUT, record.inputs), (OUTPUT, record.outputs)):
        for tensor in found:
            chunk, length = tensors.chunk_of(tensor.datatype, tensor.values)
            entries.append((role, tensor.name, tensor.datatype, tensor.shape, chunk, length,
                            tensor.truncated))  # fmt: skip
    micros = (record.time - _EPOCH) // dt.timedelta(microseconds=1)
    return Row(record.model, micros, _SCALAR_GETTER(record), entries)


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def _entries(
    role: str, declared: Any, raws: Any, cap: int, entries: list[Entry], notes: list[str]
) -> None:
    count = len(raws)
    for position, tensor in enumerate(declared):
        datatype = tensor.datatype
        # The usual tensor, raw and within the cap: its bytes are the chunk as they are.
        itemsize = tensors.AS_STORED.get(datatype)
        if itemsize is not None and position < count:
            raw = raws[position]
            size = len(raw)
            if size <= cap and not size % itemsize:
                entries.append((role, tensor.name, datatype, tuple(tensor.shape[:]), raw,
                                size // itemsize, False))  # fmt: skip
                continue
        if not tensors.known(datatype):
            notes.append(f"tensor {tensor.name!r} not logged: datatype {datatype!r}")
            continue
        try:
            if position < count:
                chunk, length, cut = tensors.raw_chunk(datatype, raws[position], cap)
            else:
                values = tensors.from_contents(datatype, tensor.contents)
                values, cut = tensors.truncate(datatype, values, cap)
                chunk, length = tensors.chunk_of(datatype, values)
        except Exception as error:  # a malformed tensor Triton will refuse too
            notes.append(f"tensor {tensor.name!r} not logged: {error}")
            continue
        # shape[:] first: a list converts to a tuple faster than upb's repeated field.
        entries.append((role, tensor.name, datatype, tuple(tensor.shape[:]), chunk, length, cut))


def _parse(kind: Any, data: bytes | None) -> Any:
    if data is None:
        return None
    try:
        return kind.FromString(data)
    except DecodeError:
        return None


def _id_only(request_id: str) -> bytes:
    """A ModelInferRequest carrying only ``request_id``: what metadata keeps of a request."""
    return bytes(service_pb2.ModelInferRequest(id=request_id).SerializeToString())


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
