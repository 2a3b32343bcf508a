"""The catalog: models, their committed versions, and the artifacts attached to them.

Every public method is a coroutine; the blocking store and file work runs in
a thread (``in_thread``) so the event loop only routes bytes.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, TypeVar

import peewee as pw

from mlserve.access import changed, rules
from mlserve.catalog import model_metadata
from mlserve.catalog.model_metadata import ModelFields
from mlserve.core.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from mlserve.core.names import check_name, check_relative_path
from mlserve.core.paging import Page, PageTokens, page_size
from mlserve.storage import db, tables
from mlserve.storage.blobs import Blobs
from mlserve.storage.db import in_thread
from mlserve.storage.repository import Repository

T = TypeVar("T")

DOWNLOAD_CHUNK_BYTES = 1024 * 1024
ARTIFACT_KINDS = ("model", "data", "code", "env")


@dataclass(frozen=True)
class FileSpec:
    """A file of a version: its path under the version directory, size and sha256."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class ModelRecord:
    name: str
    fields: ModelFields
    create_time: dt.datetime
    update_time: dt.datetime
    latest_version: int
    version_count: int
    workspace: str = ""


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
class ArtifactRecord:
    model: str
    version: int
    path: str
    kind: str
    size_bytes: int
    sha256: str
    upload_id: str
    create_time: dt.datetime


@dataclass(frozen=True)
class ModelQuery:
    """What ListModels asks for: filters (all must hold) and an order."""

    name_prefix: str = ""
    kind: str = ""
    tags_all: Sequence[str] = ()
    tags_any: Sequence[str] = ()
    labels: Sequence[str] = ()  # "key=value"
    order_by: str = ""  # AIP-132: "name" | "create_time" | "update_time", then " desc"
    workspace: str = ""


# The orders ListModels offers; each has an index on (column, id).
_ORDERS: dict[str, Any] = {
    "name": tables.Model.name,
    "create_time": tables.Model.create_time,
    "update_time": tables.Model.update_time,
}


@dataclass(frozen=True)
class DownloadChunk:
    path: str
    offset: int
    data: bytes


