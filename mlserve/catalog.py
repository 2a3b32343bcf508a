"""The catalog: models and their committed versions.

Every public method is a coroutine; the blocking store and file work runs in
a thread (``in_thread``) so the event loop only routes bytes.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import peewee as pw

from mlserve import store
from mlserve.aio import in_thread
from mlserve.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from mlserve.names import check_name, check_relative_path
from mlserve.paging import PageTokens, page_size
from mlserve.repository import Repository

T = TypeVar("T")

MAX_TAG_LENGTH = 64
MAX_TAGS = 64
_LABEL_KEY = re.compile(r"[a-z0-9]([a-z0-9_.\-/]{0,61}[a-z0-9])?")
DOWNLOAD_CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class FileSpec:
    """A file of a version: its path under the version directory, size and sha256."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class ModelRecord:
    name: str
    description: str
    tags: list[str]
    labels: dict[str, str]
    create_time: dt.datetime
    update_time: dt.datetime
    latest_version: int
    version_count: int


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


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_page_token: str = ""


@dataclass(frozen=True)
class ModelFields:
    """The caller-settable fields of a model."""

    description: str = ""
    tags: Sequence[str] = ()
    labels: Mapping[str, str] = field(default_factory=dict)


UPDATABLE_MODEL_FIELDS = frozenset({"description", "tags", "labels"})


@dataclass(frozen=True)
class DownloadChunk:
    path: str
    offset: int
    data: bytes


