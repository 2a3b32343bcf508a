"""Abandoned uploads expire, and one user's staging is capped, over real sockets.

The expiry test runs an MLServe whose uploads expire after ten seconds and
waits for the sweep to take one (polling, no timed assertion). The cap test
runs one with a tiny per-user cap and checks the refusal's code, its message
(the cap and what is held) and that nothing was written.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import grpc
import pytest

from mlserve_api.v1 import model_pb2
from tests.support.checks import expect_error, nothing_written, tree, wait_until
from tests.support.mlserve import MLServeProcess, started_without_triton
from tests.support.uploading import get_upload, header, stream, upload, upload_error
from tests.support.uploads import begin, blob_file, missing, upload_ids
from tests.support.users import PID, make_user

Code = grpc.StatusCode
CAP = 10_000


@pytest.fixture(scope="module")
def expiring(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLServeProcess]:
    with started_without_triton(
        # Long enough for the steps before the blob check to run on a loaded machine
        # before the upload expires (the sweep comes every quarter of it).
        tmp_path_factory.mktemp("expiring-home"),
        "--upload-expiry",
        "10s",
    ) as process:
        yield process


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLServeProcess]:
    home = tmp_path_factory.mktemp("capped-home")
    with started_without_triton(home, "--max-staging-bytes", str(CAP)) as process:
        yield process


def test_an_abandoned_upload_expires_with_its_staging_and_pins(
    expiring: MLServeProcess, model_name: str
) -> None:
    admin = expiring.stubs()
    ann = make_user(admin, f"exp-ann-{PID}", "editor")
    home = expiring.home
    shared = os.urandom(16 * 1024)
    upload(ann, stream(f"{model_name}-first", {"model.py": b"# 1\n", "shared.bin": shared}))
    upload_id = f"{model_name}-abandoned"
    files = {"model.py": b"# 2\n", "shared.bin": shared, "fresh.bin": os.urandom(8192)}
    begin(ann, model_name, upload_id, files)
    status = get_upload(ann, upload_id)
    assert status.expire_time.ToDatetime() > status.update_time.ToDatetime()
    # The deleted model leaves the shared content pinned by the upload alone.
    ann.models.DeleteModel(
        model_pb2.DeleteModelRequest(name=f"{model_name}-first"), metadata=ann.auth
    )
    assert blob_file(home, shared).exists()

    wait_until(lambda: upload_id not in upload_ids(admin, all_users=True), timeout=60)
    missing(expect_error(Code.NOT_FOUND, get_upload, ann, upload_id), upload_id)
    assert not (home / "staging" / upload_id).exists()
    assert not (home / "upload-locks" / upload_id).exists()
    wait_until(lambda: not blob_file(home, shared).exists(), timeout=60)
    # The same upload id starts afresh.
    version = upload(ann, stream(model_name, files, upload_id=upload_id))
    assert version.version == 1
    admin.channel.close()


def test_staging_is_capped_per_user(capped: MLServeProcess, model_name: str) -> None:
    admin = capped.stubs()
    ann = make_user(admin, f"cap-ann-{PID}", "editor")
    bob = make_user(admin, f"cap-bob-{PID}", "editor")
    big = {"model.py": b"# big\n", "weights.bin": os.urandom(6000)}
    held = sum(len(data) for data in big.values())
    begin(ann, model_name, f"{model_name}-1", big)

    second = {"model.py": b"# second\n", "weights.bin": os.urandom(6000)}
    needed = sum(len(data) for data in second.values())
    staging = tree(capped.home / "staging")
    with nothing_written(admin, capped.home):
        refused = [header(f"{model_name}-2", second, upload_id=f"{model_name}-2")]
        error = upload_error(ann, Code.RESOURCE_EXHAUSTED, refused)
        assert f"needs {needed} bytes" in error.details()
        assert f"1 unfinished uploads hold {held} of the {CAP} bytes" in error.details()
        assert "--max-staging-bytes" in error.details()
    assert tree(capped.home / "staging") == staging
    missing(expect_error(Code.NOT_FOUND, get_upload, ann, f"{model_name}-2"), f"{model_name}-2")
    assert upload_ids(ann) == [f"{model_name}-1"]

    # The cap is per user: Bob is not held to Ann's staging.
    begin(bob, f"{model_name}-bob", f"{model_name}-bob", second)
    # Cancelling frees Ann's room.
    ann.models.CancelUpload(
        model_pb2.CancelUploadRequest(upload_id=f"{model_name}-1"), metadata=ann.auth
    )
    version = upload(ann, stream(f"{model_name}-2", second, upload_id=f"{model_name}-2"))
    assert version.version == 1
    # A committed upload holds no staging: the next one fits again.
    begin(ann, model_name, f"{model_name}-3", big)
    admin.channel.close()
