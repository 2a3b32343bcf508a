"""Wrong secrets for one key id: hashed a few times, then refused without
hashing for a back-off, while every other caller goes on being answered."""

from __future__ import annotations

import threading

import grpc
import pytest

from mlserve.access.keys import BACKOFF_SECONDS, FAILURES_BEFORE_BACKOFF, _FailedAttempts
from mlserve_api.v1 import model_pb2
from tests.support.mlserve import Stubs
from tests.support.users import make_user

Code = grpc.StatusCode
FLOOD_THREADS = 64
# Each is held until its back-off ends: a few per thread.
CALLS_PER_FLOOD_THREAD = 3
LISTING = model_pb2.ListModelsRequest()


# --- the counting, on a clock the test moves ----------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_backoff_starts_after_the_allowed_failures_and_ends() -> None:
    clock = Clock()
    failures = _FailedAttempts(allowed=3, backoff=2.0, clock=clock)
    for _ in range(2):
        failures.failed("k")
        assert failures.wait("k") == 0.0
    failures.failed("k")
    assert failures.wait("k") == 2.0
    assert failures.wait("other") == 0.0
    clock.now += 1.5
    assert failures.wait("k") == 0.5
    clock.now += 0.5
    assert failures.wait("k") == 0.0  # one more hash may run...
    failures.failed("k")
    assert failures.wait("k") == 2.0  # ...and its failure starts the back-off again


def test_a_right_secret_clears_the_count() -> None:
    clock = Clock()
    failures = _FailedAttempts(allowed=2, backoff=2.0, clock=clock)
    failures.failed("k")
    failures.succeeded("k")
    failures.failed("k")
    assert failures.wait("k") == 0.0


# --- over real sockets ------------------------------------------------------------


def new_key(root: Stubs, user: str) -> str:
    return make_user(root, user, "viewer").key


def wrong(key: str, n: int) -> list[tuple[str, str]]:
    prefix = key.split("_")[1]
    return [("authorization", f"Bearer mls_{prefix}_{n:043d}")]


def refusal(root: Stubs, metadata: list[tuple[str, str]]) -> str:
    with pytest.raises(grpc.RpcError) as failure:
        root.models.ListModels(LISTING, metadata=metadata, timeout=60)
    assert failure.value.code() == Code.UNAUTHENTICATED, failure.value.details()
    return failure.value.details() or ""


def test_wrong_secrets_back_off_their_key_id_only(root: Stubs) -> None:
    unused = new_key(root, "backoff-unused")
    prefix = unused.split("_")[1]
    for n in range(FAILURES_BEFORE_BACKOFF):
        assert refusal(root, wrong(unused, n)) == "the API key is not valid"
    backing_off = (
        f"too many wrong secrets for API key {prefix}: after {FAILURES_BEFORE_BACKOFF} in a row "
        f"it is checked at most once every {BACKOFF_SECONDS:g} s; check the key and retry"
    )
    # Refused without a hash, and answered when the back-off is over...
    assert refusal(root, wrong(unused, 99)) == backing_off
    # ...so the next wrong secret is hashed, and starts the back-off again.
    assert refusal(root, wrong(unused, 100)) == "the API key is not valid"
    # The right secret of a key this process has not verified yet waits its turn too,
    right = [("authorization", f"Bearer {unused}")]
    assert refusal(root, right) == backing_off
    # and is accepted once the back-off is over; that clears the count.
    root.models.ListModels(LISTING, metadata=right, timeout=60)
    assert refusal(root, wrong(unused, 101)) == "the API key is not valid"
    # Other keys are not affected.
    root.models.ListModels(LISTING, metadata=root.auth, timeout=60)
    other = new_key(root, "backoff-other")
    root.models.ListModels(LISTING, metadata=[("authorization", f"Bearer {other}")], timeout=60)


def test_a_key_in_use_is_not_locked_out_by_a_flood(root: Stubs) -> None:
    key = new_key(root, "backoff-in-use")
    mine = [("authorization", f"Bearer {key}")]
    root.models.ListModels(LISTING, metadata=mine, timeout=60)
    errors: list[BaseException] = []
    codes: set[grpc.StatusCode] = set()

    def flood(thread: int) -> None:
        try:
            for n in range(CALLS_PER_FLOOD_THREAD):
                with pytest.raises(grpc.RpcError) as failure:
                    root.models.ListModels(LISTING, metadata=wrong(key, thread * 100 + n))
                codes.add(failure.value.code())
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=flood, args=(i,)) for i in range(FLOOD_THREADS)]
    for thread in threads:
        thread.start()
    answered = 0
    while any(thread.is_alive() for thread in threads):
        root.models.ListModels(LISTING, metadata=mine, timeout=60)
        root.models.ListModels(LISTING, metadata=root.auth, timeout=60)
        answered += 1
    for thread in threads:
        thread.join()
    assert not errors
    assert codes == {Code.UNAUTHENTICATED}
    assert answered > 0
    # After the flood the key still works; its wrong secrets are still refused.
    root.models.ListModels(LISTING, metadata=mine, timeout=60)
    assert "too many wrong secrets" in refusal(root, wrong(key, 12345))