class Catalog:
    def __init__(self, repository: Repository, tokens: PageTokens) -> None:
        self.repository = repository
        self.tokens = tokens

    # --- models -------------------------------------------------------------

    @in_thread
    def create_model(self, name: str, fields: ModelFields) -> ModelRecord:
        check_name(name, "model name")
        tags, labels = _check_tags(fields.tags), _check_labels(fields.labels)
        refuse_pipeline_name(name)
        try:
            with store.database.atomic():
                row = store.Model.create(name=name, description=fields.description, labels=labels)
                _replace_tags(row, tags)
        except pw.IntegrityError:
            raise AlreadyExists(f"model {name!r} already exists") from None
        return _model_record(row)

    @in_thread
    def get_model(self, name: str) -> ModelRecord:
        return _model_record(_model_row(name))

    @in_thread
    def list_models(
        self, requested_size: int, token: str, name_prefix: str = "", tag: str = ""
    ) -> Page[ModelRecord]:
        size = page_size(requested_size)
        query_key = {"list": "models", "prefix": name_prefix, "tag": tag}
        after = self.tokens.decode(query_key, token)
        query = store.Model.select().order_by(store.Model.name).limit(size + 1)
        if after is not None:
            query = query.where(store.Model.name > str(after))
        if name_prefix:
            query = query.where(store.Model.name.startswith(name_prefix))
        if tag:
            tagged = store.ModelTag.select(store.ModelTag.model).where(store.ModelTag.tag == tag)
            query = query.where(store.Model.id.in_(tagged))
        rows = list(query)
        records = [_model_record(row) for row in rows[:size]]
        next_token = self.tokens.encode(query_key, rows[size - 1].name) if len(rows) > size else ""
        return Page(records, next_token)

    @in_thread
    def update_model(self, name: str, fields: ModelFields, mask: Sequence[str]) -> ModelRecord:
        unknown = set(mask) - UPDATABLE_MODEL_FIELDS
        if unknown:
            raise InvalidArgument(
                f"update_mask names fields that cannot be updated: {', '.join(sorted(unknown))}; "
                f"updatable: {', '.join(sorted(UPDATABLE_MODEL_FIELDS))}"
            )
        if not mask:
            raise InvalidArgument("update_mask is empty: name the fields to change")
        tags, labels = _check_tags(fields.tags), _check_labels(fields.labels)
        with store.database.atomic():
            row = _model_row(name)
            if "description" in mask:
                row.description = fields.description
            if "labels" in mask:
                row.labels = labels
            if "tags" in mask:
                _replace_tags(row, tags)
            row.update_time = store.utcnow()
            row.save()
        return _model_record(row)

    @in_thread
    def delete_model(self, name: str) -> None:
        with store.database.atomic():
            row = _model_row(name)
            _refuse_if_deployed(row)
            row.delete_instance(recursive=False)
        self.repository.delete_model(name)

    # --- versions -----------------------------------------------------------

    @in_thread
    def list_versions(self, model: str, requested_size: int, token: str) -> Page[VersionRecord]:
        size = page_size(requested_size)
        query_key = {"list": "versions", "model": model}
        after = self.tokens.decode(query_key, token)
        row = _model_row(model)
        query = (
            store.ModelVersion.select()
            .where(store.ModelVersion.model == row)
            .order_by(store.ModelVersion.version)
            .limit(size + 1)
        )
        if after is not None:
            query = query.where(store.ModelVersion.version > int(after))
        rows = list(query)
        records = [_version_record(row, model) for row in rows[:size]]
        next_token = (
            self.tokens.encode(query_key, rows[size - 1].version) if len(rows) > size else ""
        )
        return Page(records, next_token)

    @in_thread
    def get_version(self, model: str, version: int) -> VersionRecord:
        return find_version(model, version)

    @in_thread
    def delete_version(self, model: str, version: int) -> None:
        with store.database.atomic():
            row = version_row(model, version)
            _refuse_if_deployed(row.model, row.version)
            row.delete_instance()
        self.repository.delete_version(model, row.version)

    async def download(
        self, model: str, version: int, path: str = "", offset: int = 0
    ) -> AsyncIterator[DownloadChunk]:
        """Stream a version's files; only ``path`` from ``offset`` when given."""
        record = await self.get_version(model, version)
        files = record.files
        if path:
            check_relative_path(path)
            files = [spec for spec in files if spec.path == path]
            if not files:
                raise NotFound(f"version {record.version} of {model!r} has no file {path!r}")
        if offset < 0 or (offset and not path):
            raise InvalidArgument("offset must be >= 0 and is allowed only with a path")
        for spec in files:
            async for chunk in self._read_file(record, spec, offset if path else 0):
                yield chunk

    async def _read_file(
        self, record: VersionRecord, spec: FileSpec, offset: int
    ) -> AsyncIterator[DownloadChunk]:
        handle = await in_thread(self.repository.open_version_file)(
            record.model, record.version, spec.path
        )
        try:
            handle.seek(offset)
            position = offset
            while True:
                data = await in_thread(handle.read)(DOWNLOAD_CHUNK_BYTES)
                if not data and position >= spec.size:
                    break
                if not data:
                    raise FailedPrecondition(
                        f"{spec.path!r} of {record.model!r} version {record.version} is "
                        f"shorter on disk than its manifest says"
                    )
                yield DownloadChunk(spec.path, position, data)
                position += len(data)
            if spec.size == 0 and offset == 0:
                yield DownloadChunk(spec.path, 0, b"")
        finally:
            handle.close()

    def commit_version(
        self,
        *,
        model: str,
        upload_id: str,
        files: Sequence[FileSpec],
        config: str,
        manifest_sha256: str,
    ) -> VersionRecord:
        """Number the staged upload and move it into place (blocking; call in a thread).

        A version with the same manifest digest is returned instead of a copy.
        The version number comes from a unique index, so two concurrent commits
        can never share one: the loser retries with the next number.
        """
        for _ in range(20):
            try:
                return self._commit_once(model, upload_id, files, config, manifest_sha256)
            except pw.IntegrityError:
                continue
        raise FailedPrecondition(f"could not number a new version of {model!r}; retry")

    def _commit_once(
        self,
        model: str,
        upload_id: str,
        files: Sequence[FileSpec],
        config: str,
        manifest_sha256: str,
    ) -> VersionRecord:
        with store.database.atomic():
            model_row = store.Model.get_or_none(store.Model.name == model) or store.Model.create(
                name=model
            )
            same = store.ModelVersion.get_or_none(
                (store.ModelVersion.model == model_row)
                & (store.ModelVersion.sha256 == manifest_sha256)
            )
            if same is not None:
                store.Upload.update(committed_version=same.version).where(
                    store.Upload.upload_id == upload_id
                ).execute()
                self.repository.discard_staging(upload_id)
                return _version_record(same, model)
            latest = (
                store.ModelVersion.select(pw.fn.MAX(store.ModelVersion.version))
                .where(store.ModelVersion.model == model_row)
                .scalar()
            )
            number = (latest or 0) + 1
            row = store.ModelVersion.create(
                model=model_row,
                version=number,
                sha256=manifest_sha256,
                size_bytes=sum(spec.size for spec in files),
                files=json.dumps([[spec.path, spec.size, spec.sha256] for spec in files]),
                config=config,
                upload_id=upload_id,
            )
            store.Upload.update(committed_version=number, update_time=store.utcnow()).where(
                store.Upload.upload_id == upload_id
            ).execute()
            self.repository.commit_staging(upload_id, model, number)
            self.repository.write_model_config(model, config)
        self.repository.discard_staging(upload_id)
        return _version_record(row, model)


def find_version(model: str, version: int) -> VersionRecord:
    """``model``'s ``version`` (0: the latest), or NotFound (blocking)."""
    return _version_record(version_row(model, version), model)


