"""Who is calling: API keys, and the principal a valid key stands for.

A key reads ``mls_<prefix>_<secret>``. The prefix is public and indexed, so a
wrong key costs one indexed lookup and at most one hash, never a scan; an
unknown prefix costs no hash at all. Secrets are stored with scrypt (memory
hard) and compared in constant time. Keys of databases before schema 6 carry
a SHA-256 hash (``algorithm`` "sha256") and are re-hashed with scrypt the
first time they verify.

A flood of wrong secrets cannot stall other callers. Hashes run on their own
``HASHING_THREADS`` threads, never on the default executor that every
database call uses, so wrong secrets queue behind each other only. After
``FAILURES_BEFORE_BACKOFF`` wrong secrets in a row for one key id, that id
is refused without hashing until ``BACKOFF_SECONDS`` after the last hashed
failure; each hashed failure after that starts the back-off again, so one
key id costs at most one hash per back-off. A refusal during a back-off is
made before any database work and answered when the back-off ends (at most
``HELD_REFUSALS`` at once), so a client that waits for its answers gets one
attempt per back-off. A key this process has verified before is recognised
without hashing, so the back-off does not lock out a key's owner who is
already using it here.

Decisions are cached for ``cache_seconds`` (1 s) so the gateway's hot path
does no database work. After that the key's row, its user and memberships are
read again (no re-hash: the verified hash is remembered), so revocation,
expiry and deactivation by another replica take effect within the bound; in
this process they take effect at once (``forget_decisions()`` makes every cached
decision stale).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import hmac
import logging
import os
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from mlserve.access.rules import (
    ADMIN,
    CONSUMER,
    OWNER,
    Principal,
    infer_decision,
    model_policy,
)
from mlserve.core.aio import SingleFlight
from mlserve.core.errors import MLServeError, Unauthenticated
from mlserve.storage import db, tables
from mlserve.storage.db import in_thread

if TYPE_CHECKING:
    from mlserve.access.tokens import TokenVerifier

log = logging.getLogger(__name__)

ADMIN_KEY_FILE = "admin.key"
ADMIN_USER = "admin"
_CACHE_LIMIT = 10_000
SCRYPT = "scrypt"
# 16 MiB and a few tens of milliseconds per hash.
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1
HASHING_THREADS = 2
FAILURES_BEFORE_BACKOFF = 5
BACKOFF_SECONDS = 2.0
# Refusals held until their back-off ends, at most; past that they answer at once.
HELD_REFUSALS = 1024
_LAST_USED_RESOLUTION = dt.timedelta(minutes=1)
_INVALID = "the API key is not valid"
K = TypeVar("K")
V = TypeVar("V")


# Bumped by every change that can alter a decision (keys, users, models,
# memberships, apps): cached decisions of an older generation are not used.
_generation = 0


def forget_decisions() -> None:
    """Cached access decisions of this process are stale: decide again on the next call."""
    global _generation
    _generation += 1


class _DecisionCache(Generic[K, V]):
    """Answers kept for ``seconds``, and never used once ``forget_decisions()`` was called.

    Callers that miss at the same moment share one lookup (the cache expires
    every second, and every request in flight then would otherwise read the
    same rows). Lookups are shared within one generation only: one begun
    before a revocation never answers a caller that arrives after it.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._entries: dict[K, tuple[float, int, V]] = {}
        self._lookups: SingleFlight[tuple[K, int], V] = SingleFlight()

    def peek(self, key: K) -> V | None:
        """The fresh answer for ``key``, or None (for caches whose answers are never None)."""
        entry = self._fresh(key, time.monotonic())
        return None if entry is None else entry[2]

    async def get(self, key: K, lookup: Callable[[], Awaitable[V]]) -> V:
        now = time.monotonic()
        entry = self._fresh(key, now)
        if entry is not None:
            return entry[2]
        generation = _generation
        answer = await self._lookups.run((key, generation), lookup)
        if len(self._entries) >= _CACHE_LIMIT:
            self._entries.clear()
        self._entries[key] = (now + self.seconds, generation, answer)
        return answer

    def _fresh(self, key: K, now: float) -> tuple[float, int, V] | None:
        entry = self._entries.get(key)
        if entry is None or entry[0] <= now or entry[1] != _generation:
            return None
        return entry


