"""Building upload streams by hand, so tests control every message."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import grpc

from mlserve_api.v1 import model_pb2
from tests.support.checks import expect_error
from tests.support.mlserve import Stubs

Request = model_pb2.UploadModelVersionRequest


def manifest(files: Mapping[str, bytes]) -> list[model_pb2.FileManifest]:
    return [
        model_pb2.FileManifest(path=path, size=len(data), sha256=hashlib.sha256(data).hexdigest())
        for path, data in sorted(files.items())
    ]


def header(
    model: str, files: Mapping[str, bytes], *, config: str = "", upload_id: str = ""
) -> Request:
    return Request(
        header=model_pb2.UploadHeader(
            model=model, upload_id=upload_id, files=manifest(files), config=config
        )
    )


def chunk(path: str, offset: int, data: bytes) -> Request:
    return Request(chunk=model_pb2.FileChunk(path=path, offset=offset, data=data))


def chunks(
    files: Mapping[str, bytes], size: int = 1024 * 1024, start: int = 0
) -> Iterator[Request]:
    for path, data in sorted(files.items()):
        for offset in range(start, len(data), size):
            yield chunk(path, offset, data[offset : offset + size])


def stream(
    model: str,
    files: Mapping[str, bytes],
    *,
    config: str = "",
    upload_id: str = "",
    size: int = 1024 * 1024,
) -> Iterator[Request]:
    yield header(model, files, config=config, upload_id=upload_id)
    yield from chunks(files, size)


def upload(stubs: Stubs, messages: Iterable[Request], timeout: float = 120) -> Any:
    return stubs.models.UploadModelVersion(iter(messages), metadata=stubs.auth, timeout=timeout)


def upload_error(stubs: Stubs, code: grpc.StatusCode, messages: Iterable[Request]) -> Any:
    return expect_error(code, upload, stubs, messages)


def get_upload(stubs: Stubs, upload_id: str) -> Any:
    return stubs.models.GetUpload(
        model_pb2.GetUploadRequest(upload_id=upload_id), metadata=stubs.auth, timeout=30
    )
