"""Keyset paging with opaque, tamper-evident page tokens (AIP-158).

A token is the last key of the previous page plus a fingerprint of the query,
signed with the server's secret. A token from another query, or altered, is
INVALID_ARGUMENT instead of silently returning the wrong page. ``Listing`` and
``PageTokens.page`` are the one pager every list uses: a page starts strictly
after the previous page's last key, so rows added or removed between pages
shift nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from mlserve.core.errors import InvalidArgument

T = TypeVar("T")
R = TypeVar("R")

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
class Listing(Generic[R]):
    """One keyset-paged query: its rows in ``order`` after the token's key.

    ``query`` is a select of the storage layer (it offers ``where``,
    ``order_by`` and ``limit``), ``order`` a unique column of it, and ``key``
    gives a row's value of that column as the token keeps it (JSON: a string or
    a number). ``fingerprint`` names the list and its filters, so a token only
    continues the query that issued it.
    """

    query: Any
    order: Any
    record: Callable[[Any], R]
    key: Callable[[Any], Any]
    fingerprint: dict[str, Any] = field(default_factory=dict)
    descending: bool = False
    """Largest key first (newest first, for ids)."""
    keep: Callable[[Any], bool] | None = None
    """Rows of a page to show, for a rule the query cannot say (the page is then
    shorter; the next one still starts after its last row)."""
    sort: tuple[Any, ...] = ()
    after: Callable[[Any], Any] | None = None
    """For an order that is more than one unique column (a sort column, ties broken
    by id): ``sort`` is the ORDER BY and ``after(key)`` the where-clause of the rows
    after a token's key; ``order`` and ``descending`` are then not used."""


@dataclass(frozen=True)
class PageTokens:
    """Signs and checks page tokens with one server secret."""

    secret: bytes

    def encode(self, query: dict[str, Any], last_key: Any) -> str:
        payload = json.dumps({"q": _fingerprint(query), "k": last_key}, separators=(",", ":"))
        body = payload.encode()
        mac = hmac.new(self.secret, body, hashlib.sha256).digest()[:16]
        return base64.urlsafe_b64encode(mac + body).decode().rstrip("=")

    def page(self, listing: Listing[R], requested: int, token: str) -> Page[R]:
        """The page of ``listing`` after ``token``'s key, ``requested`` rows at most
        (0: the default size; see ``page_size``), and the token of the next page.

        Raises:
            InvalidArgument: a negative size, or a token this server did not
                issue for this very listing.
        """
        size = page_size(requested)
        after = self.decode(listing.fingerprint, token)
        column = listing.order
        sort = listing.sort or ((column.desc() if listing.descending else column),)
        query = listing.query.order_by(*sort).limit(size + 1)
        if after is not None and listing.after is not None:
            query = query.where(listing.after(after))
        elif after is not None:
            query = query.where(column < after if listing.descending else column > after)
        rows = list(query)
        shown = [row for row in rows[:size] if listing.keep is None or listing.keep(row)]
        records = [listing.record(row) for row in shown]
        more = len(rows) > size
        return Page(
            records, self.encode(listing.fingerprint, listing.key(rows[size - 1])) if more else ""
        )

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