class Catalog:
    def __init__(self, repository: Repository, tokens: PageTokens, blobs: Blobs) -> None:
        self.repository = repository
        self.tokens = tokens
        self.blobs = blobs

    # --- models -------------------------------------------------------------

    @in_thread
    def create_model(self, name: str, fields: ModelFields, workspace: str = "") -> ModelRecord:
        check_name(name, "model name")
        refuse_pipeline_name(name)
        fields = model_metadata.check_fields(model_metadata.for_create(fields))
        try:
            with db.database.atomic():
                row = tables.Model(name=name, workspace=rules.workspace_for_new_model(workspace))
                model_metadata.write(row, fields)
        except pw.IntegrityError:
            raise AlreadyExists(f"model {name!r} already exists") from None
        changed()
        return _model_records([row])[0]

    @in_thread
    def get_model(self, name: str) -> ModelRecord:
        return _model_records([_model_row(name)])[0]

    @in_thread
    def list_models(self, requested_size: int, token: str, query: ModelQuery) -> Page[ModelRecord]:
        """One page in ``query``'s order, after the (sort key, id) the token carries.

        Keyset paging: a page starts strictly after the previous page's last
        row, so rows inserted or deleted between pages shift nothing; the id
        breaks ties between equal sort keys.
        """
        size = page_size(requested_size)
        column_name, descending = _parse_order(query.order_by)
        column = _ORDERS[column_name]
        conditions = _model_filter(query)
        visible = rules.visible_models()
        if visible is not None:
            conditions.append(visible)
        query_key = {
            "list": "models",
            "prefix": query.name_prefix,
            "kind": query.kind,
            "all": sorted(set(query.tags_all)),
            "any": sorted(set(query.tags_any)),
            "labels": sorted(set(query.labels)),
            "order": [column_name, descending],
            "workspace": query.workspace,
        }
        after = self.tokens.decode(query_key, token)
        if after is not None:
            conditions.append(_after(column, descending, after))
        order = (column.desc(), tables.Model.id.desc()) if descending else (column, tables.Model.id)
        select = tables.Model.select().order_by(*order).limit(size + 1)
        rows = list(select.where(*conditions) if conditions else select)
        next_token = ""
        if len(rows) > size:
            last = rows[size - 1]
            key = getattr(last, column_name)
            key = key.isoformat() if isinstance(key, dt.datetime) else key
            next_token = self.tokens.encode(query_key, [key, last.id])
        return Page(_model_records(rows[:size]), next_token)

    @in_thread
    def update_model(self, name: str, fields: ModelFields, mask: Sequence[str]) -> ModelRecord:
        with db.database.atomic():
            row = rules.check_model_write(_model_row(name))
            current = model_metadata.read(row, _tags_of([row.id])[row.id])
            merged = model_metadata.check_fields(model_metadata.apply_mask(current, fields, mask))
            row.update_time = db.utcnow()
            model_metadata.write(row, merged)
        changed()
        return _model_records([row])[0]

    @in_thread
    def delete_model(self, name: str) -> None:
        with db.database.atomic():
            row = rules.check_model_write(_model_row(name))
            _refuse_if_deployed(row)
            row.delete_instance(recursive=False)
        changed()
        self.repository.delete_model(name)
        self.blobs.collect()

    # --- versions -----------------------------------------------------------

    @in_thread
    def list_versions(self, model: str, requested_size: int, token: str) -> Page[VersionRecord]:
        size = page_size(requested_size)
        query_key = {"list": "versions", "model": model}
        after = self.tokens.decode(query_key, token)
        row = _model_row(model)
        query = (
            tables.ModelVersion.select()
            .where(tables.ModelVersion.model == row)
            .order_by(tables.ModelVersion.version)
            .limit(size + 1)
        )
        if after is not None:
            query = query.where(tables.ModelVersion.version > int(after))
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
        with db.database.atomic():
            rules.check_model_write(_model_row(model))
            row = version_row(model, version)
            _refuse_if_deployed(row.model, row.version)
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
        files = record.files
        if path:
            check_relative_path(path)
            files = [spec for spec in files if spec.path == path]
            if not files:
                raise NotFound(f"version {record.version} of {model!r} has no file {path!r}")
        if offset < 0 or (offset and not path):
            raise InvalidArgument("offset must be >= 0 and is allowed only with a path")
        for spec in files:

            def open_file(spec: FileSpec = spec) -> BinaryIO:
                return self.repository.open_version_file(
                    record.model, record.version, spec.path, spec.sha256
                )

            what = f"{spec.path!r} of {model!r} version {record.version}"
            async for chunk in _read_file(open_file, spec, offset if path else 0, what):
                yield chunk

    # --- artifacts ----------------------------------------------------------

    @in_thread
    def get_artifact(self, model: str, version: int, path: str) -> ArtifactRecord:
        return find_artifact(model, version, path)

    @in_thread
    def list_artifacts(
        self, model: str, version: int, requested_size: int, token: str, kind: str = ""
    ) -> Page[ArtifactRecord]:
        size = page_size(requested_size)
        if kind and kind not in ARTIFACT_KINDS:
            raise InvalidArgument(f"kind {kind!r} is not one of {', '.join(ARTIFACT_KINDS)}")
        row = version_row(model, version)
        query_key = {"list": "artifacts", "model": model, "version": row.version, "kind": kind}
        after = self.tokens.decode(query_key, token)
        query = (
            tables.Artifact.select(tables.Artifact, tables.Blob)
            .join(tables.Blob)
            .where(tables.Artifact.version == row)
            .order_by(tables.Artifact.path)
            .limit(size + 1)
        )
        if after is not None:
            query = query.where(tables.Artifact.path > str(after))
        if kind:
            query = query.where(tables.Artifact.kind == kind)
        rows = list(query)
        records = [_artifact_record(found, model, row.version) for found in rows[:size]]
        next_token = self.tokens.encode(query_key, rows[size - 1].path) if len(rows) > size else ""
        return Page(records, next_token)

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
        async for chunk in _read_file(open_blob, spec, offset, what):
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

    def commit_version(
        self,
        *,
        model: str,
        upload_id: str,
        files: Sequence[FileSpec],
        config: str,
        manifest_sha256: str,
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
                return self._commit_once(model, upload_id, files, config, manifest_sha256)
            except _LostRace:
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
        with db.database.atomic():
            model_row = tables.Model.get_or_none(
                tables.Model.name == model
            ) or _created_in_savepoint(
                lambda: tables.Model.create(name=model, workspace=rules.workspace_for_new_model(""))
            )
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
            row = _created_in_savepoint(
                lambda: tables.ModelVersion.create(
                    model=model_row,
                    version=number,
                    sha256=manifest_sha256,
                    size_bytes=sum(spec.size for spec in files),
                    files=json.dumps([[spec.path, spec.size, spec.sha256] for spec in files]),
                    config=config,
                    upload_id=upload_id,
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


async def _read_file(
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


def require_download_allowed(model: str) -> None:
    """Raise unless the caller may download ``model``'s files (blocking).

    Versions and artifacts alike pass here: NOT_FOUND when the caller may not
    see the model, PERMISSION_DENIED when its allow_download is off.
    """
    rules.check_download(_model_row(model))


def _downloadable_version(model: str, version: int) -> VersionRecord:
    """``model``'s ``version``, if the caller may download its files (blocking)."""
    require_download_allowed(model)
    return find_version(model, version)


def _downloadable_artifact(model: str, version: int, path: str) -> ArtifactRecord:
    """The artifact, if the caller may download it (blocking)."""
    record = find_artifact(model, version, path)
    require_download_allowed(record.model)
    return record


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


class _LostRace(Exception):
    """A concurrent commit created the model or took the version number first.

    Retrying sees its row. Any other integrity error is a real fault and is
    not retried.
    """


def _created_in_savepoint(create: Callable[[], Any]) -> Any:
    """``create()`` in a savepoint (PostgreSQL aborts the whole transaction on a
    unique violation unless it is contained), a unique clash as ``_LostRace``."""
    try:
        with db.database.atomic():
            return create()
    except pw.IntegrityError:
        raise _LostRace from None


def writable_model(name: str) -> Any:
    """The row of model ``name`` if the caller may change it (blocking)."""
    return rules.check_model_write(_model_row(name))


def check_upload(name: str) -> None:
    """Raise unless the caller may add a version to ``name``, or create it (blocking)."""
    row = tables.Model.get_or_none(tables.Model.name == name)
    if row is None:
        rules.workspace_for_new_model("")
    else:
        rules.check_model_write(row)


def find_version(model: str, version: int) -> VersionRecord:
    """``model``'s ``version`` (0: the latest), or NotFound (blocking)."""
    return _version_record(version_row(model, version), model)


def version_row(model: str, version: int) -> Any:
    """The store row of ``model``'s ``version`` (0: the latest), or NotFound."""
    model_row = _model_row(model)
    query = tables.ModelVersion.select().where(tables.ModelVersion.model == model_row)
    if version < 0:
        raise InvalidArgument(f"version must be positive, got {version}")
    if version == 0:
        row = query.order_by(tables.ModelVersion.version.desc()).first()
        if row is None:
            raise NotFound(f"model {model!r} has no versions yet: upload one first")
        return row
    row = query.where(tables.ModelVersion.version == version).first()
    if row is None:
        raise NotFound(f"model {model!r} has no version {version}")
    return row


def _model_row(name: str) -> Any:
    """The model's row if the caller may see it; NotFound alike when absent or hidden."""
    check_name(name, "model name")
    row = tables.Model.get_or_none(tables.Model.name == name)
    if row is None:
        raise rules.not_found(name)
    return rules.check_model_read(row)


def refuse_pipeline_name(name: str) -> None:
    """AlreadyExists when a pipeline has ``name``: pipelines and models share names."""
    if tables.Pipeline.select().where(tables.Pipeline.name == name).exists():
        raise AlreadyExists(
            f"a pipeline is named {name!r}; pipelines and models share one namespace "
            "(the pipeline is a Triton model): choose another name"
        )


def member_rows(model: str) -> Any:
    """The PipelineMember rows, with their deployment and pipeline, that run ``model``."""
    return (
        tables.PipelineMember.select(
            tables.PipelineMember, tables.PipelineDeployment, tables.Pipeline
        )
        .join(tables.PipelineDeployment)
        .join(tables.Pipeline)
        .switch(tables.PipelineMember)
        .join(tables.Model)
        .where(tables.Model.name == model)
        .order_by(tables.Pipeline.name)
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
    query = tables.Deployment.select().where(tables.Deployment.model == model_row)
    if version is not None:
        query = query.where(tables.Deployment.version == version)
    deployment = query.first()
    if deployment is not None:
        what = f"version {deployment.version} of {model_row.name!r}"
        raise FailedPrecondition(
            f"{what} is deployed (deployment {deployment.name!r}); undeploy it first"
        )


def _parse_order(order_by: str) -> tuple[str, bool]:
    """AIP-132 ``order_by``: a column, optionally " asc" or " desc"; empty is "name"."""
    words = order_by.split()
    if not words:
        return "name", False
    if words[0] in _ORDERS and (
        len(words) == 1 or (len(words) == 2 and words[1] in ("asc", "desc"))
    ):
        return words[0], words[-1] == "desc"
    raise InvalidArgument(
        f"order_by {order_by!r} is not understood: use one of {', '.join(_ORDERS)}, "
        "optionally followed by ' desc' (e.g. 'create_time desc')"
    )


def _model_filter(query: ModelQuery) -> list[Any]:
    """The conditions (all must hold) for ``query``'s filters; InvalidArgument names a bad one."""
    model = tables.Model
    conditions: list[Any] = []
    if query.name_prefix:
        conditions.append(model.name.startswith(query.name_prefix))
    if query.workspace:
        check_name(query.workspace, "workspace name")
        space = tables.Workspace.select(tables.Workspace.id).where(
            tables.Workspace.name == query.workspace
        )
        conditions.append(model.workspace.in_(space))
    if model_metadata.check_kind(query.kind, "kind"):
        conditions.append(model.kind == query.kind)
    for tag in model_metadata.check_tags(query.tags_all, "tags_all"):
        conditions.append(_has_tags([tag]))
    tags_any = model_metadata.check_tags(query.tags_any, "tags_any")
    if tags_any:
        conditions.append(_has_tags(tags_any))
    for index, entry in enumerate(query.labels):
        key, equals, value = entry.partition("=")
        where = f"labels[{index}]"
        if not equals:
            raise InvalidArgument(f"{where}: {entry!r} is not key=value (e.g. 'team=vision')")
        model_metadata.check_label(key, value, where)
        label = tables.ModelLabel
        conditions.append(
            pw.fn.EXISTS(
                label.select(pw.SQL("1")).where(
                    (label.model == model.id) & (label.key == key) & (label.value == value)
                )
            )
        )
    return conditions


def _has_tags(tags: list[str]) -> Any:
    """True for a model carrying any of ``tags``: a probe of model_tag's (model, tag) index."""
    tag = tables.ModelTag
    return pw.fn.EXISTS(
        tag.select(pw.SQL("1")).where((tag.model == tables.Model.id) & tag.tag.in_(tags))
    )


def _after(column: Any, descending: bool, key: Any) -> Any:
    """Rows after the page token's ``[sort key, id]`` in the page order."""
    if not (isinstance(key, list) and len(key) == 2 and isinstance(key[1], int)):
        raise InvalidArgument("page_token is malformed: ask for the first page again")
    value, last_id = key
    if isinstance(column, pw.DateTimeField):
        value = dt.datetime.fromisoformat(value)
    if column is tables.Model.name:  # unique: the name alone is the key
        return column < value if descending else column > value
    row, last = pw.Tuple(column, tables.Model.id), pw.Tuple(value, last_id)
    return row < last if descending else row > last


def _tags_of(model_ids: list[int]) -> dict[int, list[str]]:
    tags: dict[int, list[str]] = {model_id: [] for model_id in model_ids}
    query = (
        tables.ModelTag.select(tables.ModelTag.model, tables.ModelTag.tag)
        .where(tables.ModelTag.model.in_(model_ids))
        .order_by(tables.ModelTag.tag)
        .tuples()
    )
    rows: list[tuple[int, str]] = list(query)  # type: ignore[arg-type]  # .tuples()
    for model_id, tag in rows:
        tags[model_id].append(tag)
    return tags


def _model_records(rows: list[Any]) -> list[ModelRecord]:
    """Records for ``rows`` with two more queries in all (tags, version counts), not per row."""
    if not rows:
        return []
    ids = [row.id for row in rows]
    tags = _tags_of(ids)
    version = tables.ModelVersion
    query = (
        version.select(version.model, pw.fn.MAX(version.version), pw.fn.COUNT(version.id))
        .where(version.model.in_(ids))
        .group_by(version.model)
        .tuples()
    )
    counts: list[tuple[int, int, int]] = list(query)  # type: ignore[arg-type]  # .tuples()
    stats = {model_id: (latest, count) for model_id, latest, count in counts}
    spaces = {row.workspace_id for row in rows} - {None}
    space_names: dict[int, str] = dict(
        tables.Workspace.select(tables.Workspace.id, tables.Workspace.name)
        .where(tables.Workspace.id.in_(list(spaces)))
        .tuples()  # type: ignore[arg-type]  # .tuples()
    )
    return [
        ModelRecord(
            name=row.name,
            fields=model_metadata.read(row, tags[row.id]),
            create_time=row.create_time,
            update_time=row.update_time,
            latest_version=stats.get(row.id, (0, 0))[0],
            version_count=stats.get(row.id, (0, 0))[1],
            workspace=space_names.get(row.workspace_id, ""),
        )
        for row in rows
    ]


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
