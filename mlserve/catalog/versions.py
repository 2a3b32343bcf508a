"""A model's committed versions: numbering and committing an upload's files,
listing, reading, downloading and deleting them.

Every public method of ``Versions`` is a coroutine (or an async iterator); the
blocking store and file work runs in a thread. ``commit_version`` itself is
blocking: the upload calls it in its own thread.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import peewee as pw

from mlserve.catalog import sizing
from mlserve.catalog.models import (
    LostRace,
    Usage,
    created_in_savepoint,
    ids_of,
    model_for_upload,
    model_row,
    require_download_allowed,
    writable_model,
)
from mlserve.core.errors import FailedPrecondition, InvalidArgument, NotFound
from mlserve.core.names import check_relative_path
from mlserve.core.paging import Listing, Page, PageTokens
from mlserve.storage import db, tables
from mlserve.storage.blobs import Blobs, FileSpec
from mlserve.storage.db import in_thread
from mlserve.storage.repository import Repository
from mlserve.triton import modelconfig

DOWNLOAD_CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class MemoryNeed:
    """The memory a version needs once loaded: estimated, and measured once loaded."""

    estimated: int
    measured: int = 0  # 0: not measured yet
    measured_on: str = ""  # the server
    measurement: str = ""  # "triton" (Triton's model statistics) or "rss"
    measure_time: dt.datetime | None = None
    # Where its config puts its instances: placement counts the need on each GPU
    # they run on, and on the host when some run on the CPU.
    instance_groups: tuple[modelconfig.InstanceGroup, ...] = modelconfig.ON_CPU

    @property
    def bytes(self) -> int:
        """What placement counts: the measurement when there is one."""
        return self.measured or self.estimated


@dataclass(frozen=True)
class VersionRecord:
    model: str
    version: int
    sha256: str
    size_bytes: int
    files: list[FileSpec]
    config: str
    upload_id: str
    create_time: dt.datetime
    # The dataset version it was trained on: (dataset, version), None if none was named.
    training_dataset: tuple[str, int] | None = None
    memory: MemoryNeed = MemoryNeed(0)


@dataclass(frozen=True)
class DownloadChunk:
    path: str
    offset: int
    data: bytes


class Versions:
    def __init__(
        self, repository: Repository, tokens: PageTokens, blobs: Blobs, usage: Usage
    ) -> None:
        self.repository = repository
        self.tokens = tokens
        self.blobs = blobs
        self.usage = usage

    @in_thread
    def list_versions(self, model: str, requested_size: int, token: str) -> Page[VersionRecord]:
        """``model``'s versions, oldest first; NotFound alike when absent or hidden."""
        row = model_row(model)
        listing = Listing(
            tables.ModelVersion.select().where(tables.ModelVersion.model == row),
            tables.ModelVersion.version,
            lambda found: _version_record(found, model),
            lambda found: found.version,
            {"list": "versions", "model": model},
        )
        return self.tokens.page(listing, requested_size, token)

    @in_thread
    def get_version(self, model: str, version: int) -> VersionRecord:
        """``model``'s ``version`` (0: the latest); NotFound alike when absent or hidden."""
        return find_version(model, version)

    @in_thread
    def delete_version(self, model: str, version: int) -> None:
        """Delete the version, then the file contents nothing else uses; FailedPrecondition
        while it is deployed (alone or in a pipeline).
        """
        with db.database.atomic():
            writable_model(model)
            row = version_row(model, version)
            self.usage.refuse_if_deployed(row.model.name, row.version)
            row.delete_instance()
        self.repository.delete_version(model, row.version)
        self.blobs.collect()

    async def download(
        self, model: str, version: int, path: str = "", offset: int = 0
    ) -> AsyncIterator[DownloadChunk]:
        """Stream a version's files; only ``path`` from ``offset`` when given.

        PERMISSION_DENIED when the model's allow_download is off.
        """
        record = await in_thread(_downloadable_version)(model, version)
        what = f"version {record.version} of {model!r}"
        for spec in files_to_send(record.files, path, offset, what):

            def open_file(spec: FileSpec = spec) -> BinaryIO:
                return self.repository.open_version_file(
                    record.model, record.version, spec.path, spec.sha256
                )

            what = f"{spec.path!r} of {model!r} version {record.version}"
            async for chunk in read_file(open_file, spec, offset if path else 0, what):
                yield chunk

    def commit_version(
        self,
        *,
        model: str,
        upload_id: str,
        files: Sequence[FileSpec],
        config: str,
        manifest_sha256: str,
        training_dataset_id: int | None = None,
    ) -> VersionRecord:
        """Number the upload and put its version in place (blocking; call in a thread).

        Every file must be a blob the upload pins; the version directory is
        made of links to them. A version with the same manifest digest is
        returned instead of a copy.
        The version number comes from a unique index, so two concurrent commits
        can never share one: the loser retries with the next number.
        """
        for _ in range(20):
            try:
                return self._commit_once(
                    model, upload_id, files, config, manifest_sha256, training_dataset_id
                )
            except LostRace:
                continue
        raise FailedPrecondition(f"could not number a new version of {model!r}; retry")

    def _commit_once(
        self,
        model: str,
        upload_id: str,
        files: Sequence[FileSpec],
        config: str,
        manifest_sha256: str,
        training_dataset_id: int | None,
    ) -> VersionRecord:
        with db.database.atomic():
            model_row = model_for_upload(model)
            same = tables.ModelVersion.get_or_none(
                (tables.ModelVersion.model == model_row)
                & (tables.ModelVersion.sha256 == manifest_sha256)
            )
            if same is not None:
                tables.Upload.update(committed_version=same.version).where(
                    tables.Upload.upload_id == upload_id
                ).execute()
                self.blobs.release(upload_id)
                self.repository.discard_staging(upload_id)
                return _version_record(same, model)
            latest = (
                tables.ModelVersion.select(pw.fn.MAX(tables.ModelVersion.version))
                .where(tables.ModelVersion.model == model_row)
                .scalar()
            )
            number = (latest or 0) + 1
            row = created_in_savepoint(
                lambda: tables.ModelVersion.create(
                    model=model_row,
                    version=number,
                    sha256=manifest_sha256,
                    size_bytes=sum(spec.size for spec in files),
                    files=json.dumps([[spec.path, spec.size, spec.sha256] for spec in files]),
                    config=config,
                    upload_id=upload_id,
                    training_dataset=training_dataset_id,
                )
            )
            tables.Upload.update(committed_version=number, update_time=db.utcnow()).where(
                tables.Upload.upload_id == upload_id
            ).execute()
            uses = [{"version": row, "path": spec.path, "blob": spec.sha256} for spec in files]
            for batch in pw.chunked(uses, 200):
                tables.VersionFile.insert_many(batch).execute()
            self.blobs.release(upload_id)
            self.repository.publish_version(upload_id, model, number, files, config)
        self.repository.discard_staging(upload_id)
        return _version_record(row, model)


