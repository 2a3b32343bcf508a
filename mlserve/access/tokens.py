"""Who is calling, when the bearer value is an OpenID Connect token (a JWT).

``mlserve serve --oidc-issuer URL --oidc-audience AUD`` trusts the tokens of
each issuer given: the issuer's discovery document names its key set (JWKS),
and a token is accepted only when all of these hold, checked in this order so
the message names the first that failed:

- it is a JWT signed with RS256 or ES256 (``none`` and the HS* algorithms are
  refused before any key is looked at, so a public key can never serve as an
  HMAC secret);
- its ``iss`` is one of the trusted issuers;
- its ``kid`` is in that issuer's key set, and the signature verifies;
- ``exp``, ``nbf``/``iat`` (with ``LEEWAY_SECONDS`` for clock skew), ``aud``
  (must name the configured audience) and ``iss`` verify, and ``sub`` is there.

Key sets: fetched on first use and kept. A token with an unknown ``kid``
re-fetches the set (key rotation needs no restart), at most once per
``REFETCH_SECONDS`` per issuer, so a flood of forged kids costs the provider
one request per 30 s. The set is also refreshed after ``KEYS_MAX_AGE`` (keys
the issuer withdrew stop validating); when that fails, the cached keys keep
validating. Every fetch is bounded by ``--oidc-fetch-timeout``.

Identities: the token's (issuer, ``sub``) is linked to an MLServe user on its
first sign-in, a user named by ``--oidc-user-claim`` (``sub`` unless told
otherwise) created then, with its own workspace like ``users create``. A user
of that name that exists already and is not linked is never taken over: the
token is refused. Deleting the user keeps the link without a user, so its
tokens are refused afterwards; a deactivated user's tokens are refused too.

Roles: the highest of admin, editor and viewer among the values of
``--oidc-roles-claim`` (a dotted path: ``realm_access.roles``,
``resource_access.<client>.roles``, ``groups``) is the user's role, set at
each sign-in (the provider is where roles are managed). A token naming none of
them signs in as a viewer, the lowest role: it may read what its workspaces and
public models offer and change nothing. With ``--oidc-workspaces-claim``, each
value naming an existing workspace (a leading ``/`` of a group path ignored)
makes the user a collaborator there; memberships are only added at sign-in.

Decisions are cached like keys' (``Access``): for a second, and never after
``forget_decisions()``, so deactivation takes effect within the keys' bound.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt

from mlserve.access.keys import deactivated_message, user_principal
from mlserve.access.rules import COLLABORATOR, USER_ROLES, VIEWER, Principal
from mlserve.access.users import insert_user
from mlserve.core.errors import AlreadyExists, InvalidArgument, Unauthenticated
from mlserve.core.names import check_name
from mlserve.storage import db, tables

log = logging.getLogger(__name__)

ACCEPTED_ALGORITHMS = ("RS256", "ES256")
LEEWAY_SECONDS = 10.0
REFETCH_SECONDS = 30.0
KEYS_MAX_AGE = 600.0
_DISCOVERY = "/.well-known/openid-configuration"
_MAX_KID = 256
_MAX_DOCUMENT_BYTES = 1024 * 1024


@dataclass(frozen=True)
class OidcConfig:
    """The issuers MLServe trusts and how their claims map to users (see the module)."""

    issuers: tuple[str, ...]
    audience: str
    user_claim: str = "sub"
    roles_claim: str = "realm_access.roles"
    workspaces_claim: str = ""
    fetch_timeout: float = 5.0


class _FetchFailed(Exception):
    """The issuer's discovery document or key set could not be had; says why."""


