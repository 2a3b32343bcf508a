"""Opaque, tamper-evident page tokens (AIP-158).

A token is the last key of the previous page plus a fingerprint of the query,
signed with the server's secret. A token from another query, or altered, is
INVALID_ARGUMENT instead of silently returning the wrong page.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from mlserve.core.errors import InvalidArgument

T = TypeVar("T")

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


def page_size(requested: int) -> int:
    """0 means the default, negative is an error, above the maximum is clamped."""
    if requested < 0:
        raise InvalidArgument(f"page_size must not be negative, got {requested}")
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list: its items, and the token of the next page ("" at the end)."""

    items: list[T]
    next_page_token: str = ""


@dataclass(frozen=True)
class PageTokens:
    """Signs and checks page tokens with one server secret."""

    secret: bytes

    def encode(self, query: dict[str, Any], last_key: Any) -> str:
        payload = json.dumps({"q": _fingerprint(query), "k": last_key}, separators=(",", ":"))
        body = payload.encode()
        mac = hmac.new(self.secret, body, hashlib.sha256).digest()[:16]
        return base64.urlsafe_b64encode(mac + body).decode().rstrip("=")

    def decode(self, query: dict[str, Any], token: str) -> Any:
        """Return the last key from ``token``, or None for an empty token."""
        if not token:
            return None
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except ValueError:
            raise InvalidArgument("page_token is malformed") from None
        mac, body = raw[:16], raw[16:]
        expected = hmac.new(self.secret, body, hashlib.sha256).digest()[:16]
        if not hmac.compare_digest(mac, expected):
            raise InvalidArgument("page_token is not one this server issued")
        payload = json.loads(body)
        if payload.get("q") != _fingerprint(query):
            raise InvalidArgument(
                "page_token belongs to a different query: repeat the same filters "
                "as the request that returned it"
            )
        return payload.get("k")


def _fingerprint(query: dict[str, Any]) -> str:
    canonical = json.dumps(query, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
