"""A gRPC channel to MLServe that sends the API key (or OIDC token) on every call."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc

from mlserve_client.errors import MissingKeyError

DEFAULT_ADDRESS = "127.0.0.1:50051"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
KEY_FILE = "admin.key"

StrPath: TypeAlias = "str | os.PathLike[str]"
"""A file system path as the caller has it: ``"cert.pem"`` or ``Path("cert.pem")``."""

_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]


def default_address() -> str:
    """$MLSERVE_ADDRESS, else 127.0.0.1:50051: where ``mlserve serve`` listens by default."""
    return os.environ.get("MLSERVE_ADDRESS", DEFAULT_ADDRESS)


def default_home() -> Path:
    """$MLSERVE_HOME, else ~/.mlserve: where ``mlserve serve`` writes admin.key."""
    return Path(os.environ.get("MLSERVE_HOME", "~/.mlserve")).expanduser()


def read_admin_key(home: StrPath) -> str:
    """The admin key that the server wrote into its state directory."""
    path = Path(home).expanduser() / KEY_FILE
    try:
        key = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise MissingKeyError(
            f"no key given and {path} does not exist; pass the key (--key) or point "
            "MLSERVE_HOME (--home) at the server's state directory"
        ) from None
    if not key:
        raise MissingKeyError(f"{path} is empty")
    return key


def open_channel(address: str, key: str, ca: StrPath | None = None) -> grpc.Channel:
    """A channel to ``address`` (TLS when ``ca`` is given) adding the bearer key to each call."""
    if ca is None:
        channel = grpc.insecure_channel(address, options=_CHANNEL_OPTIONS)
    else:
        certificate = Path(ca).expanduser().read_bytes()
        credentials = grpc.ssl_channel_credentials(root_certificates=certificate)
        channel = grpc.secure_channel(address, credentials, options=_CHANNEL_OPTIONS)
    return grpc.intercept_channel(
        channel, BearerKeyInterceptor(key), TlsMismatchInterceptor(address, ca)
    )


def tls_mismatch_hint(address: str, ca: StrPath | None) -> str:
    """Why a call to ``address`` may be UNAVAILABLE: TLS on one side only; else "".

    gRPC reports both mismatches as a closed socket, so this asks the port itself:
    it tries one TLS handshake (the certificate is not checked; nothing is sent).
    """
    speaks_tls = _speaks_tls(address)
    if speaks_tls and ca is None:
        return (
            "the server speaks TLS: pass --ca (ca= in Python) with the CA certificate "
            "that signed its own"
        )
    if speaks_tls is False and ca is not None:
        return "the server speaks plaintext, not TLS: leave out --ca (ca= in Python)"
    return ""


def _speaks_tls(address: str, timeout: float = 3.0) -> bool | None:
    """True or False as a TLS handshake with ``address`` works; None when nothing answers."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    probe = ssl.create_default_context()
    probe.check_hostname = False
    probe.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as connection:
            try:
                with probe.wrap_socket(connection, server_hostname=host):
                    return True
            except (ssl.SSLError, OSError):
                return False
    except (OSError, ValueError):
        return None


class TlsMismatchInterceptor(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[type-arg]
):
    """Adds to a call's UNAVAILABLE error that TLS is on at one end only, when it is.

    Only calls that have finished when the interceptor sees them (blocking calls: every
    call ``Client`` makes) are explained; a ``.future()`` is not waited for here.
    """

    def __init__(self, address: str, ca: StrPath | None) -> None:
        self._address = address
        self._ca = ca

    def _explained(self, outcome: Any) -> Any:
        if not (isinstance(outcome, grpc.RpcError) and isinstance(outcome, grpc.Call)):
            return outcome
        if outcome.code() != grpc.StatusCode.UNAVAILABLE:
            return outcome
        hint = tls_mismatch_hint(self._address, self._ca)
        return TlsMismatchError(outcome, hint) if hint else outcome

    def intercept_unary_unary(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.ClientCallDetails,
        request: Any,
    ) -> Any:
        return self._explained(continuation(client_call_details, request))

    def intercept_stream_unary(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.ClientCallDetails,
        request_iterator: Iterator[Any],
    ) -> Any:
        return self._explained(continuation(client_call_details, request_iterator))


if TYPE_CHECKING:
    _Future = grpc.Future[Any]
else:
    _Future = grpc.Future  # not subscriptable at run time


class TlsMismatchError(grpc.RpcError, grpc.Call, _Future):
    """UNAVAILABLE from a call where TLS is on at one end only; ``details()`` ends with
    the hint in parentheses. Everything else is the original error's."""

    def __init__(self, error: Any, hint: str) -> None:
        super().__init__()
        self._error = error
        self._details = f"{error.details()} ({hint})"

    def code(self) -> grpc.StatusCode:
        return self._error.code()  # type: ignore[no-any-return]

    def details(self) -> str:
        return self._details

    def initial_metadata(self) -> Any:
        return self._error.initial_metadata()

    def trailing_metadata(self) -> Any:
        return self._error.trailing_metadata()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float:
        return 0.0

    def add_callback(self, callback: Any) -> bool:
        return False

    def cancel(self) -> bool:
        return False

    def cancelled(self) -> bool:
        return False

    def running(self) -> bool:
        return False

    def done(self) -> bool:
        return True

    def result(self, timeout: float | None = None) -> Any:
        raise self

    def exception(self, timeout: float | None = None) -> Exception:
        return self

    def traceback(self, timeout: float | None = None) -> Any:
        return None

    def add_done_callback(self, fn: Any) -> None:
        fn(self)

    def __str__(self) -> str:
        return f"<RPC failed: {self.code().name}: {self._details}>"


@dataclass(frozen=True)
class _CallDetails(grpc.ClientCallDetails):
    method: str
    timeout: float | None
    metadata: grpc.Metadata | None
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


class BearerKeyInterceptor(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamStreamClientInterceptor,  # type: ignore[type-arg]
):
    """Adds ``authorization: Bearer <key>`` to the metadata of every call."""

    def __init__(self, key: str) -> None:
        self._header = ("authorization", f"Bearer {key}")

    def _with_key(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _CallDetails(
            method=details.method,
            timeout=details.timeout,
            metadata=(*(details.metadata or ()), self._header),
            credentials=details.credentials,
            wait_for_ready=getattr(details, "wait_for_ready", None),
            compression=getattr(details, "compression", None),
        )

    def intercept_unary_unary(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.ClientCallDetails,
        request: Any,
    ) -> Any:
        return continuation(self._with_key(client_call_details), request)

    def intercept_unary_stream(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.ClientCallDetails,
        request: Any,
    ) -> Any:
        return continuation(self._with_key(client_call_details), request)

    def intercept_stream_unary(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.ClientCallDetails,
        request_iterator: Iterator[Any],
    ) -> Any:
        return continuation(self._with_key(client_call_details), request_iterator)

    def intercept_stream_stream(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.ClientCallDetails,
        request_iterator: Iterator[Any],
    ) -> Any:
        return continuation(self._with_key(client_call_details), request_iterator)


def upload_scope(bearer: str) -> str:
    """Who a bearer value stands for, without its secret: a key's public id
    ("mls_<id>_<secret>"), or for a JWT a digest of its issuer and subject."""
    if bearer.startswith("mls_"):
        return bearer.split("_")[1] if bearer.count("_") >= 2 else ""
    try:
        body = bearer.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        identity = f"{claims['iss']}\n{claims['sub']}"
    except (IndexError, ValueError, KeyError, TypeError):
        return ""
    return "t" + hashlib.sha256(identity.encode()).hexdigest()[:16]
