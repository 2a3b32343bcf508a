"""The model repository in Triton's layout, its content store and its staging area.

``Repository`` is the interface the catalog, uploads and deployments use:
staging (always on this replica's local disk) is implemented here; where
committed versions and stored contents live is up to an implementation:
``LocalRepository`` (below, the default) or ``S3Repository`` (``s3.py``: a
bucket, so replicas on several machines share it).

The local layout:

``<root>/<model>/<version>/<files>`` and ``<root>/<model>/config.pbtxt`` (the
latest version's config, for a Triton that reads the directory itself).
Uploads land in ``<staging>/<upload_id>/`` first and move into place with one
atomic rename, so a half-written version is never visible to Triton or to a
reader. Their locks are ``<locks>/<upload_id>`` (``upload-locks``, a sibling of
staging): in a directory of their own, no id's lock can be another id's
staging directory, whatever the ids (``X`` and ``X.lock``). Every path
is built with ``safe_join`` and every file is opened with O_NOFOLLOW, and
files with more than one hard link are refused: neither a symlink nor a hard
link planted in the tree can make MLServe read or write outside it.

File contents are stored once, by sha256, in ``<blobs>/sha256/ab/abcd…`` (a
sibling of the repository, so Triton never sees it as a model, and on the same
file system, so versions hard-link to it). A version file may therefore have
several links, but only as the very inode of its blob; where the file system
refuses links, the version gets a copy (one link) instead.
"""

from __future__ import annotations

import abc
import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from mlserve.core.errors import Aborted, FailedPrecondition, InvalidArgument
from mlserve.core.names import check_name, check_relative_path, safe_join

if TYPE_CHECKING:
    from mlserve.storage.blobs import FileSpec

log = logging.getLogger(__name__)

HASH_BLOCK = 4 * 1024 * 1024
CONFIG_FILE = "config.pbtxt"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_SCRATCH_PREFIX = ".copy."
_CONTENT_LOCK_FILE = ".lock"
# Where locks lived before they moved to .locks: ``<staging>/<upload_id>.lock``.
_OLD_LOCK_SUFFIX = ".lock"
# link(2) failures that mean "this file system cannot link here": copy instead.
_CANNOT_LINK = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES})


