"""Writing a downloaded version to disk, checked against its manifest."""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import BinaryIO

from mlserve_api.v1 import model_pb2
from mlserve_client.channel import StrPath
from mlserve_client.errors import DownloadError
from mlserve_client.layout import CONFIG_FILE


def safe_destination(dest: Path, relative: str) -> Path:
    """``dest/relative``, refusing a path that could land outside ``dest``."""
    parts = relative.split("/")
    if (
        not relative
        or "\x00" in relative
        or "\\" in relative
        or any(part in ("", ".", "..") for part in parts)
    ):
        raise DownloadError(f"refusing to write {relative!r}: not a plain relative path")
    target = dest.joinpath(*parts)
    if not target.resolve().is_relative_to(dest.resolve()):
        raise DownloadError(f"refusing to write {relative!r}: it resolves outside {dest}")
    return target


def artifact_destination(dest: StrPath, artifact_path: str) -> Path:
    """The file an artifact is written to: ``dest``, or inside it under the artifact's own
    name when ``dest`` is a directory or ends in '/' (then it is created if need be)."""
    text = os.fspath(dest)
    folder = Path(text).expanduser()
    if not (text.endswith(("/", os.sep)) or folder.is_dir()):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    return safe_destination(folder, PurePosixPath(artifact_path).name)


def partial_file(target: Path) -> Path:
    """Where the bytes of ``target`` are kept until it is complete and checked."""
    return target.with_name(target.name + ".part")


class _FileInProgress:
    """One file being written to ``<name>.part``, hashed as it grows.

    With ``resume`` an existing ``.part`` is kept and appended to (its bytes
    are hashed first); otherwise it starts empty.
    """

    def __init__(self, spec: model_pb2.FileManifest, target: Path, resume: bool = False) -> None:
        self.spec = spec
        self.target = target
        self.partial = partial_file(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        self.digest = hashlib.sha256()
        self.written = 0
        if resume and self.partial.is_file() and not self.partial.is_symlink():
            with self.partial.open("rb") as existing:
                while block := existing.read(1024 * 1024):
                    self.digest.update(block)
                    self.written += len(block)
            if self.written > spec.size:
                self.digest, self.written = hashlib.sha256(), 0
        self.handle: BinaryIO = self.partial.open("r+b" if self.written else "wb")
        self.handle.seek(self.written)
        self.handle.truncate()

    def append(self, chunk: model_pb2.FileChunk) -> None:
        if chunk.offset != self.written:
            raise DownloadError(
                f"{self.spec.path}: expected bytes at offset {self.written}, got {chunk.offset}"
            )
        if self.written + len(chunk.data) > self.spec.size:
            raise DownloadError(f"{self.spec.path}: more bytes than its {self.spec.size}")
        self.handle.write(chunk.data)
        self.digest.update(chunk.data)
        self.written += len(chunk.data)

    def complete(self) -> None:
        """Check size and digest, then move the file into place."""
        self.handle.close()
        if self.written != self.spec.size:
            raise DownloadError(
                f"{self.spec.path}: received {self.written} of {self.spec.size} bytes"
            )
        if self.digest.hexdigest() != self.spec.sha256.lower():
            raise DownloadError(f"{self.spec.path}: sha256 does not match the manifest")
        os.replace(self.partial, self.target)

    def discard(self) -> None:
        self.handle.close()
        with contextlib.suppress(FileNotFoundError):
            self.partial.unlink()


class VersionWriter:
    """Writes a version's chunks under ``dest``; use as a context manager, then ``finish()``."""

    def __init__(self, dest: Path, version: model_pb2.ModelVersion) -> None:
        self.dest = dest
        self.version = version
        self.expected = {spec.path: spec for spec in version.files}
        self.completed: set[str] = set()
        self._current: _FileInProgress | None = None
        dest.mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> VersionWriter:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._current is not None:
            self._current.discard()
            self._current = None

    def write(self, chunk: model_pb2.FileChunk) -> None:
        if self._current is None or self._current.spec.path != chunk.path:
            self._complete_current()
            self._current = self._start(chunk.path)
        self._current.append(chunk)

    def finish(self) -> None:
        """Complete the last file, create empty ones, check nothing is missing, write config."""
        self._complete_current()
        for path, spec in self.expected.items():
            if path not in self.completed:
                self._complete_unsent(spec)
        if self.version.config:
            safe_destination(self.dest, CONFIG_FILE).write_text(
                self.version.config, encoding="utf-8"
            )

    def _start(self, path: str) -> _FileInProgress:
        spec = self.expected.get(path)
        if spec is None:
            raise DownloadError(f"the server sent {path!r}, which is not in the manifest")
        if path in self.completed:
            raise DownloadError(f"the server sent {path!r} twice")
        return _FileInProgress(spec, safe_destination(self.dest, path))

    def _complete_current(self) -> None:
        if self._current is not None:
            self._current.complete()
            self.completed.add(self._current.spec.path)
            self._current = None

    def _complete_unsent(self, spec: model_pb2.FileManifest) -> None:
        """A file the stream carried no bytes of: fine only when it is empty."""
        if spec.size:
            raise DownloadError(f"{spec.path}: the server sent none of its {spec.size} bytes")
        self._current = self._start(spec.path)
        self._complete_current()


class ArtifactWriter:
    """Writes one artifact's chunks to ``dest``, resuming a ``.part`` left before."""

    def __init__(self, dest: Path, artifact: model_pb2.Artifact) -> None:
        spec = model_pb2.FileManifest(
            path=artifact.path, size=artifact.size_bytes, sha256=artifact.sha256
        )
        self._file = _FileInProgress(spec, dest, resume=True)

    @property
    def written(self) -> int:
        """Bytes already held: where the download starts."""
        return self._file.written

    def __enter__(self) -> ArtifactWriter:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._file.handle.close()  # keeps the .part, so a rerun resumes

    def write(self, chunk: model_pb2.FileChunk) -> None:
        self._file.append(chunk)

    def finish(self) -> None:
        """Check size and sha256, then move the file into place (a bad file is discarded)."""
        try:
            self._file.complete()
        except (DownloadError, OSError):
            self._file.discard()
            raise
