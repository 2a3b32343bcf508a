"""Reading a local model folder: which files make the version, and its manifest.

Two shapes are understood:

* a Triton model directory: ``config.pbtxt`` and numbered version folders
  (``1/``, ``2/`` …); the highest number is the version unless one is named;
* a flat folder holding the version's files, with an optional ``config.pbtxt``
  beside them (which is the config, not one of the files).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from mlserve_api.v1 import model_pb2
from mlserve_client.digests import file_identity
from mlserve_client.errors import ModelDirectoryError

CONFIG_FILE = "config.pbtxt"
_HASH_BLOCK = 1024 * 1024


@dataclass(frozen=True)
class LocalFile:
    """One file of a local version."""

    path: str
    """Relative to the version folder, '/'-separated."""
    source: Path
    """Where it is on disk."""
    size: int
    sha256: str
    """Lower-case hex digest; "" when not known yet (it is computed while sending)."""
    identity: str = ""
    """What identifies this unchanged file on disk (``digests.file_identity``)."""

    @property
    def content_key(self) -> str:
        """The digest, or, before it is known, the file's identity on this disk."""
        return self.sha256 or f"local:{self.identity}"

    def manifest(self) -> model_pb2.FileManifest:
        return model_pb2.FileManifest(path=self.path, size=self.size, sha256=self.sha256)


@dataclass(frozen=True)
class LocalVersion:
    """A version as found on disk: its files (sorted by path) and config text."""

    root: Path
    """The folder the file paths are relative to."""
    files: tuple[LocalFile, ...]
    config: str
    """config.pbtxt text, empty when there is none."""

    @property
    def size_bytes(self) -> int:
        return sum(file.size for file in self.files)

    def manifest(self) -> list[model_pb2.FileManifest]:
        return [file.manifest() for file in self.files]

    def canonical_manifest(self) -> str:
        """Config and every file's path, size and digest (or, for a file not hashed yet,
        its identity on this disk), as one stable string."""
        return json.dumps(
            {"config": self.config, "files": [[f.path, f.size, f.content_key] for f in self.files]},
            separators=(",", ":"),
        )


def derive_upload_id(model: str, version: LocalVersion, scope: str = "") -> str:
    """An upload id that is the same whenever the same content goes to the same model.

    ``scope`` names who uploads (the client passes its key's id): uploads belong
    to their creator, so two users sending the same content must not meet on
    one id.
    """
    scoped = f"\n{scope}" if scope else ""
    digest = hashlib.sha256(f"{model}\n{version.canonical_manifest()}{scoped}".encode())
    return "c-" + digest.hexdigest()[:40]


KnownDigest = Callable[[str], str]
"""The sha256 known for a file identity, "" when none (``DigestCache.get``)."""


def read_model_directory(
    path: Path, version_dir: str | None = None, *, known: KnownDigest | None = None
) -> LocalVersion:
    """Find the version in ``path`` and describe every file of it.

    Every file is hashed, unless ``known`` is given: then each file gets the
    digest ``known`` has for it, or none ("", to be computed while it is sent).
    """
    if not path.is_dir():
        raise ModelDirectoryError(f"{path} is not a directory")
    root = _version_root(path, version_dir)
    is_flat = root == path
    files = sorted(
        (
            _describe(relative, source, known)
            for relative, source in _regular_files(root)
            if not (is_flat and relative == CONFIG_FILE)
        ),
        key=lambda file: file.path,
    )
    if not files:
        raise ModelDirectoryError(f"{root} holds no files to upload")
    return LocalVersion(root=root, files=tuple(files), config=_read_config(path / CONFIG_FILE))


def numbered_folders(path: Path) -> list[int]:
    """Version numbers of the numbered subfolders of ``path``, lowest first."""
    with os.scandir(path) as entries:
        return sorted(
            int(entry.name)
            for entry in entries
            if entry.name.isascii() and entry.name.isdigit() and entry.is_dir()
        )


def file_sha256(path: Path) -> tuple[int, str]:
    """Size and hex sha256 of a file, read a block at a time."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while block := handle.read(_HASH_BLOCK):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


def _version_root(path: Path, version_dir: str | None) -> Path:
    if version_dir is not None:
        return _named_version_folder(path, version_dir)
    numbers = numbered_folders(path)
    if not numbers:
        return path
    return _require_not_symlink(path / str(numbers[-1]))


def _named_version_folder(path: Path, version_dir: str) -> Path:
    if version_dir in ("", ".", "..") or "/" in version_dir or "\\" in version_dir:
        raise ModelDirectoryError(
            f"--version-dir must name a folder directly inside {path}, not {version_dir!r}"
        )
    folder = _require_not_symlink(path / version_dir)
    if not folder.is_dir():
        raise ModelDirectoryError(f"{folder} is not a directory")
    return folder


def _require_not_symlink(path: Path) -> Path:
    if path.is_symlink():
        raise ModelDirectoryError(f"{path} is a symbolic link; copy the real file or folder there")
    return path


def _regular_files(folder: Path, prefix: str = "") -> Iterator[tuple[str, Path]]:
    """Every regular file under ``folder`` as (relative path, location); refuse anything else."""
    with os.scandir(folder) as scan:
        entries = sorted(scan, key=lambda entry: entry.name)
    for entry in entries:
        relative = prefix + entry.name
        location = _require_not_symlink(Path(entry.path))
        if entry.is_dir(follow_symlinks=False):
            yield from _regular_files(location, relative + "/")
        elif entry.is_file(follow_symlinks=False):
            yield relative, location
        else:
            raise ModelDirectoryError(f"{location} is not a regular file or folder")


def _describe(relative: str, source: Path, known: KnownDigest | None) -> LocalFile:
    info = source.stat()
    identity = file_identity(info)
    if known is None:
        size, sha256 = file_sha256(source)
    else:
        size, sha256 = info.st_size, known(identity)
    return LocalFile(path=relative, source=source, size=size, sha256=sha256, identity=identity)


def _read_config(config: Path) -> str:
    if not config.exists() and not config.is_symlink():
        return ""
    _require_not_symlink(config)
    if not config.is_file():
        raise ModelDirectoryError(f"{config} is not a regular file")
    return config.read_text(encoding="utf-8")