class Repository(abc.ABC):
    """Where versions and contents are kept (an implementation's part) and how uploads
    are staged on this replica's disk (this class's part).

    Every method blocks: call it in a thread.
    """

    def __init__(self, staging: Path, locks: Path | None = None) -> None:
        self.staging = staging
        self.locks = locks if locks is not None else staging.parent / "upload-locks"
        for directory in (staging, self.locks):
            directory.mkdir(parents=True, exist_ok=True)

    def check(self) -> None:  # noqa: B027 (a local disk has nothing to reach)
        """Reach the storage and make its repository's root; Unavailable, naming where,
        when it cannot be reached."""

    def describe(self) -> str:
        """Where versions and contents are kept, for logs and messages."""
        return "local disk"

    # --- committed versions -------------------------------------------------

    @abc.abstractmethod
    def open_version_file(self, model: str, version: int, path: str, sha256: str = "") -> BinaryIO:
        """Open a committed file of ``model`` ``version`` for reading (sha256: its blob)."""

    @abc.abstractmethod
    def write_model_config(self, model: str, config_text: str) -> None:
        """Write the model's config.pbtxt (the latest version's) in one step."""

    @abc.abstractmethod
    def publish_version(
        self, upload_id: str, model: str, version: int, files: Sequence[FileSpec], config: str
    ) -> None:
        """Put the stored blobs ``files`` in place as ``model``/``version``, then its config.

        The version's files come first and config.pbtxt last, so a Triton reading
        the repository never sees a config naming files not there yet.
        """

    def place_version(  # noqa: B027 (publish_version placed it, where that is enough)
        self, model: str, version: int, files: Sequence[FileSpec], config: str
    ) -> None:
        """Before a Triton that reads this repository loads ``model``/``version`` by name:
        make sure its files are in Triton's layout, then its config (files first)."""

    @abc.abstractmethod
    def delete_version(self, model: str, version: int) -> None: ...

    @abc.abstractmethod
    def delete_model(self, model: str) -> None: ...

    # --- contents (blobs) -----------------------------------------------------

    @abc.abstractmethod
    def has_blob(self, sha256: str, size: int, location: str = "") -> bool:
        """True when blob ``sha256`` is stored with ``size`` bytes at ``location`` (its
        row's ``Blob.location``; "": by its digest)."""

    @abc.abstractmethod
    def store_blob(self, upload_id: str, path: str, sha256: str) -> str:
        """Move the verified staged file ``path`` into the store as ``sha256``
        (a blob already stored is kept and the staged copy dropped); return where
        the blob is, for its row: "" when the store finds it by its digest."""

    @abc.abstractmethod
    def open_blob(self, sha256: str) -> BinaryIO: ...

    @abc.abstractmethod
    def remove_blob(self, sha256: str, location: str = "") -> None: ...

    @abc.abstractmethod
    def stored_blobs(self) -> Iterator[tuple[str, str]]:
        """(sha256, location) of every stored blob: sha256 "" when only its location
        (an object key of its own) names it, location "" when it is by digest."""

    @abc.abstractmethod
    def content_lock(self, *, exclusive: bool) -> contextlib.AbstractContextManager[None]:
        """The lock that orders blob collection against uploads (see blobs.py), held
        across every MLServe process sharing this store."""

    # --- staging ------------------------------------------------------------

    def staging_dir(self, upload_id: str) -> Path:
        return safe_join(self.staging, check_name(upload_id, "upload_id"))

    def staged_file(self, upload_id: str, path: str) -> Path:
        return safe_join(self.staging_dir(upload_id), check_relative_path(path))

    def _staged_file_with_parents(self, upload_id: str, path: str) -> Path:
        """``staged_file``, with its directories created and the path checked again:
        only once they exist can they be resolved (a planted symlink seen)."""
        target = self.staged_file(upload_id, path)
        target.parent.mkdir(parents=True, exist_ok=True)
        return self.staged_file(upload_id, path)

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
        target = self._staged_file_with_parents(upload_id, path)
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

    def staged_uploads(self) -> list[str]:
        """The upload ids with a staging directory (removing lock files of the old layout)."""
        found = []
        for entry in sorted(self.staging.iterdir()):
            if entry.is_dir() and not entry.is_symlink():
                found.append(entry.name)
            elif entry.name.endswith(_OLD_LOCK_SUFFIX) and entry.is_file():
                entry.unlink()
        return found

    def committed_size(self, upload_id: str, path: str) -> int:
        """Bytes of staged ``path`` kept durably beyond this replica's disk (0: none)."""
        return 0

    def checkpoint(self, upload_id: str, path: str, received: int) -> None:  # noqa: B027
        """Called as staged ``path`` grows to ``received`` bytes: an implementation may
        commit whole parts of it elsewhere (a bucket), so another replica can resume."""

    def settle(self, upload_id: str) -> None:  # noqa: B027
        """At the end of a stream on the upload (its lock still held): wait for any
        work ``checkpoint`` left running, so the next stream starts from what is recorded."""

    def restore_staged(self, upload_id: str, path: str) -> None:  # noqa: B027
        """Before a stream resumes: bring what was committed elsewhere of ``path`` back
        into local staging when it is more than this disk has."""

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

    def free_bytes(self) -> int:
        usage = shutil.disk_usage(self.staging)
        return usage.free

    def _lock_path(self, upload_id: str) -> Path:
        return safe_join(self.locks, check_name(upload_id, "upload_id"))