def version_row(model: str, version: int) -> Any:
    """The store row of ``model``'s ``version`` (0: the latest), or NotFound."""
    model_row = _model_row(model)
    query = store.ModelVersion.select().where(store.ModelVersion.model == model_row)
    if version < 0:
        raise InvalidArgument(f"version must be positive, got {version}")
    if version == 0:
        row = query.order_by(store.ModelVersion.version.desc()).first()
        if row is None:
            raise NotFound(f"model {model!r} has no versions yet: upload one first")
        return row
    row = query.where(store.ModelVersion.version == version).first()
    if row is None:
        raise NotFound(f"model {model!r} has no version {version}")
    return row


def _model_row(name: str) -> Any:
    check_name(name, "model name")
    row = store.Model.get_or_none(store.Model.name == name)
    if row is None:
        raise NotFound(f"model {name!r} does not exist")
    return row


def refuse_pipeline_name(name: str) -> None:
    """AlreadyExists when a pipeline has ``name``: pipelines and models share names."""
    if store.Pipeline.select().where(store.Pipeline.name == name).exists():
        raise AlreadyExists(
            f"a pipeline is named {name!r}; pipelines and models share one namespace "
            "(the pipeline is a Triton model): choose another name"
        )


def member_rows(model: str) -> Any:
    """The PipelineMember rows, with their deployment and pipeline, that run ``model``."""
    return (
        store.PipelineMember.select(store.PipelineMember, store.PipelineDeployment, store.Pipeline)
        .join(store.PipelineDeployment)
        .join(store.Pipeline)
        .switch(store.PipelineMember)
        .join(store.Model)
        .where(store.Model.name == model)
        .order_by(store.Pipeline.name)
    )


def pipeline_members(model: str) -> list[tuple[str, int]]:
    """(pipeline, member version) of each deployed pipeline that runs ``model``."""
    return [(row.deployment.pipeline.name, row.version) for row in member_rows(model)]


def _refuse_if_deployed(model_row: Any, version: int | None = None) -> None:
    for pipeline, used in pipeline_members(model_row.name):
        if version is None or used == version:
            raise FailedPrecondition(
                f"version {used} of {model_row.name!r} is used by deployed pipeline "
                f"{pipeline!r}; undeploy the pipeline first"
            )
    query = store.Deployment.select().where(store.Deployment.model == model_row)
    if version is not None:
        query = query.where(store.Deployment.version == version)
    deployment = query.first()
    if deployment is not None:
        what = f"version {deployment.version} of {model_row.name!r}"
        raise FailedPrecondition(
            f"{what} is deployed (deployment {deployment.name!r}); undeploy it first"
        )


def _replace_tags(row: Any, tags: list[str]) -> None:
    store.ModelTag.delete().where(store.ModelTag.model == row).execute()
    if tags:
        store.ModelTag.insert_many([{"model": row, "tag": tag} for tag in tags]).execute()


def _check_tags(tags: Sequence[str]) -> list[str]:
    if len(tags) > MAX_TAGS:
        raise InvalidArgument(f"at most {MAX_TAGS} tags, got {len(tags)}")
    for tag in tags:
        if not tag or len(tag) > MAX_TAG_LENGTH or "\x00" in tag:
            raise InvalidArgument(f"tag {tag!r} must be 1 to {MAX_TAG_LENGTH} characters, no NUL")
    return sorted(set(tags))


def _check_labels(labels: Mapping[str, str]) -> str:
    for key, value in labels.items():
        if not _LABEL_KEY.fullmatch(key):
            raise InvalidArgument(
                f"label key {key!r} must be 1 to 63 lower-case letters, digits, '_', '-', '.', '/'"
            )
        if len(value) > 256:
            raise InvalidArgument(f"label {key!r} has a value over 256 characters")
    return json.dumps(dict(sorted(labels.items())))


def _model_record(row: Any) -> ModelRecord:
    stats: tuple[int | None, int] = (
        store.ModelVersion.select(
            pw.fn.MAX(store.ModelVersion.version), pw.fn.COUNT(store.ModelVersion.id)
        )
        .where(store.ModelVersion.model == row)
        .scalar(as_tuple=True)
    )
    tags = [
        t.tag
        for t in store.ModelTag.select()
        .where(store.ModelTag.model == row)
        .order_by(store.ModelTag.tag)
    ]
    return ModelRecord(
        name=row.name,
        description=row.description,
        tags=tags,
        labels=json.loads(row.labels),
        create_time=row.create_time,
        update_time=row.update_time,
        latest_version=stats[0] or 0,
        version_count=stats[1] or 0,
    )


def _version_record(row: Any, model: str) -> VersionRecord:
    return VersionRecord(
        model=model,
        version=row.version,
        sha256=row.sha256,
        size_bytes=row.size_bytes,
        files=[FileSpec(*entry) for entry in json.loads(row.files)],
        config=row.config,
        upload_id=row.upload_id,
        create_time=row.create_time,
    )