class IssuerKeys:
    """One issuer's signing keys, fetched through its discovery document and cached."""

    def __init__(
        self, issuer: str, timeout: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.issuer = issuer
        self.timeout = timeout
        self._clock = clock
        self._fetching = threading.Lock()
        self._jwks: jwt.PyJWKClient | None = None
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched = -math.inf  # monotonic time of the last fetch that worked
        self._attempted = -math.inf  # and of the last attempt
        self._failure: str | None = None  # why the last attempt failed

    def key(self, kid: str) -> jwt.PyJWK:
        """The issuer's key ``kid``, re-fetching the set at most once per REFETCH_SECONDS.

        Raises:
            Unauthenticated: the issuer publishes no such key (or could not be
                reached, and no cached key has that id).
        """
        known = self._keys.get(kid)
        if known is not None and self._clock() - self._fetched < KEYS_MAX_AGE:
            return known
        # A caller with a known but aged key does not wait for another's refresh.
        if known is not None and not self._fetching.acquire(blocking=False):
            return known
        if known is None:
            self._fetching.acquire()
        try:
            self._refresh_if_due()
        finally:
            self._fetching.release()
        found = self._keys.get(kid)
        if found is not None:
            return found
        if self._failure is not None:
            raise Unauthenticated(
                f"the token's signing key is not among the cached keys of its issuer, and "
                f"the issuer's keys could not be fetched ({self._failure}): try again later"
            )
        raise Unauthenticated(
            "the token's signing key (kid) is not one its issuer publishes: get a new token"
        )

    def _refresh_if_due(self) -> None:
        """Fetch the key set unless an attempt was made in the last REFETCH_SECONDS."""
        now = self._clock()
        if now - self._attempted < REFETCH_SECONDS:
            return
        self._attempted = now
        try:
            self._keys = self._fetch()
        except _FetchFailed as error:
            log.warning("OIDC issuer %s: could not fetch its keys: %s", self.issuer, error)
            self._failure = str(error)
            return
        self._failure = None
        self._fetched = self._clock()

    def _fetch(self) -> dict[str, jwt.PyJWK]:
        if self._jwks is None:
            self._jwks = jwt.PyJWKClient(
                self._jwks_uri(), cache_keys=False, cache_jwk_set=False, timeout=self.timeout
            )
        try:
            key_set = self._jwks.get_jwk_set()
        except (jwt.PyJWKClientError, jwt.PyJWKSetError) as error:
            raise _FetchFailed(f"key set: {error}") from None
        return {key.key_id: key for key in key_set.keys if key.key_id}

    def _jwks_uri(self) -> str:
        url = self.issuer.rstrip("/") + _DISCOVERY
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as response:
                document = json.loads(response.read(_MAX_DOCUMENT_BYTES))
        except (urllib.error.URLError, TimeoutError, OSError, ValueError) as error:
            raise _FetchFailed(f"discovery document {url}: {error}") from None
        if not isinstance(document, dict) or document.get("issuer") != self.issuer:
            raise _FetchFailed(f"discovery document {url} names another issuer")
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri:
            raise _FetchFailed(f"discovery document {url} has no jwks_uri")
        return jwks_uri


class TokenVerifier:
    """Turns OIDC tokens of the trusted issuers into principals."""

    def __init__(self, config: OidcConfig) -> None:
        self.config = config
        self._issuers = {
            issuer: IssuerKeys(issuer, config.fetch_timeout) for issuer in config.issuers
        }

    def verify(self, token: str) -> Principal:
        """The principal ``token`` signs in (its user made on first sign-in), or Unauthenticated.

        Blocking (key fetches, the database): call it in a worker thread.
        """
        issuer, claims = self._verified_claims(token)
        return self._sign_in(issuer, claims)

    def _verified_claims(self, token: str) -> tuple[str, dict[str, Any]]:
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise Unauthenticated("the bearer token is not a well-formed JWT") from None
        if header.get("alg") not in ACCEPTED_ALGORITHMS:
            raise Unauthenticated(
                "the token's signing algorithm is refused: MLServe accepts RS256 and ES256"
            )
        issuer = unverified.get("iss")
        keys = self._issuers.get(issuer) if isinstance(issuer, str) else None
        if keys is None or not isinstance(issuer, str):
            raise Unauthenticated("the token's issuer (iss) is not one this MLServe trusts")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid or len(kid) > _MAX_KID:
            raise Unauthenticated("the token names no signing key (kid)")
        key = keys.key(kid)
        if key.algorithm_name != header["alg"]:
            raise Unauthenticated("the token's algorithm does not match its signing key")
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[header["alg"]],
                audience=self.config.audience,
                issuer=issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError as error:
            raise Unauthenticated(_refusal(error)) from None
        return issuer, claims

    def _sign_in(self, issuer: str, claims: Mapping[str, Any]) -> Principal:
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject:
            raise Unauthenticated("the token's sub claim is empty")
        role = token_role(claim_values(claims, self.config.roles_claim))
        with db.database.atomic():
            identity: Any = tables.OidcIdentity.get_or_none(
                (tables.OidcIdentity.issuer == issuer) & (tables.OidcIdentity.subject == subject)
            )
            if identity is None:
                identity = self._first_sign_in(issuer, subject, claims, role)
            if identity.user_id is None:
                raise Unauthenticated(
                    "the user this identity signed in as was deleted; its tokens stay refused"
                )
            user: Any = identity.user
            if not user.active:
                raise Unauthenticated(deactivated_message(user.name))
            if user.role != role:
                user.role = role
                user.update_time = db.utcnow()
                user.save(only=[tables.User.role, tables.User.update_time])
            if self.config.workspaces_claim:
                _join(user, claim_values(claims, self.config.workspaces_claim))
        return user_principal(f"oidc-{identity.id}", user)

    def _first_sign_in(
        self, issuer: str, subject: str, claims: Mapping[str, Any], role: str
    ) -> Any:
        values = claim_values(claims, self.config.user_claim)
        name = values[0] if len(values) == 1 else ""
        claim = self.config.user_claim
        try:
            check_name(name, f"the token's {claim} claim")
        except InvalidArgument as error:
            raise Unauthenticated(f"{error.message}: it names the MLServe user") from None
        if tables.User.select().where(tables.User.name == name).exists():
            raise Unauthenticated(
                f"user {name!r} exists already and was not made by this identity's sign-in; "
                "MLServe does not hand an existing user to a token"
            )
        try:
            user = insert_user(name, role)
        except AlreadyExists as error:
            raise Unauthenticated(f"cannot make this identity's user: {error.message}") from None
        log.info("OIDC: %s of %s signed in for the first time as user %r", subject, issuer, name)
        return tables.OidcIdentity.create(issuer=issuer, subject=subject, user=user)


def claim_values(claims: Mapping[str, Any], path: str) -> list[str]:
    """The strings at dotted ``path`` in ``claims`` (a string is one value), or []."""
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return []
        value = value.get(part)
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [item for item in value if isinstance(item, str)]
    return []


def token_role(values: Iterable[str]) -> str:
    """The highest MLServe role named among ``values``; viewer when none is."""
    named = set(values)
    return next((role for role in USER_ROLES if role in named), VIEWER)


def _join(user: Any, groups: Iterable[str]) -> None:
    names = {group.lstrip("/") for group in groups}
    spaces = tables.Workspace.select().where(
        tables.Workspace.name.in_(names) & (tables.Workspace.archived == False)  # noqa: E712
    )
    for space in spaces:
        tables.WorkspaceMember.get_or_create(  # type: ignore[no-untyped-call]
            workspace=space, user=user, defaults={"role": COLLABORATOR}
        )


def _refusal(error: jwt.PyJWTError) -> str:
    """Which check refused a signed token, without anything that helps forge one."""
    if isinstance(error, jwt.ExpiredSignatureError):
        return "the token expired (exp): get a new token"
    if isinstance(error, jwt.ImmatureSignatureError):
        return "the token is not valid yet (nbf or iat is in the future)"
    if isinstance(error, jwt.InvalidAudienceError):
        return "the token is not meant for this MLServe (aud does not name its audience)"
    if isinstance(error, jwt.InvalidIssuerError):
        return "the token's issuer (iss) is not one this MLServe trusts"
    if isinstance(error, jwt.MissingRequiredClaimError):
        return f"the token lacks the {error.claim} claim"
    if isinstance(error, jwt.InvalidSignatureError):
        return "the token's signature does not verify"
    return "the token is not valid"