class LocalRepository(Repository):
    """Versions and contents on a local (or shared) disk, in Triton's layout."""

    def __init__(
        self, root: Path, staging: Path, blobs: Path | None = None, locks: Path | None = None
    ) -> None:
        super().__init__(staging, locks)
        self.root = root
        self.blobs = blobs if blobs is not None else root.parent / "blobs"
        for directory in (root, self.blobs):
            directory.mkdir(parents=True, exist_ok=True)

    # --- committed versions -------------------------------------------------

    def model_dir(self, model: str) -> Path:
        return safe_join(self.root, check_name(model, "model name"))

    def version_dir(self, model: str, version: int) -> Path:
        return safe_join(self.model_dir(model), str(int(version)))

    def version_file(self, model: str, version: int, path: str) -> Path:
        return safe_join(self.version_dir(model, version), check_relative_path(path))

    def open_version_file(self, model: str, version: int, path: str, sha256: str = "") -> BinaryIO:
        """Open a committed file; several links are allowed only as the inode of blob ``sha256``."""
        return open_regular_file(
            self.version_file(model, version, path), self._blob_inode(sha256) if sha256 else None
        )

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

    def publish_version(
        self, upload_id: str, model: str, version: int, files: Sequence[FileSpec], config: str
    ) -> None:
        for spec in files:
            self.link_staged_blob(upload_id, spec.path, spec.sha256)
        self.commit_staging(upload_id, model, version)
        self.write_model_config(model, config)

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

    def link_staged_blob(self, upload_id: str, path: str, sha256: str) -> None:
        """Put blob ``sha256`` at ``path`` of the staged upload: a hard link, or a copy."""
        target = self._staged_file_with_parents(upload_id, path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(target)  # left by a commit that failed after linking
        _link_or_copy(self.blob_path(sha256), target)

    # --- blobs --------------------------------------------------------------

    def blob_path(self, sha256: str) -> Path:
        if not _SHA256.fullmatch(sha256):
            raise InvalidArgument(f"{sha256!r} is not a lower-case hex sha256")
        return safe_join(self.blobs, "sha256", sha256[:2], sha256)

    def has_blob(self, sha256: str, size: int, location: str = "") -> bool:
        """True when blob ``sha256`` is on disk, a regular file of ``size`` bytes (on a
        disk every blob is by its digest: ``location`` is always "")."""
        try:
            info = os.lstat(self.blob_path(sha256))
        except FileNotFoundError:
            return False
        return stat.S_ISREG(info.st_mode) and info.st_size == size

    def store_blob(self, upload_id: str, path: str, sha256: str) -> str:
        """Move the verified staged file ``path`` into the blob store as ``sha256``; ""
        (a blob on disk is found by its digest).

        A blob already there is kept (its inode is what versions link to) and
        the staged copy dropped.
        """
        source = self.staged_file(upload_id, path)
        target = self.blob_path(sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            _link_or_copy(source, target)
        except FileExistsError:
            pass
        else:
            # Read-only: every version linking it shares this inode.
            os.chmod(target, 0o444)
        os.unlink(source)
        return ""

    def open_blob(self, sha256: str) -> BinaryIO:
        """Open a blob for reading (not through a symlink; any number of links)."""
        return open_regular_file(self.blob_path(sha256), self._blob_inode(sha256))

    def remove_blob(self, sha256: str, location: str = "") -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.blob_path(sha256))

    def stored_blobs(self) -> Iterator[tuple[str, str]]:
        """Every blob file on disk, by digest (removing scratch copies a crash left)."""
        for shard in sorted((self.blobs / "sha256").glob("??")):
            for entry in sorted(shard.iterdir()):
                if _SHA256.fullmatch(entry.name) and entry.name[:2] == shard.name:
                    yield entry.name, ""
                elif entry.name.startswith(_SCRATCH_PREFIX) and not entry.is_symlink():
                    entry.unlink()

    def _blob_inode(self, sha256: str) -> tuple[int, int] | None:
        try:
            info = os.lstat(self.blob_path(sha256))
        except FileNotFoundError:
            return None
        return (info.st_dev, info.st_ino) if stat.S_ISREG(info.st_mode) else None

    @contextlib.contextmanager
    def content_lock(self, *, exclusive: bool) -> Iterator[None]:
        # flock, so it also orders several MLServe processes sharing the disk.
        with flocked(self.blobs / _CONTENT_LOCK_FILE, exclusive=exclusive):
            yield


@contextlib.contextmanager
def flocked(path: Path, *, exclusive: bool) -> Iterator[None]:
    """Hold a (shared or exclusive) flock on ``path``, created if missing."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def open_regular_file(path: Path, inode: tuple[int, int] | None = None) -> BinaryIO:
    """Open ``path`` for reading, refusing symlinks, special files and hard links.

    Several links are allowed only when the file is ``inode`` (device, inode):
    a blob of MLServe's own store.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FailedPrecondition(f"file {path.name!r} is missing from the repository") from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise InvalidArgument(f"{path.name!r} is a symlink; refusing to follow it") from None
        raise
    info = os.fstat(fd)
    if inode is None or (info.st_dev, info.st_ino) != inode:
        _require_plain_file(info, path.name, fd)
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


def _link_or_copy(source: Path, target: Path) -> None:
    """Hard-link ``source`` as ``target``; copy where links are refused. Never overwrites."""
    try:
        os.link(source, target, follow_symlinks=False)
        return
    except OSError as error:
        if error.errno not in _CANNOT_LINK:
            raise
        log.warning("cannot hard-link %s (%s); copying it instead", source, error.strerror)
    if os.path.lexists(target):
        raise FileExistsError(errno.EEXIST, "already there", str(target))
    source_fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(source_fd).st_mode):
        os.close(source_fd)
        raise InvalidArgument(f"{source.name!r} is not a regular file")
    fd, scratch = tempfile.mkstemp(prefix=_SCRATCH_PREFIX, dir=target.parent)
    try:
        with os.fdopen(source_fd, "rb") as reader, os.fdopen(fd, "wb") as writer:
            shutil.copyfileobj(reader, writer, HASH_BLOCK)
        os.replace(scratch, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(scratch)
        raise


def _remove_tree(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(path)
