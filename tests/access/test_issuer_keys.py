"""An issuer's key set as MLServe caches it, against a real issuer over loopback
HTTP; the refetch limits run on a clock the test moves, never on waiting."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mlserve.access.tokens import (
    KEYS_MAX_AGE,
    REFETCH_SECONDS,
    IssuerKeys,
    claim_values,
    token_role,
)
from mlserve.core.errors import Unauthenticated
from tests.support.issuer import Issuer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    with Issuer() as running:
        yield running


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_keys_are_fetched_once_and_then_served_from_the_cache(issuer: Issuer, clock: Clock) -> None:
    keys = IssuerKeys(issuer.url, timeout=5, clock=clock)
    assert keys.key("rsa-1").algorithm_name == "RS256"
    assert keys.key("ec-1").algorithm_name == "ES256"
    assert issuer.jwks_requests == 1


def test_a_kid_flood_costs_the_issuer_one_request_per_interval(
    issuer: Issuer, clock: Clock
) -> None:
    keys = IssuerKeys(issuer.url, timeout=5, clock=clock)
    keys.key("rsa-1")
    clock.now += REFETCH_SECONDS  # the first unknown kid may refetch
    for n in range(200):
        with pytest.raises(Unauthenticated, match="not one its issuer publishes"):
            keys.key(f"forged-{n}")
    assert issuer.jwks_requests == 2


def test_a_rotated_key_is_accepted_without_restart(issuer: Issuer, clock: Clock) -> None:
    keys = IssuerKeys(issuer.url, timeout=5, clock=clock)
    keys.key("rsa-1")
    new = issuer.add_key("RS256")
    clock.now += REFETCH_SECONDS
    assert keys.key(new).key_id == new
    assert issuer.jwks_requests == 2


def test_cached_keys_keep_validating_while_the_issuer_is_down(issuer: Issuer, clock: Clock) -> None:
    keys = IssuerKeys(issuer.url, timeout=5, clock=clock)
    keys.key("rsa-1")
    issuer.jwks_failing = True
    clock.now += KEYS_MAX_AGE + 1  # due for a refresh, which fails
    assert keys.key("rsa-1").key_id == "rsa-1"
    assert issuer.jwks_requests == 2
    with pytest.raises(Unauthenticated, match="could not be fetched"):
        keys.key("rsa-2")  # unknown: says the issuer could not be reached (within the interval)


def test_a_hanging_key_set_is_bounded_by_the_timeout(issuer: Issuer, clock: Clock) -> None:
    keys = IssuerKeys(issuer.url, timeout=0.5, clock=clock)
    with issuer.hanging(), pytest.raises(Unauthenticated, match="could not be fetched"):
        keys.key("rsa-1")


def test_an_unreachable_issuer_is_refused_with_why(clock: Clock) -> None:
    gone = Issuer()
    gone.stop()
    keys = IssuerKeys(gone.url, timeout=1, clock=clock)
    with pytest.raises(Unauthenticated, match="could not be fetched") as refused:
        keys.key("rsa-1")
    assert "discovery document" in refused.value.message


def test_roles_are_read_from_a_dotted_claim_and_the_highest_wins() -> None:
    claims = {"realm_access": {"roles": ["offline_access", "viewer", "editor"]}, "groups": "a"}
    assert token_role(claim_values(claims, "realm_access.roles")) == "editor"
    assert claim_values(claims, "groups") == ["a"]
    assert claim_values(claims, "resource_access.mlserve.roles") == []
    assert token_role(["uma_authorization"]) == "viewer"
    assert token_role(["admin", "viewer"]) == "admin"
