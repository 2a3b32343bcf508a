"""The model repository on disk, in Triton's layout, plus its staging area.

``<root>/<model>/<version>/<files>`` and ``<root>/<model>/config.pbtxt`` (the
latest version's config, for a Triton that reads the directory itself).
Uploads land in ``<staging>/<upload_id>/`` first and move into place with one
atomic rename, so a half-written version is never visible to Triton or to a
reader. Every path is built with ``safe_join`` and every file is opened with
O_NOFOLLOW, and files with more than one hard link are refused: neither a
symlink nor a hard link planted in the tree can make MLServe read or write
outside it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from mlserve.errors import Aborted, FailedPrecondition, InvalidArgument
from mlserve.names import check_name, check_relative_path, safe_join

HASH_BLOCK = 4 * 1024 * 1024
CONFIG_FILE = "config.pbtxt"


class Repository:
    def __init__(self, root: Path, staging: Path) -> None:
        self.root = root
        self.staging = staging
        root.mkdir(parents=True, exist_ok=True)
        staging.mkdir(parents=True, exist_ok=True)

    # --- committed versions -------------------------------------------------

    def model_dir(self, model: str) -> Path:
        return safe_join(self.root, check_name(model, "model name"))

    def version_dir(self, model: str, version: int) -> Path:
        return safe_join(self.model_dir(model), str(int(version)))

    def version_file(self, model: str, version: int, path: str) -> Path:
        return safe_join(self.version_dir(model, version), check_relative_path(path))

    def open_version_file(self, model: str, version: int, path: str) -> BinaryIO:
        return open_regular_file(self.version_file(model, version, path))

    def write_model_config(self, model: str, config_text: str) -> None:
        """Write the model's config.pbtxt (the latest version's), atomically."""
        directory = self.model_dir(model)
        directory.mkdir(parents=True, exist_ok=True)
        target = safe_join(directory, CONFIG_FILE)
        # A fresh, exclusively created scratch file: writing to a fixed name
        # would follow a hard link planted there and truncate its target.
        fd, scratch = tempfile.mkstemp(prefix=f".{CONFIG_FILE}.", dir=directory)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(config_text)
            os.replace(scratch, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(scratch)
            raise

    def delete_version(self, model: str, version: int) -> None:
        _remove_tree(self.version_dir(model, version))

    def delete_model(self, model: str) -> None:
        _remove_tree(self.model_dir(model))

    # --- staging ------------------------------------------------------------

    def staging_dir(self, upload_id: str) -> Path:
        return safe_join(self.staging, check_name(upload_id, "upload_id"))

    def staged_file(self, upload_id: str, path: str) -> Path:
        return safe_join(self.staging_dir(upload_id), check_relative_path(path))

    def staged_size(self, upload_id: str, path: str) -> int:
        """Bytes of ``path`` received so far; 0 when nothing arrived."""
        try:
            info = os.lstat(self.staged_file(upload_id, path))
        except FileNotFoundError:
            return 0
        _require_plain_file(info, path)
        return info.st_size

    def open_staged_for_write(self, upload_id: str, path: str) -> int:
        """An O_WRONLY descriptor on the staged file, created if missing."""
        target = self.staged_file(upload_id, path)
        target.parent.mkdir(parents=True, exist_ok=True)
        # Re-check after mkdir: the directories now exist and can be resolved.
        target = self.staged_file(upload_id, path)
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise InvalidArgument(f"staged file {path!r} is a symlink") from None
            raise
        _require_plain_file(os.fstat(fd), path, fd)
        return fd

    def open_staged_for_read(self, upload_id: str, path: str) -> BinaryIO:
        return open_regular_file(self.staged_file(upload_id, path))

    def discard_staged_file(self, upload_id: str, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.staged_file(upload_id, path))

    def discard_staging(self, upload_id: str) -> None:
        _remove_tree(self.staging_dir(upload_id))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._lock_path(upload_id))

    @contextlib.contextmanager
    def upload_lock(self, upload_id: str) -> Iterator[None]:
        """Hold the upload exclusively, across threads and processes, or raise Aborted.

        flock locks belong to the open file description, so a second stream in
        this process or in another MLServe on the same disk is refused alike,
        and a killed process releases its lock with its descriptors.
        """
        fd = os.open(self._lock_path(upload_id), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise Aborted(
                    f"upload {upload_id!r} is being written by another stream; "
                    "wait for it to finish or fail, then resume"
                ) from None
            yield
        finally:
            os.close(fd)

    def commit_staging(self, upload_id: str, model: str, version: int) -> None:
        """Move the staged upload into place as ``model/version`` in one rename."""
        source = self.staging_dir(upload_id)
        source.mkdir(parents=True, exist_ok=True)  # a version may have no files
        target = self.version_dir(model, version)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            # Left by a commit whose database transaction rolled back after the
            # rename: no row names it, so it is safe to replace.
            _remove_tree(target)
        os.rename(source, target)

    def free_bytes(self) -> int:
        usage = shutil.disk_usage(self.staging)
        return usage.free

    def _lock_path(self, upload_id: str) -> Path:
        return safe_join(self.staging, f"{check_name(upload_id, 'upload_id')}.lock")


def open_regular_file(path: Path) -> BinaryIO:
    """Open ``path`` for reading, refusing symlinks, special files and hard links."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FailedPrecondition(f"file {path.name!r} is missing from the repository") from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise InvalidArgument(f"{path.name!r} is a symlink; refusing to follow it") from None
        raise
    _require_plain_file(os.fstat(fd), path.name, fd)
    return os.fdopen(fd, "rb")


def sha256_of(handle: BinaryIO) -> str:
    digest = hashlib.sha256()
    while block := handle.read(HASH_BLOCK):
        digest.update(block)
    return digest.hexdigest()


def _require_plain_file(info: os.stat_result, name: str, fd: int | None = None) -> None:
    if stat.S_ISREG(info.st_mode) and info.st_nlink == 1:
        return
    if fd is not None:
        os.close(fd)
    raise InvalidArgument(f"{name!r} is not a plain file (symlink, hard link or special file)")


def _remove_tree(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(path)