async def read_file(
    open_file: Callable[[], BinaryIO], spec: FileSpec, offset: int, what: str
) -> AsyncIterator[DownloadChunk]:
    """Chunks of the file ``open_file`` opens, from ``offset``, checked against ``spec.size``."""
    handle = await in_thread(open_file)()
    try:
        handle.seek(offset)
        position = offset
        while True:
            data = await in_thread(handle.read)(DOWNLOAD_CHUNK_BYTES)
            if not data and position >= spec.size:
                break
            if not data:
                raise FailedPrecondition(f"{what} is shorter on disk than its manifest says")
            yield DownloadChunk(spec.path, position, data)
            position += len(data)
        if spec.size == 0 and offset == 0:
            yield DownloadChunk(spec.path, 0, b"")
    finally:
        handle.close()


def _downloadable_version(model: str, version: int) -> VersionRecord:
    """``model``'s ``version``, if the caller may download its files (blocking)."""
    require_download_allowed(model)
    return find_version(model, version)


def find_version(model: str, version: int) -> VersionRecord:
    """``model``'s ``version`` (0: the latest), or NotFound (blocking)."""
    return _version_record(version_row(model, version), model)


def record_measurement(model: str, version: int, size: int, server: str, how: str) -> bool:
    """Record that ``model`` ``version`` was measured to need ``size`` bytes on
    ``server`` (``how``: "triton" or "rss"), unless it was measured before; True
    if this was its first measurement (blocking)."""
    row = version_row(model, version)
    updated = (
        tables.ModelVersion.update(
            measured_memory=size, measured_on=server, measurement=how, measure_time=db.utcnow()
        )
        .where((tables.ModelVersion.id == row.id) & (tables.ModelVersion.measured_memory == 0))
        .execute()
    )
    return bool(updated)


