"""Who is calling: API keys, and the principal a valid key stands for.

A key reads ``mls_<prefix>_<secret>``. The prefix is public and indexed, so a
wrong key costs one lookup and at most one hash, never a scan. The secret is
256 random bits, so a single SHA-256 is a sound stored hash for it (a slow
password hash protects low-entropy secrets; these are not). Decisions are
cached for ``cache_seconds`` so the gateway's hot path does no database work;
a revoked key stops working within that bound.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from mlserve import store
from mlserve.aio import in_thread
from mlserve.errors import Unauthenticated

log = logging.getLogger(__name__)

ADMIN_KEY_FILE = "admin.key"
_CACHE_LIMIT = 10_000


@dataclass(frozen=True)
class Principal:
    """The caller a key stands for; later roles and workspaces hang off this."""

    key_prefix: str
    owner: str
    role: str


@dataclass(frozen=True)
class NewKey:
    plaintext: str
    prefix: str
    secret_hash: str


def make_key() -> NewKey:
    prefix = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return NewKey(f"mls_{prefix}_{secret}", prefix, _hash(secret))


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _split(key: str) -> tuple[str, str] | None:
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != "mls" or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


class Access:
    def __init__(self, cache_seconds: float = 1.0) -> None:
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, Principal]] = {}

    def bootstrap_admin_key(self, home: Path) -> Path | None:
        """On first start, create an admin key and write it to ``home/admin.key`` (0600).

        Returns the file written, or None when keys already exist.
        """
        if store.ApiKey.select().exists():
            return None
        key = make_key()
        path = home / ADMIN_KEY_FILE
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a key file from a database that no longer exists
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(key.plaintext + "\n")
        store.ApiKey.create(
            prefix=key.prefix, secret_hash=key.secret_hash, owner="admin", role="admin"
        )
        return path

    def cached(self, authorization: str | None) -> Principal | None:
        """The principal for a recently verified header value, without awaiting anything."""
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        entry = self._cache.get(key.strip())
        if entry is not None and entry[0] > time.monotonic():
            return entry[1]
        return None

    async def authenticate(self, authorization: str | None) -> Principal:
        """The principal behind an ``authorization: Bearer <key>`` value, or Unauthenticated."""
        if not authorization:
            raise Unauthenticated(
                "missing API key: send metadata 'authorization: Bearer <key>' "
                "(the first admin key is in $MLSERVE_HOME/admin.key)"
            )
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthenticated("authorization metadata must read 'Bearer <key>'")
        key = key.strip()
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        principal = await self._verify(key)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = (now + self.cache_seconds, principal)
        return principal

    @in_thread
    def _verify(self, key: str) -> Principal:
        parts = _split(key)
        row = None if parts is None else store.ApiKey.get_or_none(store.ApiKey.prefix == parts[0])
        if parts is None or row is None or row.revoked:
            raise Unauthenticated("the API key is not valid")
        if not hmac.compare_digest(row.secret_hash, _hash(parts[1])):
            raise Unauthenticated("the API key is not valid")
        return Principal(key_prefix=row.prefix, owner=row.owner, role=row.role)
