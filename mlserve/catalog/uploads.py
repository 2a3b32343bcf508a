"""Resumable, checksummed uploads of model versions.

The rules follow Google Cloud Storage's resumable writes. Each file's
received offset is the size of its staged file: it never decreases, bytes
re-sent below it are skipped, a chunk that starts beyond it (a gap) or runs
past the declared size is OUT_OF_RANGE. Bytes go to disk as they arrive, so a
killed server keeps what it wrote; the version exists only once every file
matches its declared size and sha256.

A file's sha256 may also follow its bytes (the header leaves it empty, the
chunk that ends the file carries it), so a client can hash while it sends
instead of reading the file twice. The server hashes what it writes on a
thread of its own, beside the writer thread, and checks the two at commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
from collections import deque
from collections.abc import AsyncIterator, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import peewee as pw

from mlserve.access import rules
from mlserve.access.users import user_names
from mlserve.catalog.artifacts import (
    ARTIFACT_KINDS,
    ArtifactRecord,
    Artifacts,
    artifact_blobs,
    find_artifact,
)
from mlserve.catalog.datasets import (
    DATASET_UPLOAD,
    Datasets,
    DatasetVersionRecord,
    check_dataset_file,
    dataset_blobs,
    dataset_version_row,
    find_dataset_version,
    hidden_dataset,
    writable_dataset,
)
from mlserve.catalog.models import (
    check_upload,
    downloadable_model_ids,
    hidden_model,
    writable_model,
)
from mlserve.catalog.namespace import refuse_pipeline_name
from mlserve.catalog.versions import VersionRecord, Versions, find_version, version_blobs
from mlserve.core.errors import (
    Aborted,
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    ResourceExhausted,
)
from mlserve.core.names import check_name, check_relative_path
from mlserve.core.paging import Listing, Page
from mlserve.storage import db, tables, writeback
from mlserve.storage.blobs import Blobs, FileSpec
from mlserve.storage.db import in_thread
from mlserve.storage.repository import Repository, sha256_of
from mlserve.triton import modelconfig

log = logging.getLogger(__name__)

MAX_FILES = 10_000
# Room left on the disk beyond an upload, so the database and logs can still write.
DISK_RESERVE_BYTES = 256 * 1024 * 1024
_HEX = frozenset("0123456789abcdef")
# Chunks handed to the writer thread but not yet on disk: enough to overlap
# receiving with writing, few enough to bound memory (each at most 4 MiB).
_WRITES_IN_FLIGHT = 2


@dataclass(frozen=True)
class UploadHeader:
    model: str
    upload_id: str
    files: Sequence[FileSpec]
    config: str = ""
    # The dataset version the model was trained on: (dataset, version; 0 the latest).
    training_dataset: tuple[str, int] | None = None


@dataclass(frozen=True)
class DatasetUploadHeader:
    dataset: str
    upload_id: str
    files: Sequence[FileSpec]


@dataclass(frozen=True)
class ArtifactHeader:
    model: str
    version: int
    upload_id: str
    kind: str
    file: FileSpec


@dataclass(frozen=True)
class Chunk:
    path: str
    offset: int
    data: bytes
    # The whole file's sha256, on the chunk that ends it, when the header left it empty.
    sha256: str = ""


@dataclass(frozen=True)
class FileProgress:
    spec: FileSpec
    received: int


@dataclass(frozen=True)
class UploadRecord:
    upload_id: str
    model: str
    files: list[FileProgress]
    committed_version: int
    create_time: dt.datetime
    update_time: dt.datetime
    # The user who began it ("" for an upload from before owners).
    owner: str = ""
    # When it is deleted unless resumed first; None once committed.
    expire_time: dt.datetime | None = None

    @property
    def received_bytes(self) -> int:
        """Bytes received (or already stored) so far, over every file."""
        return sum(progress.received for progress in self.files)

    @property
    def size_bytes(self) -> int:
        """Bytes of every file the upload declared."""
        return sum(progress.spec.size for progress in self.files)


@dataclass(frozen=True)
class UploadLimits:
    max_upload_bytes: int = 64 * 1024**3
    max_chunk_bytes: int = 4 * 1024 * 1024
    # Staging one user's unfinished uploads may fill together.
    max_staging_bytes: int = 128 * 1024**3
    # How long an unfinished upload may sit untouched before it is deleted.
    expire_after: dt.timedelta = dt.timedelta(hours=24)
    allowed_backends: frozenset[str] = frozenset({"python"})
    """Backends an uploaded config may name (--allowed-backends)."""


@dataclass(frozen=True)
class _UploadPlan:
    """A checked header: what the upload must produce."""

    model: str
    upload_id: str
    files: dict[str, FileSpec]
    config: str
    manifest_sha256: str
    # An artifact upload: its kind and the version it attaches to (a dataset
    # version's upload: DATASET_UPLOAD, and model names the dataset).
    artifact_kind: str = ""
    artifact_version: int = 0
    # A model version's training dataset version (its row id), if named.
    training_dataset_id: int | None = None


class _StagedFile:
    """One file being written: where it is, and a running digest while that is possible."""

    def __init__(self, spec: FileSpec, received: int, stored: bool = False) -> None:
        self.spec = spec
        # The content is a blob this upload pins: no bytes are needed, all count as received.
        self.stored = stored
        self.received = spec.size if stored else received  # on disk (the writer thread's)
        self.accepted = self.received  # taken for writing, in flight or done (event loop)
        self.fd: int | None = None
        self.writeback: writeback.Growing | None = None  # with fd, from this stream's start
        # The running digest covers the file only if this stream wrote it from
        # byte 0; after a resume the prefix is hashed from disk at commit.
        self.digest: Any = hashlib.sha256() if self.received == 0 else None
        # The digest sent after the bytes (FileChunk.sha256), for a file declared without one.
        self.trailing_sha256 = ""

    @property
    def expected_sha256(self) -> str:
        """The digest the file must have: declared in the header, or sent after its bytes."""
        return self.spec.sha256 or self.trailing_sha256


class Uploads:
    def __init__(
        self,
        repository: Repository,
        versions: Versions,
        artifacts: Artifacts,
        blobs: Blobs,
        limits: UploadLimits,
        datasets: Datasets | None = None,
    ) -> None:
        self.repository = repository
        self.versions = versions
        self.artifacts = artifacts
        self.datasets = datasets or Datasets(repository, versions.tokens, blobs)
        self.blobs = blobs
        self.limits = limits

    async def receive(self, parts: AsyncIterator[UploadHeader | Chunk]) -> VersionRecord:
        """Consume one upload stream: a header, then chunks. Returns the version."""
        header = await anext(parts, None)
        if not isinstance(header, UploadHeader):
            raise InvalidArgument("the first message of an upload must be its header")
        result = await self._receive(await in_thread(self._plan)(header), parts)
        assert isinstance(result, VersionRecord)
        return result

    async def receive_artifact(
        self, parts: AsyncIterator[ArtifactHeader | Chunk]
    ) -> ArtifactRecord:
        """Consume one artifact upload stream: a header, then chunks. Returns the artifact."""
        header = await anext(parts, None)
        if not isinstance(header, ArtifactHeader):
            raise InvalidArgument("the first message of an artifact upload must be its header")
        result = await self._receive(await in_thread(self._plan_artifact)(header), parts)
        assert isinstance(result, ArtifactRecord)
        return result

    async def receive_dataset(
        self, parts: AsyncIterator[DatasetUploadHeader | Chunk]
    ) -> DatasetVersionRecord:
        """Consume one dataset version's upload stream: a header, then chunks.

        Every file must parse as CSV or Parquet (InvalidArgument with the
        parser's message otherwise, and the upload is dropped: nothing of it
        stays committed or staged). Returns the version.
        """
        header = await anext(parts, None)
        if not isinstance(header, DatasetUploadHeader):
            raise InvalidArgument("the first message of a dataset upload must be its header")
        result = await self._receive(await in_thread(self._plan_dataset)(header), parts)
        assert isinstance(result, DatasetVersionRecord)
        return result

    async def _receive(
        self,
        plan: _UploadPlan,
        parts: AsyncIterator[UploadHeader | ArtifactHeader | DatasetUploadHeader | Chunk],
    ) -> VersionRecord | ArtifactRecord | DatasetVersionRecord:
        committed = await in_thread(self._open_record)(plan)
        if committed is not None:
            return committed
        with self.repository.upload_lock(plan.upload_id):
            staged = await in_thread(self._stage)(plan)
            # One writer thread and one hashing thread per upload: writes (and
            # the final close) run in order, and so do digest updates, off the
            # event loop and beside each other (both release the GIL), while
            # the next chunk is being received.
            writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="upload")
            hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="upload-hash")
            loop = asyncio.get_running_loop()
            in_flight: deque[asyncio.Future[None]] = deque()
            try:
                async for part in parts:
                    if not isinstance(part, Chunk):
                        raise InvalidArgument("the header was sent twice; send it once, first")
                    job = self._accept(staged, part)
                    if job is not None:
                        target, data = job
                        in_flight.append(
                            loop.run_in_executor(writer, self._append, plan.upload_id, *job)
                        )
                        if target.digest is not None:
                            hashed = loop.run_in_executor(hasher, target.digest.update, data)
                            in_flight.append(hashed)
                    while len(in_flight) > 2 * _WRITES_IN_FLIGHT:
                        await in_flight.popleft()
                while in_flight:
                    await in_flight.popleft()
                await loop.run_in_executor(writer, _sync_and_close, staged.values())
                return await in_thread(self._commit)(plan, staged)
            finally:
                # Queued behind any write still running, so no descriptor is
                # closed under a write; the lock is held until then.
                closed = loop.run_in_executor(writer, self._end_stream, plan.upload_id, staged)
                writer.shutdown(wait=False)
                hasher.shutdown(wait=False)
                await asyncio.shield(closed)
                # Bytes arrived: the expiry clock starts again (under the lock,
                # so the sweep cannot take the upload in between).
                await asyncio.shield(in_thread(_touch)(plan.upload_id))

    @in_thread
    def get(self, upload_id: str) -> UploadRecord:
        """The caller's upload and each file's progress.

        Another user's upload answers NotFound exactly like a missing one.
        """
        return self._upload_record(_owned_upload(upload_id))

    @in_thread
    def list_uploads(
        self, requested_size: int, token: str, *, all_users: bool = False
    ) -> Page[UploadRecord]:
        """The caller's uploads by upload_id; every user's for an admin asking ``all_users``."""
        if all_users:
            rules.require_admin("listing every user's uploads (all_users)")
        query = _upload_rows()
        principal = rules.caller()
        if not all_users and principal is not None:
            query = query.where(tables.Upload.owner == principal.user_id)
        listing = Listing(
            query, tables.Upload.upload_id, self._upload_record, lambda row: row.upload_id,
            {"list": "uploads", "all_users": all_users}, keep=_visible,
        )  # fmt: skip
        return self.versions.tokens.page(listing, requested_size, token)

    @in_thread
    def cancel(self, upload_id: str) -> None:
        """Abandon the caller's unfinished upload: staged bytes deleted, blob pins released.

        NotFound for another user's upload (as for a missing one),
        FailedPrecondition once it committed, Aborted while a stream writes it.
        """
        row = _owned_upload(upload_id)
        committed = _surviving(row) if row.committed_version else None
        if committed is not None:
            raise FailedPrecondition(
                f"upload {upload_id!r} is committed as version {committed.version} of model "
                f"{row.model!r}; there is nothing to cancel (delete the version instead)"
            )
        try:
            with self.repository.upload_lock(upload_id):
                self._discard(upload_id)
        except Aborted:
            raise Aborted(
                f"upload {upload_id!r} is being written by a stream right now; stop that "
                "stream, then cancel"
            ) from None
        self.blobs.collect()

    @in_thread
    def expire_abandoned(self) -> list[str]:
        """Delete every unfinished upload untouched for ``limits.expire_after``; their ids.

        An upload a stream is writing is left alone (its lock is held), and
        so is one touched since it was picked. Staging directories no
        unfinished upload names (a crash's leftovers) go too. Blobs only the
        deleted uploads pinned are then collected.
        """
        cutoff = db.utcnow() - self.limits.expire_after
        stale = [
            str(row.upload_id)
            for row in tables.Upload.select(tables.Upload.upload_id).where(
                _unfinished() & (tables.Upload.update_time < cutoff)
            )
        ]
        expired = [upload_id for upload_id in stale if self._expire(upload_id, cutoff)]
        for upload_id in self.repository.staged_uploads():
            claimed = tables.Upload.select().where(
                (tables.Upload.upload_id == upload_id) & _unfinished()
            )
            if not claimed.exists():
                with contextlib.suppress(Aborted), self.repository.upload_lock(upload_id):
                    self.repository.discard_staging(upload_id)
        if expired:
            log.info("deleted %d abandoned uploads: %s", len(expired), ", ".join(expired))
            self.blobs.collect()
        return expired

    def _expire(self, upload_id: str, cutoff: dt.datetime) -> bool:
        """Discard the upload if no stream holds it and it is still unfinished and
        untouched since ``cutoff``; True when it was discarded."""
        try:
            with self.repository.upload_lock(upload_id):
                row = tables.Upload.get_or_none(tables.Upload.upload_id == upload_id)
                if row is None or row.committed_version or row.update_time >= cutoff:
                    return False
                self._discard(upload_id)
                return True
        except Aborted:
            return False  # a stream is writing it: not abandoned

    def _discard(self, upload_id: str) -> None:
        """Forget the upload: its pins and record, then its staged files (hold its lock)."""
        with db.database.atomic():
            self.blobs.release(upload_id)
            tables.Upload.delete().where(tables.Upload.upload_id == upload_id).execute()
        # After the rows: a crash in between leaves a staging directory no
        # upload names, which the next sweep removes.
        self.repository.discard_staging(upload_id)

    def _upload_record(self, row: Any) -> UploadRecord:
        specs = [FileSpec(*entry) for entry in json.loads(row.files)]
        committed = _surviving(row) if row.committed_version else None
        stored = self.blobs.pinned(row.upload_id)
        progress = [
            FileProgress(
                spec,
                spec.size
                if committed is not None or spec.sha256 in stored
                else self.repository.staged_size(row.upload_id, spec.path),
            )
            for spec in specs
        ]
        return UploadRecord(
            upload_id=row.upload_id,
            model=row.model,
            files=progress,
            committed_version=0 if committed is None else committed.version,
            create_time=row.create_time,
            update_time=row.update_time,
            owner="" if row.owner_id is None else user_names([row.owner_id]).get(row.owner_id, ""),
            expire_time=None
            if committed is not None
            else row.update_time + self.limits.expire_after,
        )

    # --- steps --------------------------------------------------------------

    def _plan(self, header: UploadHeader) -> _UploadPlan:
        model = check_name(header.model, "model name")
        check_upload(model)
        refuse_pipeline_name(model)
        files = self._check_files(header.files)
        training = header.training_dataset
        training_id = None if training is None else dataset_version_row(*training).id
        config = modelconfig.render(
            modelconfig.parse_upload(header.config, model, files, self.limits.allowed_backends)
        )
        ordered = dict(sorted(files.items()))
        manifest_sha256 = _manifest_sha256("", config, 0, ordered)
        upload_id = _upload_id(header.upload_id, model, manifest_sha256, ordered.values())
        return _UploadPlan(
            model, upload_id, ordered, config, manifest_sha256, training_dataset_id=training_id
        )

    def _plan_dataset(self, header: DatasetUploadHeader) -> _UploadPlan:
        dataset = check_name(header.dataset, "dataset name")
        writable_dataset(dataset)
        if not header.files:
            raise InvalidArgument("a dataset version needs at least one file")
        files = dict(sorted(self._check_files(header.files).items()))
        for path in files:
            check_dataset_file(path)
        manifest_sha256 = _manifest_sha256(DATASET_UPLOAD, "", 0, files)
        upload_id = _upload_id(
            header.upload_id, "dataset/" + dataset, manifest_sha256, files.values()
        )
        return _UploadPlan(dataset, upload_id, files, "", manifest_sha256, DATASET_UPLOAD)

    def _check_files(self, declared: Sequence[FileSpec]) -> dict[str, FileSpec]:
        """The declared files by path, each checked, none twice, none a directory of
        another, within the size limit."""
        if len(declared) > MAX_FILES:
            raise InvalidArgument(f"a version may have at most {MAX_FILES} files")
        files: dict[str, FileSpec] = {}
        for spec in declared:
            checked = _check_spec(spec)
            if checked.path in files:
                raise InvalidArgument(f"file {checked.path!r} is declared twice in the manifest")
            files[checked.path] = checked
        directories = {parent for path in files for parent in _parents(path)}
        clash = sorted(directories & files.keys())
        if clash:
            raise InvalidArgument(
                f"{clash[0]!r} is declared as a file but other paths use it as a directory"
            )
        self._check_total(sum(spec.size for spec in files.values()))
        return files

    def _plan_artifact(self, header: ArtifactHeader) -> _UploadPlan:
        model = check_name(header.model, "model name")
        if header.kind not in ARTIFACT_KINDS:
            raise InvalidArgument(
                f"artifact kind {header.kind or 'unspecified'!r} is not one of "
                f"{', '.join(ARTIFACT_KINDS)}: set kind"
            )
        spec = _check_spec(header.file)
        self._check_total(spec.size)
        writable_model(model)
        version = find_version(model, header.version).version
        manifest_sha256 = _manifest_sha256(header.kind, "", version, {spec.path: spec})
        upload_id = _upload_id(header.upload_id, model, manifest_sha256, [spec])
        return _UploadPlan(
            model, upload_id, {spec.path: spec}, "", manifest_sha256, header.kind, version
        )

    def _check_total(self, total: int) -> None:
        if total > self.limits.max_upload_bytes:
            raise ResourceExhausted(
                f"the upload is {total} bytes; this server accepts at most "
                f"{self.limits.max_upload_bytes} bytes per upload (--max-upload-bytes)"
            )

    def _open_record(
        self, plan: _UploadPlan
    ) -> VersionRecord | ArtifactRecord | DatasetVersionRecord | None:
        """Create or match the upload's record; its result if it already committed."""
        if plan.artifact_kind in ARTIFACT_KINDS:
            (spec,) = plan.files.values()
            attached = self.artifacts.attached_artifact(
                plan.model, plan.artifact_version, spec, plan.artifact_kind
            )
            if attached is not None:
                return attached
        principal = rules.caller()
        owner = None if principal is None else principal.user_id
        with db.database.atomic():
            row: Any = tables.Upload.get_or_none(tables.Upload.upload_id == plan.upload_id)
            if row is None:
                self._require_disk_space(plan)
                stored = self.blobs.stored(plan.files.values(), downloadable_blobs())
                staging = sum(s.size for s in plan.files.values() if s.sha256 not in stored)
                self._require_staging_room(owner, staging)
                try:
                    with db.database.atomic():  # a savepoint: PostgreSQL goes on after a clash
                        tables.Upload.create(
                            upload_id=plan.upload_id,
                            model=plan.model,
                            files=json.dumps(
                                [[s.path, s.size, s.sha256] for s in plan.files.values()]
                            ),
                            config=plan.config,
                            manifest_sha256=plan.manifest_sha256,
                            artifact_kind=plan.artifact_kind,
                            artifact_version=plan.artifact_version,
                            owner=owner,
                            staging_bytes=staging,
                        )
                    return None
                except pw.IntegrityError:
                    # Recorded at this moment through another replica: go on with its row.
                    row = tables.Upload.get(tables.Upload.upload_id == plan.upload_id)
        if not rules.can_see_upload(row.owner_id):
            # Someone else's: answered as if it did not exist, nothing of it touched.
            raise _missing(plan.upload_id)
        if row.model != plan.model or row.manifest_sha256 != plan.manifest_sha256:
            raise FailedPrecondition(
                f"upload_id {plan.upload_id!r} was used for a different model or file set; "
                "choose a new upload_id"
            )
        if row.committed_version:
            committed = _surviving(row)
            if committed is not None:
                return committed
            # What it made was deleted since: the upload starts over.
            row.committed_version = 0
            row.save()
        self._require_disk_space(plan)
        _touch(plan.upload_id)  # resumed: not abandoned
        return None

    def _stage(self, plan: _UploadPlan) -> dict[str, _StagedFile]:
        """Each file's state: stored already (pinned, needs no bytes), or how much is staged."""
        stored = self.blobs.pin_stored(plan.upload_id, plan.files.values(), downloadable_blobs())
        for path, spec in plan.files.items():
            if spec.sha256 not in stored:
                # A resume through another replica: what the first committed to
                # the bucket comes back into this replica's staging first.
                self.repository.restore_staged(plan.upload_id, path)
        return {
            path: _StagedFile(spec, 0, stored=True)
            if spec.sha256 in stored
            else _StagedFile(spec, self.repository.staged_size(plan.upload_id, path))
            for path, spec in plan.files.items()
        }

    def _require_staging_room(self, owner: int | None, needed: int) -> None:
        """ResourceExhausted unless ``owner``'s unfinished uploads leave ``needed`` bytes
        under the per-user staging cap (MLServe's own uploads have no cap)."""
        if owner is None:
            return
        held, count = (
            tables.Upload.select(
                pw.fn.COALESCE(pw.fn.SUM(tables.Upload.staging_bytes), 0),
                pw.fn.COUNT(tables.Upload.upload_id),
            )
            .where((tables.Upload.owner == owner) & _unfinished())
            .scalar(as_tuple=True)
        )
        cap = self.limits.max_staging_bytes
        if held + needed > cap:
            raise ResourceExhausted(
                f"this upload needs {needed} bytes of staging, but your {count} unfinished "
                f"uploads hold {held} of the {cap} bytes each user may stage "
                "(--max-staging-bytes): finish or cancel some (mlserve uploads list, "
                "mlserve uploads cancel ID)"
            )

    def _require_disk_space(self, plan: _UploadPlan) -> None:
        stored = self.blobs.pinned(plan.upload_id)
        remaining = sum(
            spec.size - self.repository.staged_size(plan.upload_id, spec.path)
            for spec in plan.files.values()
            if spec.sha256 not in stored
        )
        free = self.repository.free_bytes() - DISK_RESERVE_BYTES
        if remaining > free:
            raise ResourceExhausted(
                f"the upload needs {remaining} more bytes but the repository disk has "
                f"{max(free, 0)} to spare"
            )

    def _accept(
        self, staged: dict[str, _StagedFile], chunk: Chunk
    ) -> tuple[_StagedFile, memoryview] | None:
        """Check a chunk against the resume rules; the bytes to write, or None if all are known."""
        target = staged.get(chunk.path)
        if target is None:
            raise InvalidArgument(f"chunk for {chunk.path!r}, which is not in the manifest")
        size = len(chunk.data)
        if size > self.limits.max_chunk_bytes:
            raise ResourceExhausted(
                f"chunk of {size} bytes; at most {self.limits.max_chunk_bytes} per chunk"
            )
        if chunk.offset < 0:
            raise OutOfRange(f"chunk for {chunk.path!r} has a negative offset")
        if chunk.offset + size > target.spec.size:
            raise OutOfRange(
                f"chunk for {chunk.path!r} ends at byte {chunk.offset + size}, past the declared "
                f"size {target.spec.size}"
            )
        if chunk.offset > target.accepted:
            raise OutOfRange(
                f"chunk for {chunk.path!r} starts at byte {chunk.offset} but only "
                f"{target.accepted} have been received: resume from {target.accepted}"
            )
        if chunk.sha256:
            self._accept_digest(target, chunk)
        skip = target.accepted - chunk.offset
        if skip >= size:
            return None  # already have these bytes
        target.accepted += size - skip
        return target, memoryview(chunk.data)[skip:]

    def _accept_digest(self, target: _StagedFile, chunk: Chunk) -> None:
        """Take the digest a chunk carries for its file: only on the chunk that ends
        the file, and never one that contradicts the header."""
        path = target.spec.path
        if chunk.offset + len(chunk.data) != target.spec.size:
            raise InvalidArgument(
                f"chunk for {path!r} at byte {chunk.offset} carries a sha256 but does not end "
                f"the file: send the digest on the chunk that ends at byte {target.spec.size} "
                "(an empty one will do)"
            )
        digest = _check_digest(chunk.sha256, f"the last chunk of {path!r}")
        if target.spec.sha256 and digest != target.spec.sha256:
            raise InvalidArgument(
                f"the last chunk of {path!r} carries sha256 {digest}, but the header declared "
                f"{target.spec.sha256}; send one digest"
            )
        target.trailing_sha256 = digest

    def _append(self, upload_id: str, target: _StagedFile, data: memoryview) -> None:
        if target.fd is None:
            target.fd = self.repository.open_staged_for_write(upload_id, target.spec.path)
            target.writeback = writeback.Growing(target.fd, target.received)
        written = 0
        while written < len(data):
            written += os.pwrite(target.fd, data[written:], target.received + written)
        target.received += written
        assert target.writeback is not None  # set with fd
        target.writeback.grew_to(target.received)
        db.run(self.repository.checkpoint, upload_id, target.spec.path, target.received)

    def _end_stream(self, upload_id: str, staged: dict[str, _StagedFile]) -> None:
        _close_all(staged.values())
        db.run(self.repository.settle, upload_id)

    def _commit(
        self, plan: _UploadPlan, staged: dict[str, _StagedFile]
    ) -> VersionRecord | ArtifactRecord | DatasetVersionRecord:
        incomplete = [f for f in staged.values() if f.received < f.spec.size]
        if incomplete:
            described = ", ".join(
                f"{f.spec.path!r} has {f.received} of {f.spec.size} bytes" for f in incomplete
            )
            raise FailedPrecondition(
                f"upload {plan.upload_id!r} is incomplete ({described}); send the rest "
                "from the offsets GetUpload reports"
            )
        unsigned = [f.spec.path for f in staged.values() if not f.expected_sha256]
        if unsigned:
            raise FailedPrecondition(
                f"upload {plan.upload_id!r} has every byte of {unsigned[0]!r} but not its sha256: "
                "the header left it empty, so send it on the chunk that ends the file "
                "(an empty chunk at the file's size will do)"
            )
        for target in staged.values():
            if target.stored:
                continue
            if target.spec.size == 0:
                # Nothing was ever sent for an empty file; it must still exist.
                os.close(self.repository.open_staged_for_write(plan.upload_id, target.spec.path))
            actual = self._digest(plan.upload_id, target)
            if actual != target.expected_sha256:
                self.repository.discard_staged_file(plan.upload_id, target.spec.path)
                raise DataLoss(
                    f"file {target.spec.path!r} arrived with sha256 {actual}, not the declared "
                    f"{target.expected_sha256}; its bytes were discarded, send the file again"
                )
        plan = _with_digests(plan, staged)
        for target in staged.values():
            if not target.stored:
                self.blobs.ingest(plan.upload_id, plan.files[target.spec.path])
                target.stored = True
        if plan.artifact_kind == DATASET_UPLOAD:
            return self._commit_dataset(plan)
        if plan.artifact_kind:
            (spec,) = plan.files.values()
            return self.artifacts.attach_artifact(
                model=plan.model,
                version=plan.artifact_version,
                upload_id=plan.upload_id,
                file=spec,
                kind=plan.artifact_kind,
            )
        return self.versions.commit_version(
            model=plan.model,
            upload_id=plan.upload_id,
            files=list(plan.files.values()),
            config=plan.config,
            manifest_sha256=plan.manifest_sha256,
            training_dataset_id=plan.training_dataset_id,
        )

    def _commit_dataset(self, plan: _UploadPlan) -> DatasetVersionRecord:
        """Commit a dataset version; a file that does not parse drops the whole upload
        (record, pins, staging) before the error goes back, so nothing of it stays."""
        try:
            return self.datasets.commit_dataset_version(
                dataset=plan.model,
                upload_id=plan.upload_id,
                files=list(plan.files.values()),
                manifest_sha256=plan.manifest_sha256,
            )
        except InvalidArgument:
            self._discard(plan.upload_id)
            self.blobs.collect()
            raise

    def _digest(self, upload_id: str, target: _StagedFile) -> str:
        if target.digest is not None:
            return str(target.digest.hexdigest())
        with self.repository.open_staged_for_read(upload_id, target.spec.path) as handle:
            return sha256_of(handle)


def _with_digests(plan: _UploadPlan, staged: dict[str, _StagedFile]) -> _UploadPlan:
    """The plan with every file's verified digest, and its manifest digest over them
    (unchanged when the header declared them all)."""
    if all(target.spec.sha256 for target in staged.values()):
        return plan
    files = {
        path: replace(spec, sha256=staged[path].expected_sha256)
        for path, spec in plan.files.items()
    }
    manifest = _manifest_sha256(plan.artifact_kind, plan.config, plan.artifact_version, files)
    return replace(plan, files=files, manifest_sha256=manifest)


def _parents(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _check_spec(spec: FileSpec) -> FileSpec:
    """A declared file with its path and digest checked and normalised."""
    path = check_relative_path(spec.path)
    if spec.size < 0:
        raise InvalidArgument(f"file {path!r} has a negative size")
    digest = spec.sha256.lower()
    if digest:
        digest = _check_digest(digest, f"file {path!r}")
    return FileSpec(path, spec.size, digest)


def _check_digest(digest: str, what: str) -> str:
    """A sha256 in lower-case hex, or InvalidArgument naming ``what`` carries it."""
    lowered = digest.lower()
    if len(lowered) != 64 or not set(lowered) <= _HEX:
        raise InvalidArgument(f"{what}: sha256 must be 64 hex digits")
    return lowered


def _manifest_sha256(kind: str, config: str, version: int, files: dict[str, FileSpec]) -> str:
    """The digest of an upload's canonical manifest: identical content, identical digest.

    ``kind`` is "" for a model version, DATASET_UPLOAD for a dataset version, else
    the artifact kind (of ``version``'s one file). Compact JSON in the document's
    own key order; never change it, or stored versions stop matching re-uploads
    of the same content.
    """
    listed = [[spec.path, spec.size, spec.sha256] for spec in files.values()]
    document: dict[str, Any]
    if kind == DATASET_UPLOAD:
        document = {"dataset": listed}
    elif kind:
        document = {"artifact": kind, "version": version, "file": listed[0]}
    else:
        document = {"config": config, "files": listed}
    return hashlib.sha256(json.dumps(document, separators=(",", ":")).encode()).hexdigest()


def _upload_id(chosen: str, model: str, manifest_sha256: str, files: Iterable[FileSpec]) -> str:
    """The client's upload id, or one derived from the content so a rerun resumes.

    A derived id is the caller's own: two users sending the same content never
    meet on one id (uploads belong to their creator). A file whose digest follows
    its bytes leaves the content unknown, so such an upload must name its id.
    """
    if chosen:
        return check_name(chosen, "upload_id")
    late = next((spec.path for spec in files if not spec.sha256), None)
    if late is not None:
        raise InvalidArgument(
            f"file {late!r} is declared without a sha256 (it follows the bytes), so the "
            "upload cannot be named by its content: set upload_id in the header"
        )
    principal = rules.caller()
    owner = "" if principal is None or principal.user_id is None else f"\n{principal.user_id}"
    digest = hashlib.sha256(f"{model}\n{manifest_sha256}{owner}".encode()).hexdigest()
    return "auto-" + digest[:40]


def _surviving(row: Any) -> VersionRecord | ArtifactRecord | DatasetVersionRecord | None:
    """What an upload committed (version, artifact or dataset version), unless it has
    been deleted since."""
    try:
        if row.artifact_kind == DATASET_UPLOAD:
            return find_dataset_version(row.model, row.committed_version)
        if row.artifact_kind:
            ((path, _, _),) = json.loads(row.files)
            return find_artifact(row.model, row.committed_version, path)
        return find_version(row.model, row.committed_version)
    except NotFound:
        return None


def _sync_and_close(files: Sequence[_StagedFile] | Any) -> None:
    for staged in files:
        if staged.fd is not None:
            os.fsync(staged.fd)
    _close_all(files)


def _close_all(files: Sequence[_StagedFile] | Any) -> None:
    for staged in files:
        if staged.fd is not None:
            os.close(staged.fd)
            staged.fd = None


def _upload_rows() -> Any:
    return tables.Upload.select()


def _unfinished() -> Any:
    return tables.Upload.committed_version == 0


def _missing(upload_id: str) -> NotFound:
    """The one answer for a missing upload and for one the caller may not see."""
    return NotFound(f"upload {upload_id!r} does not exist")


def _visible(row: Any) -> bool:
    """The caller's own upload (or an admin's view), of a model the caller may see."""
    if not rules.can_see_upload(row.owner_id):
        return False
    if row.artifact_kind == DATASET_UPLOAD:
        return not hidden_dataset(row.model)
    return not hidden_model(row.model)


def _owned_upload(upload_id: str) -> Any:
    check_name(upload_id, "upload_id")
    row = _upload_rows().where(tables.Upload.upload_id == upload_id).first()
    if row is None or not _visible(row):
        raise _missing(upload_id)
    return row


def _touch(upload_id: str) -> None:
    """Restart an unfinished upload's expiry clock."""
    tables.Upload.update(update_time=db.utcnow()).where(
        (tables.Upload.upload_id == upload_id) & _unfinished()
    ).execute()


def downloadable_blobs() -> list[Any] | None:
    """Queries of the sha256s the caller could download anyway, in versions, artifacts
    and datasets (None: every blob), for ``Blobs.stored``."""
    models = downloadable_model_ids()
    if models is None:
        return None
    return [version_blobs(models), artifact_blobs(models), dataset_blobs()]
