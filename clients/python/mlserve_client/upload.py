"""The messages of a resumable upload, read lazily from disk."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

from mlserve_api.v1 import model_pb2
from mlserve_client.layout import LocalFile, LocalVersion

DEFAULT_CHUNK_SIZE = 2 * 1024 * 1024
MAX_CHUNK_SIZE = 4 * 1024 * 1024
"""The largest chunk the API accepts."""

Progress = Callable[[int, int], None]
"""Called with (bytes done, bytes in total) as the upload advances."""
Request = model_pb2.UploadModelVersionRequest


def received_offsets(upload: model_pb2.Upload | None) -> dict[str, int]:
    """Bytes the server already holds per file path; every byte once committed."""
    if upload is None:
        return {}
    if upload.state == model_pb2.UPLOAD_STATE_COMMITTED:
        return {status.path: status.size for status in upload.files}
    return {status.path: status.received_bytes for status in upload.files}


def resume_offset(file: LocalFile, received: Mapping[str, int]) -> int:
    """Where sending ``file`` starts: after what arrived, never past its end."""
    return max(0, min(received.get(file.path, 0), file.size))


def upload_requests(
    model: str,
    upload_id: str,
    version: LocalVersion,
    received: Mapping[str, int],
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: Progress | None = None,
) -> Iterator[Request]:
    """The header, then every byte the server still lacks, chunk by chunk."""
    yield version_header(model, upload_id, version)
    for chunk in missing_chunks(version.files, received, chunk_size=chunk_size, progress=progress):
        yield Request(chunk=chunk)


def version_header(model: str, upload_id: str, version: LocalVersion) -> Request:
    """The first message of a version upload: what the version holds."""
    header = model_pb2.UploadHeader(
        model=model, upload_id=upload_id, files=version.manifest(), config=version.config
    )
    return Request(header=header)


def missing_chunks(
    files: Sequence[LocalFile],
    received: Mapping[str, int],
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: Progress | None = None,
) -> Iterator[model_pb2.FileChunk]:
    """Every byte of ``files`` the server still lacks, chunk by chunk."""
    if not 0 < chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk_size must be between 1 and {MAX_CHUNK_SIZE} bytes")
    report = progress or _ignore_progress
    total = sum(file.size for file in files)
    done = sum(resume_offset(file, received) for file in files)
    report(done, total)
    for file in files:
        for chunk in file_chunks(file, resume_offset(file, received), chunk_size):
            yield chunk
            done += len(chunk.data)
            report(done, total)


def artifact_requests(
    header: model_pb2.ArtifactUploadHeader,
    file: LocalFile,
    received: Mapping[str, int],
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: Progress | None = None,
) -> Iterator[model_pb2.UploadArtifactRequest]:
    """The artifact's header, then every byte the server still lacks."""
    yield model_pb2.UploadArtifactRequest(header=header)
    for chunk in missing_chunks([file], received, chunk_size=chunk_size, progress=progress):
        yield model_pb2.UploadArtifactRequest(chunk=chunk)


def file_chunks(file: LocalFile, start: int, chunk_size: int) -> Iterator[model_pb2.FileChunk]:
    """Chunks of ``file`` from byte ``start`` to its declared end, one read at a time."""
    if start >= file.size:
        return
    with file.source.open("rb") as handle:
        handle.seek(start)
        offset = start
        while offset < file.size:
            data = handle.read(min(chunk_size, file.size - offset))
            if not data:
                return
            yield model_pb2.FileChunk(path=file.path, offset=offset, data=data)
            offset += len(data)


def _ignore_progress(done: int, total: int) -> None:
    del done, total
