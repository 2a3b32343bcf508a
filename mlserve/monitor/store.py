"""Where the log's files live: a local directory (the default) or an ``s3://`` prefix.

Both are a pyarrow filesystem and a root in it, so the writer, retention, the
reader and the assays use one code path. A file becomes visible only once it is
complete: on a local disk it is written under a hidden temporary name and
renamed into place; in a bucket it is written whole in memory and sent as one
object (an S3 object exists only once its upload has completed). Each process
names its files with its own replica id, so replicas sharing a bucket never
write the same key.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mlserve.storage.s3 import S3Location

SUFFIX = ".parquet"
_TEMPORARY = ".tmp"
REPLICA = uuid.uuid4().hex[:8]
"""This process's part of every file name it writes."""


@dataclass(frozen=True)
class LogFile:
    path: str  # in the store's filesystem
    size: int
    modified: float  # seconds since the epoch


class LogStore:
    """The log's files under ``root`` of ``filesystem``."""

    def __init__(self, filesystem: Any, root: str, where: str, replica: str = REPLICA) -> None:
        self.filesystem = filesystem
        self.root = root.rstrip("/")
        self.where = where
        self.replica = replica
        self.local = isinstance(filesystem, pafs.LocalFileSystem)

    @staticmethod
    def local_directory(directory: Path) -> LogStore:
        return LogStore(pafs.LocalFileSystem(), str(directory.absolute()), str(directory))

    @staticmethod
    def at(where: Path | tuple[S3Location, str]) -> LogStore:
        """A local directory, or (a bucket location, the prefix under it)."""
        if isinstance(where, Path):
            return LogStore.local_directory(where)
        return LogStore.bucket(*where)

    @staticmethod
    def bucket(location: S3Location, under: str = "", replica: str = REPLICA) -> LogStore:
        """The ``under`` prefix of ``location`` (endpoint and region resolved as the
        repository resolves them; credentials the standard AWS way)."""
        resolved = location.resolved(os.environ)
        options: dict[str, Any] = {"region": resolved.region}
        if resolved.endpoint:
            scheme, _, host = resolved.endpoint.partition("://")
            options.update(endpoint_override=host.rstrip("/"), scheme=scheme,
                           force_virtual_addressing=False)  # fmt: skip
        # Delayed open: a small object is one PutObject when the stream closes, so a
        # process killed mid-write leaves no dangling multipart upload in the bucket.
        filesystem = pafs.S3FileSystem(
            **options, connect_timeout=3, request_timeout=60, allow_delayed_open=True
        )
        root = "/".join(part for part in (resolved.bucket, resolved.key(under)) if part)
        return LogStore(filesystem, root, f"s3://{root}", replica)

    @staticmethod
    def of(where: Path | LogStore) -> LogStore:
        return where if isinstance(where, LogStore) else LogStore.local_directory(where)

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def __str__(self) -> str:
        return self.where

    # --- writing ------------------------------------------------------------------

    def write_table(self, directory: str, table: Any, tag: str = "", **options: Any) -> int:
        """Write ``table`` as a new Parquet file under ``directory`` (relative to the
        root); returns its size. Readers never see it before it is complete.

        The name is ``part-<time>-<replica>-<tag><id>.parquet``: the replica id is this
        process's, ``tag`` (``w1-`` for worker 1) keeps forked workers apart too.

        Raises:
            OSError: the store cannot be written (full disk, permissions, no bucket).
        """
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        name = f"part-{stamp}-{self.replica}-{tag}{uuid.uuid4().hex[:12]}{SUFFIX}"
        final = self.path(directory, name)
        if not self.local:
            sink = pa.BufferOutputStream()
            pq.write_table(table, sink, **options)
            data = sink.getvalue()
            with self.filesystem.open_output_stream(final) as stream:
                stream.write(data)
            return int(data.size)
        folder = Path(self.path(directory))
        folder.mkdir(parents=True, exist_ok=True)
        temporary = folder / f".{name}{_TEMPORARY}"
        try:
            pq.write_table(table, temporary, **options)
            os.replace(temporary, final)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        return Path(final).stat().st_size

    def probe(self) -> None:
        """Write a probe file: raises OSError when the store is not writable.

        On a local disk the probe is removed again; in a bucket it stays (one small
        object, ``.probe``, overwritten each time: deleting it would make pyarrow
        leave a directory marker in its place).
        """
        # On a local disk one name per process: workers probing the same directory
        # must not delete each other's probe.
        probe = self.path(f".probe-{os.getpid()}" if self.local else ".probe")
        if self.local:
            Path(self.root).mkdir(parents=True, exist_ok=True)
        with self.filesystem.open_output_stream(probe) as stream:
            stream.write(b"")
        if self.local:
            self.filesystem.delete_file(probe)

    def sweep_temporary(self, older_than: float = 0.0) -> int:
        """Remove what a killed writer left half-written (a local disk only: a bucket never
        holds a partial object), untouched for ``older_than`` seconds: a writer still
        writing (another worker or replica) keeps its file; returns how many."""
        if not self.local:
            return 0
        removed = 0
        root = Path(self.root)
        if root.is_dir():
            before = time.time() - older_than
            for leftover in root.rglob(f".*{SUFFIX}{_TEMPORARY}"):
                with contextlib.suppress(FileNotFoundError):  # its writer just finished
                    if leftover.stat().st_mtime <= before:
                        leftover.unlink()
                        removed += 1
        return removed

    def delete(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.filesystem.delete_file(path)

    # --- reading ------------------------------------------------------------------

    def files(self, *under: str) -> list[LogFile]:
        """The complete log files under ``under`` (relative to the root), by path."""
        selector = pafs.FileSelector(self.path(*under), recursive=True, allow_not_found=True)
        found = [
            LogFile(info.path, info.size or 0, _seconds(info.mtime))
            for info in self.filesystem.get_file_info(selector)
            if info.type == pafs.FileType.File
            and info.base_name.endswith(SUFFIX)
            and not info.base_name.startswith(".")
        ]
        return sorted(found, key=lambda file: file.path)

    def models(self) -> list[str]:
        """The models the log has files of."""
        selector = pafs.FileSelector(self.root, recursive=False, allow_not_found=True)
        return sorted(
            info.base_name.removeprefix("model=")
            for info in self.filesystem.get_file_info(selector)
            if info.type == pafs.FileType.Directory and info.base_name.startswith("model=")
        )

    def remove_empty(self, *under: str) -> None:
        """Remove empty directories under ``under`` (a bucket has none to remove)."""
        if not self.local:
            return
        directory = Path(self.path(*under))
        if not directory.is_dir():
            return
        for sub in sorted(directory.rglob("*"), reverse=True):
            if sub.is_dir() and not any(sub.iterdir()):
                sub.rmdir()


def _seconds(moment: Any) -> float:
    return 0.0 if moment is None else float(moment.timestamp())
