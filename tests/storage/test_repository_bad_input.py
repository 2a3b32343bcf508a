"""Links planted in staging or the repository are refused or never followed,
and nothing outside the repository is touched.

Every test here runs against a real MLServe (and, where a deployment is
involved, its real embedded Triton) over real sockets. Each one asserts the
gRPC code and then that the model list, the version lists and the repository
on disk are as they were, and that nothing outside the repository was touched.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import grpc
import pytest

from mlserve_api.v1 import model_pb2
from tests.support.checks import delete_model_quietly, download, expect_error, nothing_written, tree
from tests.support.mlserve import MLServeProcess, Stubs
from tests.support.uploading import chunk, get_upload, header, stream, upload, upload_error

MiB = 1024 * 1024
Code = grpc.StatusCode


# --- symlinks and hard links ------------------------------------------------


def _plant(kind: str, planted: Path, outside: Path) -> None:
    """Replace ``planted`` with a link of ``kind`` to ``outside``."""
    if planted.is_dir() and not planted.is_symlink():
        import shutil

        shutil.rmtree(planted)
    else:
        planted.unlink()
    if kind == "hardlink":
        os.link(outside, planted)
    else:
        planted.symlink_to(outside)


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "directory-symlink"])
def test_link_planted_in_staging_is_refused(
    stubs: Stubs, mlserve: MLServeProcess, model_name: str, tmp_path: Path, kind: str
) -> None:
    home = mlserve.home
    data = os.urandom(MiB)
    files = {"model.py": b"# linked\n", "weights.bin": data}
    upload_id = f"{model_name}-u"
    half = [header(model_name, files, upload_id=upload_id), chunk("weights.bin", 0, data[:1000])]
    upload_error(stubs, Code.FAILED_PRECONDITION, half)
    staged_dir = home / "staging" / upload_id
    outside_dir = tmp_path / "outside"
    outside_dir.mkdir()
    outside = outside_dir / "weights.bin"
    outside.write_bytes(b"outside secret " * 10)
    if kind == "directory-symlink":
        _plant("symlink", staged_dir, outside_dir)
    else:
        _plant(kind, staged_dir / "weights.bin", outside)
    outside_before = tree(outside_dir)
    with nothing_written(stubs, home, untouched=[outside]):
        upload_error(stubs, Code.INVALID_ARGUMENT, stream(model_name, files, upload_id=upload_id))
    assert tree(outside_dir) == outside_before
    with contextlib.suppress(grpc.RpcError):
        status = get_upload(stubs, upload_id)
        assert status.received_bytes != outside.stat().st_size

    # Once the link is gone the upload resumes normally: the refusal held no lock.
    if kind == "directory-symlink":
        staged_dir.unlink()
    else:
        (staged_dir / "weights.bin").unlink()
    version = upload(stubs, stream(model_name, files, upload_id=upload_id))
    assert download(stubs, model_name, version.version) == files
    assert tree(outside_dir) == outside_before
    delete_model_quietly(stubs, model_name)
    assert outside.read_bytes() == b"outside secret " * 10


@pytest.mark.parametrize("kind", ["symlink", "hardlink"])
def test_link_planted_in_repository_is_not_followed_by_download(
    stubs: Stubs, mlserve: MLServeProcess, model_name: str, tmp_path: Path, kind: str
) -> None:
    secret = b"SECRET-OUTSIDE-THE-REPOSITORY " * 100
    outside = tmp_path / "secret.bin"
    outside.write_bytes(secret)
    files = {"model.py": b"# innocent\n", "weights.bin": os.urandom(len(secret))}
    version = upload(stubs, stream(model_name, files))
    planted = mlserve.home / "repository" / model_name / str(version.version) / "weights.bin"
    _plant(kind, planted, outside)
    received: list[bytes] = []

    def read_all(path: str = "") -> None:
        for piece in stubs.models.DownloadModelVersion(
            model_pb2.DownloadModelVersionRequest(
                model=model_name, version=version.version, path=path
            ),
            metadata=stubs.auth,
        ):
            received.append(piece.data)

    with nothing_written(stubs, mlserve.home, untouched=[outside]):
        expect_error(Code.INVALID_ARGUMENT, read_all)
        expect_error(Code.INVALID_ARGUMENT, read_all, "weights.bin")
    assert not any(b"SECRET" in data for data in received)
    delete_model_quietly(stubs, model_name)
    assert outside.read_bytes() == secret


def test_hard_link_planted_as_config_scratch_file_is_not_written_through(
    stubs: Stubs, mlserve: MLServeProcess, model_name: str, tmp_path: Path
) -> None:
    upload(stubs, stream(model_name, {"model.py": b"# v1\n"}))
    outside = tmp_path / "precious.txt"
    outside.write_bytes(b"precious bytes outside the repository\n")
    scratch = mlserve.home / "repository" / model_name / ".config.pbtxt.tmp"
    os.link(outside, scratch)
    try:
        with contextlib.suppress(grpc.RpcError):  # refusing is fine; writing through is not
            upload(stubs, stream(model_name, {"model.py": b"# v2\n"}))
        assert outside.read_bytes() == b"precious bytes outside the repository\n"
    finally:
        delete_model_quietly(stubs, model_name)
