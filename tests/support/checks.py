"""Checks shared by the bad-input tests: the exact status code, and that nothing
was written (models, versions, the repository on disk) or changed."""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from mlserve_api.v1 import model_pb2
from tests.support.mlserve import Stubs


def expect_error(code: grpc.StatusCode, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Make the call, which must fail with ``code``; return the error."""

    def drain() -> None:
        result = call(*args, **kwargs)
        if isinstance(result, Iterator):  # a server stream fails while it is read
            for _ in result:
                pass

    with pytest.raises(grpc.RpcError) as failure:
        drain()
    error = failure.value
    assert error.code() == code, f"expected {code}, got {error.code()}: {error.details()}"
    assert "Traceback" not in (error.details() or "")
    return error


def version_numbers(stubs: Stubs, model: str) -> list[int]:
    response = stubs.models.ListModelVersions(
        model_pb2.ListModelVersionsRequest(model=model, page_size=1000), metadata=stubs.auth
    )
    return [v.version for v in response.versions]


def model_table(stubs: Stubs) -> dict[str, tuple[int, int]]:
    """Every model as name -> (latest_version, version_count)."""
    table: dict[str, tuple[int, int]] = {}
    token = ""
    while True:
        page = stubs.models.ListModels(
            model_pb2.ListModelsRequest(page_size=1000, page_token=token), metadata=stubs.auth
        )
        for m in page.models:
            table[m.name] = (m.latest_version, m.version_count)
        token = page.next_page_token
        if not token:
            return table


def tree(root: Path) -> dict[str, tuple[str, int, int]]:
    """Every entry under ``root``: relative path -> (kind, size, mtime_ns), not following links."""
    entries: dict[str, tuple[str, int, int]] = {}
    if not root.exists():
        return entries
    for directory, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(directory) / name
            info = path.lstat()
            kind = "link" if path.is_symlink() else "dir" if path.is_dir() else "file"
            size = 0 if kind == "dir" else info.st_size
            entries[str(path.relative_to(root))] = (kind, size, info.st_mtime_ns)
    return entries


def fingerprint(path: Path) -> tuple[str, int, int]:
    info = path.lstat()
    return hashlib.sha256(path.read_bytes()).hexdigest(), info.st_size, info.st_mtime_ns


@contextlib.contextmanager
def nothing_written(
    stubs: Stubs, home: Path, *, absent: Iterable[Path] = (), untouched: Iterable[Path] = ()
) -> Iterator[None]:
    """Assert on exit: models, versions and repository as before; ``absent`` paths
    still absent; ``untouched`` files byte-identical with the same mtime."""
    absent = list(absent)
    untouched = {path: fingerprint(path) for path in untouched}
    for path in absent:
        assert not os.path.lexists(path), f"{path} exists before the test"
    models_before = model_table(stubs)
    repository_before = tree(home / "repository")
    yield
    assert model_table(stubs) == models_before
    assert tree(home / "repository") == repository_before
    for path in absent:
        assert not os.path.lexists(path), f"{path} was created"
    for path, before in untouched.items():
        assert fingerprint(path) == before, f"{path} was changed"


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def download(stubs: Stubs, model: str, version: int = 0) -> dict[str, bytes]:
    received: dict[str, bytearray] = {}
    for piece in stubs.models.DownloadModelVersion(
        model_pb2.DownloadModelVersionRequest(model=model, version=version),
        metadata=stubs.auth,
        timeout=120,
    ):
        buffer = received.setdefault(piece.path, bytearray())
        assert piece.offset == len(buffer)
        buffer.extend(piece.data)
    return {path: bytes(data) for path, data in received.items()}


def delete_model_quietly(stubs: Stubs, name: str) -> None:
    with contextlib.suppress(grpc.RpcError):
        stubs.models.DeleteModel(model_pb2.DeleteModelRequest(name=name), metadata=stubs.auth)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
