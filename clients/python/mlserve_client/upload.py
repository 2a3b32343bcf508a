"""The messages of a resumable upload, read lazily from disk.

A file is read ahead on a thread of its own while the previous chunk is being
sent, and, when its digest is not known yet, hashed on another as it goes (both
release the GIL), so reading, hashing and sending overlap; its sha256 then
follows its bytes on an empty last chunk.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from mlserve_api.v1 import model_pb2
from mlserve_client.layout import LocalFile, LocalVersion

DEFAULT_CHUNK_SIZE = 1024 * 1024
MAX_CHUNK_SIZE = 4 * 1024 * 1024
"""The largest chunk the API accepts."""
READ_AHEAD = 4
"""Chunks read (and hashed) ahead of the one being sent: bounds the memory held."""

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


def as_declared(version: LocalVersion, upload: model_pb2.Upload | None) -> LocalVersion:
    """``version`` with each file's sha256 as ``upload`` declared it (a digest, or ""
    when it follows the bytes), so a resume sends the very header the upload began
    with, whoever began it and however; the server checks the bytes either way."""
    if upload is None:
        return version
    declared = {status.path: status.sha256 for status in upload.files}
    files = tuple(
        dataclasses.replace(file, sha256=declared.get(file.path, file.sha256))
        for file in version.files
    )
    return dataclasses.replace(version, files=files)


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
            if chunk.data:
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
    """Chunks of ``file`` from byte ``start`` to its declared end, read ahead on a thread.

    A file whose sha256 is not known is hashed on the way (the bytes before
    ``start``, which the server has, are read for that too) and its digest sent
    on an empty chunk at its end; a file that ends early is sent as far as it
    goes, without a digest, and the server reports it incomplete.
    """
    if start >= file.size and file.sha256:
        return
    reader = _ReadAhead(file, start, chunk_size)
    try:
        while True:
            item = reader.next()
            if isinstance(item, str):
                if item:
                    yield model_pb2.FileChunk(path=file.path, offset=file.size, sha256=item)
                return
            offset, data = item
            yield model_pb2.FileChunk(path=file.path, offset=offset, data=data)
    finally:
        reader.close()


class _ReadAhead:
    """Reads one file on a thread into a short queue: (offset, bytes) items, then the
    digest ("" when it was declared, or the file ended early) or the error raised."""

    def __init__(self, file: LocalFile, start: int, chunk_size: int) -> None:
        self.file = file
        self.start = start
        self.chunk_size = chunk_size
        self.items: queue.Queue[tuple[int, bytes] | str | BaseException] = queue.Queue(READ_AHEAD)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="mlserve-upload-read", daemon=True)
        self.thread.start()

    def next(self) -> tuple[int, bytes] | str:
        item = self.items.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        """Stop reading (the consumer may leave early) and wait for the thread."""
        self.stopped.set()
        while self.thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self.items.get(timeout=0.05)
        self.thread.join()

    def _run(self) -> None:
        try:
            self._read()
        except BaseException as error:  # handed to the consumer, raised there
            self._put(error)

    def _read(self) -> None:
        file = self.file
        hashing = _Hashing() if not file.sha256 else None
        try:
            self._read_into(hashing)
        finally:
            if hashing is not None:
                hashing.close()

    def _read_into(self, hashing: _Hashing | None) -> None:
        file = self.file
        with file.source.open("rb", buffering=0) as handle:
            offset = 0 if hashing is not None else self.start
            handle.seek(offset)
            while offset < file.size and not self.stopped.is_set():
                data = handle.read(min(self.chunk_size, file.size - offset))
                if not data:
                    break
                if hashing is not None:
                    hashing.update(data)
                if offset + len(data) > self.start:
                    skip = max(0, self.start - offset)
                    if not self._put((offset + skip, data[skip:] if skip else data)):
                        break
                offset += len(data)
        digest = "" if hashing is None else hashing.finish()
        self._put(digest if offset == file.size else "")

    def _put(self, item: tuple[int, bytes] | str | BaseException) -> bool:
        """Queue ``item`` unless the consumer has stopped; False when it has."""
        while not self.stopped.is_set():
            try:
                self.items.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False


class _Hashing:
    """A sha256 updated in order on a thread of its own, a few blocks behind the reader."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlserve-upload-hash")
        self.pending: deque[Future[None]] = deque()

    def update(self, data: bytes) -> None:
        self.pending.append(self.worker.submit(self.digest.update, data))
        while len(self.pending) > READ_AHEAD:
            self.pending.popleft().result()

    def finish(self) -> str:
        while self.pending:
            self.pending.popleft().result()
        return self.digest.hexdigest()

    def close(self) -> None:
        self.worker.shutdown(cancel_futures=True)


def _ignore_progress(done: int, total: int) -> None:
    del done, total