class _FailedAttempts:
    """Wrong secrets in a row per key id, and when each id's back-off ends (thread-safe)."""

    def __init__(
        self, allowed: int, backoff: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.allowed = allowed
        self.backoff = backoff
        self._clock = clock
        self._lock = threading.Lock()
        # key id -> (wrong secrets in a row, monotonic time the back-off ends)
        self._entries: dict[str, tuple[int, float]] = {}

    def wait(self, prefix: str) -> float:
        """Seconds left before ``prefix`` may be hashed again; 0 when it may now."""
        with self._lock:
            failures, until = self._entries.get(prefix, (0, 0.0))
        if failures < self.allowed:
            return 0.0
        return max(0.0, until - self._clock())

    def failed(self, prefix: str) -> None:
        with self._lock:
            failures = self._entries.get(prefix, (0, 0.0))[0] + 1
            if len(self._entries) >= _CACHE_LIMIT:
                self._entries.clear()
            self._entries[prefix] = (failures, self._clock() + self.backoff)

    def succeeded(self, prefix: str) -> None:
        with self._lock:
            self._entries.pop(prefix, None)


@dataclass(frozen=True)
class NewKey:
    plaintext: str
    prefix: str
    secret_hash: str


def make_key() -> NewKey:
    """A new random key: its plaintext ``mls_<prefix>_<secret>`` (shown once), the prefix it is
    looked up by, and the scrypt hash stored instead of the secret.
    """
    prefix = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return NewKey(f"mls_{prefix}_{secret}", prefix, hash_secret(secret))


def hash_secret(secret: str) -> str:
    """The stored form of ``secret``: scrypt with a fresh salt, its parameters in the string,
    so they can change without breaking old keys.
    """
    salt = secrets.token_bytes(16)
    digest = _scrypt(secret, salt, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P)
    return f"{SCRYPT}${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${salt.hex()}${digest.hex()}"


def _scrypt(secret: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, n=n, r=r, p=p, dklen=32)


def verify_secret(secret: str, stored: str, algorithm: str) -> bool:
    """Constant-time check of ``secret`` against a stored hash of either algorithm."""
    if algorithm != SCRYPT:
        expected = hashlib.sha256(secret.encode()).hexdigest()
        return hmac.compare_digest(stored, expected)
    try:
        _, n, r, p, salt, digest = stored.split("$")
        actual = _scrypt(secret, bytes.fromhex(salt), int(n), int(r), int(p))
    except ValueError:
        return False
    return hmac.compare_digest(bytes.fromhex(digest), actual)


def split_key(key: str) -> tuple[str, str] | None:
    """``(prefix, secret)`` of a key of the form ``mls_<prefix>_<secret>``; None for anything
    else.
    """
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != "mls" or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


def create_key_row(**owner: Any) -> tuple[str, Any]:
    """Make a key for ``owner`` (user=… or consumer=…, expire_time=…): (plaintext, row)."""
    key = make_key()
    name = owner["user"].name if owner.get("user") else _consumer_name(owner["consumer"])
    role = owner["user"].role if owner.get("user") else CONSUMER
    row = tables.ApiKey.create(
        prefix=key.prefix,
        secret_hash=key.secret_hash,
        algorithm=SCRYPT,
        owner=name,
        role=role,
        **owner,
    )
    return key.plaintext, row


def _consumer_name(consumer: Any) -> str:
    return f"{consumer.app.name}/{consumer.name}"


class Access:
    """Authenticates keys, with a short decision cache."""

    def __init__(self, cache_seconds: float = 1.0, tokens: TokenVerifier | None = None) -> None:
        # OIDC sign-in (mlserve.access.tokens), when issuers are trusted.
        self.tokens = tokens
        # key -> its principal
        self._principals: _DecisionCache[str, Principal] = _DecisionCache(cache_seconds)
        # key -> the stored hash it verified against: refreshing a principal
        # re-reads the row but does not hash again while the hash is the same.
        self._verified: dict[str, str] = {}
        self._hashing = ThreadPoolExecutor(HASHING_THREADS, thread_name_prefix="key-hashing")
        self._failures = _FailedAttempts(FAILURES_BEFORE_BACKOFF, BACKOFF_SECONDS)
        self._held = 0  # refusals waiting for their key id's back-off to end
        # (key prefix, model) -> why not, or None: the gateway's decisions.
        self._infer: _DecisionCache[tuple[str, str], MLServeError | None] = _DecisionCache(
            cache_seconds
        )

    async def check_infer(self, principal: Principal, model: str) -> None:
        """Raise unless ``principal`` may infer on ``model``; cached like keys."""

        async def decide() -> MLServeError | None:
            return infer_decision(principal, await in_thread(model_policy)(model))

        refusal = await self._infer.get((principal.key_prefix, model), decide)
        if refusal is not None:
            raise type(refusal)(refusal.message)

    def bootstrap_admin_key(
        self, home: Path, adopt: Callable[[int], object] | None = None
    ) -> Path | None:
        """On first start, create the admin user and key, written to ``home/admin.key`` (0600).

        Returns the file written, or None when keys already exist. When the admin
        user is new, ``adopt(workspace_id)`` runs in the same transaction with the id
        of its workspace (the server gives it the models older databases left
        without one).
        """
        if tables.ApiKey.select().exists():
            return None
        path = home / ADMIN_KEY_FILE
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a key file from a database that no longer exists
        with db.database.atomic():
            user = tables.User.get_or_none(tables.User.name == ADMIN_USER)
            if user is None:
                workspace = tables.Workspace.create(name=ADMIN_USER)
                user = tables.User.create(name=ADMIN_USER, role=ADMIN, default_workspace=workspace)
                tables.WorkspaceMember.create(workspace=workspace, user=user, role=OWNER)
                if adopt is not None:
                    adopt(workspace.id)
            plaintext, _ = create_key_row(user=user)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(plaintext + "\n")
        return path

    def cached(self, authorization: str | None) -> Principal | None:
        """The principal for a recently verified header value, without awaiting anything."""
        scheme, _, key = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer":
            return None
        return self._principals.peek(key.strip())

    async def authenticate(self, authorization: str | None) -> Principal:
        """The principal behind an ``authorization: Bearer <key>`` value, or Unauthenticated."""
        if not authorization:
            raise Unauthenticated(
                "missing API key: send metadata 'authorization: Bearer <key>' "
                "(the first admin key is in $MLSERVE_HOME/admin.key)"
            )
        scheme, _, key = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthenticated("authorization metadata must read 'Bearer <key>'")
        key = key.strip()
        if _looks_like_jwt(key):
            return await self._principals.get(key, lambda: self._verify_token(key))
        return await self._principals.get(key, lambda: self._verify(key))

    async def _verify_token(self, token: str) -> Principal:
        if self.tokens is None:
            raise Unauthenticated(
                "the bearer value is a token, but this MLServe trusts no OIDC issuer "
                "(mlserve serve --oidc-issuer): send an API key"
            )
        return await in_thread(self.tokens.verify)(token)

    async def _verify(self, key: str) -> Principal:
        parts = split_key(key)
        if parts is None:
            raise Unauthenticated(_INVALID)
        prefix, secret = parts
        if key not in self._verified:
            # A key id backing off is refused before any database or thread
            # work, and the refusal is held until the back-off ends: a
            # flood of wrong secrets costs the event loop little, and a
            # client that waits for its answers makes one attempt per back-off.
            await self._hold_while_backing_off(prefix)
        row = await in_thread(_key_row)(prefix)
        if row is None:
            raise Unauthenticated(_INVALID)
        if self._verified.get(key) != row.secret_hash:
            hashing = asyncio.get_running_loop().run_in_executor
            good = await hashing(self._hashing, self._check_secret, prefix, secret, row)
            if not good:
                raise Unauthenticated(_INVALID)
            if row.algorithm != SCRYPT:
                new_hash = await hashing(self._hashing, hash_secret, secret)
                await in_thread(_store_hash)(row, new_hash)
            if len(self._verified) >= _CACHE_LIMIT:
                self._verified.clear()
            self._verified[key] = row.secret_hash
        return await in_thread(_accept)(row)

    async def _hold_while_backing_off(self, prefix: str) -> None:
        wait = self._failures.wait(prefix)
        if wait <= 0:
            return
        if self._held < HELD_REFUSALS:
            self._held += 1
            try:
                await asyncio.sleep(wait)
            finally:
                self._held -= 1
        raise Unauthenticated(_backing_off(prefix))

    def _refuse_while_backing_off(self, prefix: str) -> None:
        if self._failures.wait(prefix) > 0:
            raise Unauthenticated(_backing_off(prefix))

    def _check_secret(self, prefix: str, secret: str, row: Any) -> bool:
        """On a hashing thread: whether ``secret`` is ``row``'s; refused while backing off.

        The back-off is checked here, when the hash would start, so wrong
        secrets that queued up together cost no more hashes than the limit.
        """
        self._refuse_while_backing_off(prefix)
        if verify_secret(secret, row.secret_hash, row.algorithm):
            self._failures.succeeded(prefix)
            return True
        self._failures.failed(prefix)
        return False


def _backing_off(prefix: str) -> str:
    return (
        f"too many wrong secrets for API key {prefix}: after {FAILURES_BEFORE_BACKOFF} in a row "
        f"it is checked at most once every {BACKOFF_SECONDS:g} s; check the key and retry"
    )


def _key_row(prefix: str) -> Any:
    return tables.ApiKey.get_or_none(tables.ApiKey.prefix == prefix)


def _store_hash(row: Any, secret_hash: str) -> None:
    row.secret_hash, row.algorithm = secret_hash, SCRYPT
    row.save(only=[tables.ApiKey.secret_hash, tables.ApiKey.algorithm])


def _accept(row: Any) -> Principal:
    """The principal of a key whose secret verified, unless it can no longer be used."""
    _check_usable(row)
    now = db.utcnow()
    if row.last_used_time is None or now - row.last_used_time > _LAST_USED_RESOLUTION:
        tables.ApiKey.update(last_used_time=now).where(tables.ApiKey.id == row.id).execute()
    return _principal(row)


def _check_usable(row: Any) -> None:
    if row.revoked:
        raise Unauthenticated(f"API key {row.prefix} was revoked: ask for a new key")
    if row.expire_time is not None and row.expire_time <= db.utcnow():
        raise Unauthenticated(f"API key {row.prefix} expired: ask for a new key")
    if row.user_id is not None and not row.user.active:
        raise Unauthenticated(deactivated_message(row.user.name))
    if row.user_id is None and row.consumer_id is None:
        raise Unauthenticated(_INVALID)


def _looks_like_jwt(value: str) -> bool:
    """A JWT (three base64url parts, a JSON header) rather than an ``mls_`` key."""
    return value.startswith("eyJ") and value.count(".") == 2


def deactivated_message(user: str) -> str:
    """What a deactivated user's call is told, and what to do about it."""
    return f"user {user!r} is deactivated: an admin can activate the user again"


def _principal(row: Any) -> Principal:
    if row.consumer_id is not None:
        consumer = row.consumer
        app = consumer.app
        routes = tables.AppRoute.select(tables.AppRoute.model).where(tables.AppRoute.app == app)
        return Principal(
            key_prefix=row.prefix,
            name=_consumer_name(consumer),
            role=CONSUMER,
            app=app.name,
            routes=frozenset(route.model for route in routes),
            retries=app.retries,
            timeout_seconds=app.timeout_seconds,
        )
    return user_principal(row.prefix, row.user)


def user_principal(key_prefix: str, user: Any) -> Principal:
    """The principal of ``user`` (a User row), signed in by ``key_prefix``."""
    memberships = tables.WorkspaceMember.select(
        tables.WorkspaceMember.workspace, tables.WorkspaceMember.role
    ).where(tables.WorkspaceMember.user == user)
    return Principal(
        key_prefix=key_prefix,
        name=user.name,
        role=user.role,
        user_id=user.id,
        default_workspace=user.default_workspace_id,
        workspaces=dict(memberships.tuples()),  # type: ignore[arg-type]  # .tuples()
    )
