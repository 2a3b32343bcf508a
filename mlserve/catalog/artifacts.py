"""Artifacts: files attached beside a model version (data, code, environments),
stored once by content like the version's own files.

Every public method of ``Artifacts`` is a coroutine (or an async iterator);
``attached_artifact`` and ``attach_artifact`` are blocking, for the upload's thread.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt

from mlserve.catalog.datasets import check_dataset_path, read_numeric_column
from mlserve.catalog.models import require_download_allowed
from mlserve.catalog.versions import DownloadChunk, read_file, version_ids, version_row
from mlserve.core.errors import AlreadyExists, InvalidArgument, NotFound
from mlserve.core.names import check_relative_path
from mlserve.core.paging import Listing, Page, PageTokens
from mlserve.storage import db, tables
from mlserve.storage.blobs import Blobs, FileSpec
from mlserve.storage.db import in_thread
from mlserve.storage.repository import Repository

ARTIFACT_KINDS = ("model", "data", "code", "env")


@dataclass(frozen=True)
class ArtifactRecord:
    model: str
    version: int
    path: str
    kind: str
    size_bytes: int
    sha256: str
    upload_id: str
    create_time: dt.datetime


class Artifacts:
    def __init__(self, repository: Repository, tokens: PageTokens, blobs: Blobs) -> None:
        self.repository = repository
        self.tokens = tokens
        self.blobs = blobs

    @in_thread
    def get_artifact(self, model: str, version: int, path: str) -> ArtifactRecord:
        """The artifact at ``path`` of ``model``'s ``version`` (0: the latest), or NotFound."""
        return find_artifact(model, version, path)

    @in_thread
    def list_artifacts(
        self, model: str, version: int, requested_size: int, token: str, kind: str = ""
    ) -> Page[ArtifactRecord]:
        """The version's artifacts by path, only those of ``kind`` when given.

        Raises:
            InvalidArgument: an unknown kind.
            NotFound: no such model (or hidden) or version.
        """
        if kind and kind not in ARTIFACT_KINDS:
            raise InvalidArgument(f"kind {kind!r} is not one of {', '.join(ARTIFACT_KINDS)}")
        row = version_row(model, version)
        query = (
            tables.Artifact.select(tables.Artifact, tables.Blob)
            .join(tables.Blob)
            .where(tables.Artifact.version == row)
        )
        if kind:
            query = query.where(tables.Artifact.kind == kind)
        listing = Listing(
            query,
            tables.Artifact.path,
            lambda found: _artifact_record(found, model, row.version),
            lambda found: found.path,
            {"list": "artifacts", "model": model, "version": row.version, "kind": kind},
        )
        return self.tokens.page(listing, requested_size, token)

    async def download_artifact(
        self, model: str, version: int, path: str, offset: int = 0
    ) -> AsyncIterator[DownloadChunk]:
        """Stream an artifact's bytes from ``offset``."""
        record = await in_thread(_downloadable_artifact)(model, version, path)
        if offset < 0:
            raise InvalidArgument("offset must be >= 0")
        spec = FileSpec(record.path, record.size_bytes, record.sha256)

        def open_blob() -> BinaryIO:
            return self.repository.open_blob(record.sha256)

        what = f"artifact {record.path!r} of {model!r} version {record.version}"
        async for chunk in read_file(open_blob, spec, offset, what):
            yield chunk

    def attached_artifact(
        self, model: str, version: int, file: FileSpec, kind: str
    ) -> ArtifactRecord | None:
        """The artifact already at ``file.path``, if it is this content; AlreadyExists if not."""
        try:
            found = find_artifact(model, version, file.path)
        except NotFound:
            return None
        if (found.sha256, found.size_bytes, found.kind) != (file.sha256, file.size, kind):
            raise AlreadyExists(
                f"version {version} of {model!r} already has a different artifact "
                f"{file.path!r}; artifacts are immutable, choose another path"
            )
        return found

    def attach_artifact(
        self, *, model: str, version: int, upload_id: str, file: FileSpec, kind: str
    ) -> ArtifactRecord:
        """Attach the blob the upload pins as an artifact (blocking; call in a thread)."""
        with db.database.atomic():
            row = version_row(model, version)
            attached = self.attached_artifact(model, version, file, kind)
            if attached is None:
                tables.Artifact.create(
                    version=row, path=file.path, kind=kind, blob=file.sha256, upload_id=upload_id
                )
            tables.Upload.update(committed_version=version, update_time=db.utcnow()).where(
                tables.Upload.upload_id == upload_id
            ).execute()
            self.blobs.release(upload_id)
        self.repository.discard_staging(upload_id)
        return attached or find_artifact(model, version, file.path)


def _downloadable_artifact(model: str, version: int, path: str) -> ArtifactRecord:
    """The artifact, if the caller may download it (blocking)."""
    record = find_artifact(model, version, path)
    require_download_allowed(record.model)
    return record


def artifact_column(
    repository: Repository, model: str, version: int, path: str, column: str
) -> tuple[int, npt.NDArray[np.float64]]:
    """The version number (0 resolved to the latest) and every value of ``column`` of the
    data artifact ``path`` (*.csv or *.parquet) of ``model``'s ``version`` (blocking).

    Raises:
        NotFound: no such model (or hidden), version or artifact.
        PermissionDenied: the model's allow_download is off (its data stays inside).
        InvalidArgument: not a CSV or Parquet file, or as ``read_numeric_column``.
    """
    record = _downloadable_artifact(model, version, path)
    check_dataset_path(path)
    what = f"artifact {path!r} of model {model!r} version {record.version}"
    spec = FileSpec(path=record.path, size=record.size_bytes, sha256=record.sha256)
    return record.version, read_numeric_column(repository, [spec], column, what)


def find_artifact(model: str, version: int, path: str) -> ArtifactRecord:
    """``model``'s artifact ``path`` of ``version`` (0: the latest), or NotFound (blocking)."""
    row = version_row(model, version)
    check_relative_path(path, "artifact path")
    found = (
        tables.Artifact.select(tables.Artifact, tables.Blob)
        .join(tables.Blob)
        .where((tables.Artifact.version == row) & (tables.Artifact.path == path))
        .first()
    )
    if found is None:
        raise NotFound(f"version {row.version} of {model!r} has no artifact {path!r}")
    return _artifact_record(found, model, row.version)


def _artifact_record(row: Any, model: str, version: int) -> ArtifactRecord:
    return ArtifactRecord(
        model=model,
        version=version,
        path=row.path,
        kind=row.kind,
        size_bytes=row.blob.size,
        sha256=row.blob.sha256,
        upload_id=row.upload_id,
        create_time=row.create_time,
    )


def artifact_blobs(model_ids: Any) -> Any:
    """A query of the sha256s of the artifacts of the models in ``model_ids`` (a query)."""
    return tables.Artifact.select(tables.Artifact.blob).where(
        tables.Artifact.version.in_(version_ids(model_ids))
    )
