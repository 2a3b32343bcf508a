"""A real OpenID Connect issuer for tests: keys made with ``cryptography``, its
discovery document and key set (JWKS) served over HTTP on loopback, tokens
minted per test. It can rotate keys, hang or fail its JWKS endpoint, and counts
the key-set requests it answered."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

AUDIENCE = "mlserve"
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up on a hanging request: expected, not news


def trusting(*issuers: Issuer) -> tuple[str, ...]:
    """``mlserve serve`` options that trust the tokens of ``issuers`` (audience AUDIENCE)."""
    options = [option for issuer in issuers for option in ("--oidc-issuer", issuer.url)]
    return (*options, "--oidc-audience", AUDIENCE)


class Issuer:
    """An issuer at ``url`` publishing an RS256 key (``rsa-1``) and an ES256 key (``ec-1``)."""

    def __init__(self) -> None:
        self.keys: dict[str, tuple[str, PrivateKey]] = {}
        self.add_key("RS256", "rsa-1")
        self.add_key("ES256", "ec-1")
        self.jwks_requests = 0
        self.jwks_failing = False  # answer the JWKS with 503
        self._released = threading.Event()
        self._released.set()  # cleared: JWKS requests hang until released
        self._server = _QuietServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/realms/test"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def __enter__(self) -> Issuer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._released.set()
        self._server.shutdown()
        self._server.server_close()

    def add_key(self, algorithm: str, kid: str | None = None) -> str:
        """Publish a new key (a rotation); returns its kid."""
        kid = kid or f"{algorithm.lower()}-{uuid.uuid4().hex[:8]}"
        private: PrivateKey = (
            rsa.generate_private_key(public_exponent=65537, key_size=2048)
            if algorithm == "RS256"
            else ec.generate_private_key(ec.SECP256R1())
        )
        self.keys[kid] = (algorithm, private)
        return kid

    @contextmanager
    def hanging(self) -> Iterator[None]:
        """Within the block, JWKS requests hang (until the block ends)."""
        self._released.clear()
        try:
            yield
        finally:
            self._released.set()

    def token(
        self,
        sub: str,
        *,
        kid: str = "rsa-1",
        audience: str | list[str] = AUDIENCE,
        issuer: str | None = None,
        lifetime: float = 300,
        not_before: float | None = None,
        omit: tuple[str, ...] = (),
        **claims: Any,
    ) -> str:
        """A token for ``sub`` signed with key ``kid``; claims beyond the standard ones as given."""
        now = time.time()
        payload: dict[str, Any] = {
            "iss": issuer or self.url,
            "sub": sub,
            "aud": audience,
            "iat": int(now),
            "exp": int(now + lifetime),
            "preferred_username": sub,
            **claims,
        }
        if not_before is not None:
            payload["nbf"] = int(now + not_before)
        for name in omit:
            payload.pop(name, None)
        algorithm, private = self.keys[kid]
        return jwt.encode(payload, private, algorithm=algorithm, headers={"kid": kid})

    def public_pem(self, kid: str = "rsa-1") -> bytes:
        return (
            self.keys[kid][1]
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def _jwks(self) -> dict[str, Any]:
        found = []
        for kid, (algorithm, private) in self.keys.items():
            convert = RSAAlgorithm if algorithm == "RS256" else ECAlgorithm
            jwk = convert.to_jwk(private.public_key(), as_dict=True)
            found.append({**jwk, "kid": kid, "alg": algorithm, "use": "sig"})
        return {"keys": found}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.endswith("/.well-known/openid-configuration"):
                    base = issuer.url
                    self._json(
                        {"issuer": base, "jwks_uri": f"{base}/protocol/openid-connect/certs"}
                    )
                elif self.path.endswith("/certs"):
                    issuer._released.wait(60)
                    issuer.jwks_requests += 1
                    if issuer.jwks_failing:
                        self.send_error(503)
                    else:
                        self._json(issuer._jwks())
                else:
                    self.send_error(404)

            def _json(self, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet

        return Handler


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    """A running test issuer for the module's tests (a pytest plugin of tests/conftest.py)."""
    with Issuer() as running:
        yield running
