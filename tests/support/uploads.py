"""Helpers for the upload ownership, listing and expiry tests."""

from __future__ import annotations

import hashlib
from pathlib import Path

import grpc

from mlserve_api.v1 import model_pb2
from tests.support.mlserve import Stubs
from tests.support.uploading import chunk, header, upload_error


def begin(caller: Stubs, model: str, upload_id: str, files: dict[str, bytes]) -> None:
    """Start an upload and stop it half-way through its largest file."""
    path, data = max(files.items(), key=lambda item: len(item[1]))
    first = [header(model, files, upload_id=upload_id), chunk(path, 0, data[: len(data) // 2])]
    upload_error(caller, grpc.StatusCode.FAILED_PRECONDITION, first)


def upload_ids(caller: Stubs, *, all_users: bool = False) -> list[str]:
    response = caller.models.ListUploads(
        model_pb2.ListUploadsRequest(page_size=1000, all_users=all_users), metadata=caller.auth
    )
    return [item.upload_id for item in response.uploads]


def missing(error: grpc.RpcError, upload_id: str) -> None:
    """``error`` is what a missing upload answers."""
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == f"upload {upload_id!r} does not exist"


def blob_file(home: Path, data: bytes) -> Path:
    digest = hashlib.sha256(data).hexdigest()
    return home / "blobs" / "sha256" / digest[:2] / digest