def version_row(model: str, version: int) -> Any:
    """The store row of ``model``'s ``version`` (0: the latest), or NotFound."""
    found = model_row(model)
    query = tables.ModelVersion.select().where(tables.ModelVersion.model == found)
    return numbered_row(query, tables.ModelVersion.version, version, f"model {model!r}")


def numbered_row(query: Any, number: Any, version: int, owner: str) -> Any:
    """The row of ``query`` (one owner's versions) whose ``number`` column is ``version``,
    the highest for 0; NotFound naming ``owner`` (e.g. "model 'add'") when there is none."""
    if version < 0:
        raise InvalidArgument(f"version must be positive, got {version}")
    if version == 0:
        row = query.order_by(number.desc()).first()
        if row is None:
            raise NotFound(f"{owner} has no versions yet: upload one first")
        return row
    row = query.where(number == version).first()
    if row is None:
        raise NotFound(f"{owner} has no version {version}")
    return row


def files_to_send(files: Sequence[FileSpec], path: str, offset: int, what: str) -> list[FileSpec]:
    """Of a version's ``files``, those a download streams: all, or only ``path`` (from
    ``offset``); ``what`` names the version in the NotFound for a missing path."""
    if path:
        check_relative_path(path)
        files = [spec for spec in files if spec.path == path]
        if not files:
            raise NotFound(f"{what} has no file {path!r}")
    if offset < 0 or (offset and not path):
        raise InvalidArgument("offset must be >= 0 and is allowed only with a path")
    return list(files)


def _version_record(row: Any, model: str) -> VersionRecord:
    training = None
    if row.training_dataset_id is not None:
        used = (
            tables.DatasetVersion.select(tables.DatasetVersion.version, tables.Dataset.name)
            .join(tables.Dataset)
            .where(tables.DatasetVersion.id == row.training_dataset_id)
            .tuples()
            .first()
        )
        training = None if used is None else (str(used[1]), int(used[0]))
    return VersionRecord(
        training_dataset=training,
        model=model,
        version=row.version,
        sha256=row.sha256,
        size_bytes=row.size_bytes,
        files=[FileSpec(*entry) for entry in json.loads(row.files)],
        config=row.config,
        upload_id=row.upload_id,
        create_time=row.create_time,
        memory=_memory_need(row, model),
    )


def _memory_need(row: Any, model: str) -> MemoryNeed:
    return MemoryNeed(
        sizing.estimate(row.size_bytes, sizing.backend_of(row.config, model)),
        row.measured_memory,
        row.measured_on,
        row.measurement,
        row.measure_time,
        sizing.instance_groups_of(row.config, model),
    )


def memory_needs(pairs: Iterable[tuple[str, int]]) -> dict[tuple[str, int], MemoryNeed]:
    """The memory need of each (model, version) in ``pairs`` that exists, whoever
    the caller is (MLServe's own accounting, never shown; blocking)."""
    wanted = set(pairs)
    ids = ids_of(model for model, _ in wanted)
    names = {row_id: name for name, row_id in ids.items()}
    if not ids:
        return {}
    query = tables.ModelVersion.select().where(
        tables.ModelVersion.model.in_(list(ids.values()))
        & tables.ModelVersion.version.in_(sorted({version for _, version in wanted}))
    )
    found: dict[tuple[str, int], MemoryNeed] = {}
    row: Any
    for row in query:
        key = (names[row.model_id], int(row.version))
        if key in wanted:
            found[key] = _memory_need(row, key[0])
    return found


def version_ids(model_ids: Any) -> Any:
    """A query of the ids of every version of the models in ``model_ids`` (a query)."""
    return tables.ModelVersion.select(tables.ModelVersion.id).where(
        tables.ModelVersion.model.in_(model_ids)
    )


def version_blobs(model_ids: Any) -> Any:
    """A query of the sha256s the versions of the models in ``model_ids`` (a query) use."""
    return tables.VersionFile.select(tables.VersionFile.blob).where(
        tables.VersionFile.version.in_(version_ids(model_ids))
    )
