"""Datasets: named, workspace-owned families of immutable versions, each a set of
CSV or Parquet files whose schema (columns, types, rows) is read from the files,
and optionally Python scripts (``*.py``, stored as they are: a training job's
code may come from a dataset).

Who may see and change a dataset follows the rules of models (``access.rules``:
workspace and visibility; a hidden dataset answers like a missing one). Files
arrive through the upload machinery of model versions (``catalog.uploads``),
which calls ``commit_dataset_version`` (blocking) once every file checked out.
Every other public method of ``Datasets`` is a coroutine.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt
import peewee as pw
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pa_parquet

from mlserve.access import rules
from mlserve.access.workspaces import workspace_id_query, workspace_names
from mlserve.catalog.model_metadata import VISIBILITIES
from mlserve.catalog.models import LostRace, created_in_savepoint
from mlserve.catalog.versions import DownloadChunk, files_to_send, numbered_row, read_file
from mlserve.core.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from mlserve.core.names import check_name, check_tags, check_update_mask
from mlserve.core.paging import Listing, Page, PageTokens
from mlserve.storage import db, tables
from mlserve.storage.blobs import Blobs, FileSpec
from mlserve.storage.db import in_thread
from mlserve.storage.repository import Repository

# The upload kind (tables.Upload.artifact_kind) of a dataset version's upload.
DATASET_UPLOAD = "dataset"
FORMATS = {".csv": "CSV", ".parquet": "Parquet"}
# Files a dataset keeps beside its tables without reading them: training scripts.
SCRIPTS = (".py",)
UPDATABLE = ("description", "tags", "visibility")


@dataclass(frozen=True)
class DatasetFields:
    """What a caller sets on a dataset."""

    description: str = ""
    tags: Sequence[str] = ()
    visibility: str = ""


@dataclass(frozen=True)
class DatasetRecord:
    name: str
    fields: DatasetFields
    workspace: str
    create_time: dt.datetime
    update_time: dt.datetime
    latest_version: int = 0
    version_count: int = 0


@dataclass(frozen=True)
class DatasetFileRecord:
    spec: FileSpec
    row_count: int


@dataclass(frozen=True)
class DatasetVersionRecord:
    dataset: str
    version: int
    sha256: str
    size_bytes: int
    files: list[DatasetFileRecord]
    columns: list[tuple[str, str]]
    row_count: int
    upload_id: str
    create_time: dt.datetime

    @property
    def tables(self) -> list[DatasetFileRecord]:
        """The CSV and Parquet files (what has the schema), without the scripts."""
        return [entry for entry in self.files if is_table(entry.spec.path)]


@dataclass(frozen=True)
class DatasetQuery:
    """What ListDatasets asks for; every filter must hold."""

    name_prefix: str = ""
    workspace: str = ""
    tags_all: Sequence[str] = field(default_factory=list)
    tags_any: Sequence[str] = field(default_factory=list)


@dataclass(frozen=True)
class TableSchema:
    """What the parser read from one file."""

    columns: list[tuple[str, str]]
    row_count: int


class Datasets:
    def __init__(self, repository: Repository, tokens: PageTokens, blobs: Blobs) -> None:
        self.repository = repository
        self.tokens = tokens
        self.blobs = blobs

    @in_thread
    def create_dataset(
        self, name: str, fields: DatasetFields, workspace: str = ""
    ) -> DatasetRecord:
        """Create dataset ``name`` in ``workspace`` (default: the caller's default workspace).

        Raises:
            InvalidArgument: a bad name, tag or visibility.
            AlreadyExists: a dataset has that name.
            PermissionDenied: the caller may not add to that workspace.
        """
        check_name(name, "dataset name")
        checked = _check_fields(fields)
        try:
            with db.database.atomic():
                row = tables.Dataset.create(
                    name=name,
                    description=checked.description,
                    visibility=checked.visibility or VISIBILITIES[0],
                    workspace=rules.workspace_for_new_model(workspace),
                )
                _write_tags(row, checked.tags)
        except pw.IntegrityError:
            raise AlreadyExists(f"dataset {name!r} already exists") from None
        return _dataset_records([row])[0]

    @in_thread
    def get_dataset(self, name: str) -> DatasetRecord:
        """Dataset ``name``; NotFound alike when absent and when the caller may not see it."""
        return _dataset_records([dataset_row(name)])[0]

    @in_thread
    def list_datasets(
        self, requested_size: int, token: str, query: DatasetQuery
    ) -> Page[DatasetRecord]:
        """One page of the visible datasets matching ``query``, by name."""
        return self._page(requested_size, token, query, "datasets")

    @in_thread
    def search_datasets(
        self, terms: Sequence[str], requested_size: int, token: str
    ) -> Page[DatasetRecord]:
        """The visible datasets carrying every tag of ``terms`` ("#tag" each), by name;
        an empty page when none does. InvalidArgument for a term without '#'."""
        tags = []
        for index, term in enumerate(terms):
            if not term.startswith("#") or len(term) < 2:
                raise InvalidArgument(
                    f"query[{index}]: {term!r} is not a tag term; write '#' and the tag, "
                    "e.g. '#diabetes'"
                )
            tags.append(term[1:])
        if not tags:
            raise InvalidArgument("query is empty: give one or more '#tag' terms")
        return self._page(requested_size, token, DatasetQuery(tags_all=tags), "search")

    def _page(
        self, requested_size: int, token: str, query: DatasetQuery, what: str
    ) -> Page[DatasetRecord]:
        conditions = _dataset_filter(query)
        visible = rules.visible_models(tables.Dataset)
        if visible is not None:
            conditions.append(visible)
        select = tables.Dataset.select()
        listing = Listing(
            select.where(*conditions) if conditions else select,
            tables.Dataset.name,
            lambda row: row,
            lambda row: row.name,
            {
                "list": what,
                "prefix": query.name_prefix,
                "workspace": query.workspace,
                "all": sorted(set(query.tags_all)),
                "any": sorted(set(query.tags_any)),
            },
        )
        page = self.tokens.page(listing, requested_size, token)
        return Page(_dataset_records(page.items), page.next_page_token)

    @in_thread
    def update_dataset(
        self, name: str, fields: DatasetFields, mask: Sequence[str]
    ) -> DatasetRecord:
        """Change the fields ``mask`` names (``*``: all of ``UPDATABLE``), checked like a
        create; the dataset's workspace editors and admins only."""
        paths = list(UPDATABLE) if list(mask) == ["*"] else list(mask)
        check_update_mask(paths, UPDATABLE)
        checked = _check_fields(fields)
        with db.database.atomic():
            row = rules.check_model_write(dataset_row(name))
            if "description" in paths:
                row.description = checked.description
            if "visibility" in paths:
                row.visibility = checked.visibility or VISIBILITIES[0]
            if "tags" in paths:
                tables.DatasetTag.delete().where(tables.DatasetTag.dataset == row).execute()
                _write_tags(row, checked.tags)
            row.update_time = db.utcnow()
            row.save()
        return _dataset_records([row])[0]

    @in_thread
    def delete_dataset(self, name: str) -> None:
        """Delete the dataset with its versions, then the file contents nothing else uses.

        FailedPrecondition while a model version names one of its versions as
        its training dataset.
        """
        with db.database.atomic():
            row = rules.check_model_write(dataset_row(name))
            user = (
                tables.ModelVersion.select(tables.ModelVersion, tables.DatasetVersion)
                .join(tables.DatasetVersion)
                .where(tables.DatasetVersion.dataset == row)
                .first()
            )
            if user is not None:
                raise FailedPrecondition(
                    f"dataset {name!r} version {user.training_dataset.version} is the training "
                    f"dataset of model {user.model.name!r} version {user.version}: delete that "
                    "model version first"
                )
            row.delete_instance(recursive=False)  # the database cascades
        self.blobs.collect()

    @in_thread
    def get_version(self, dataset: str, version: int) -> DatasetVersionRecord:
        """``dataset``'s ``version`` (0: the latest); NotFound alike when absent or hidden."""
        return _version_record(dataset_version_row(dataset, version), dataset)

    @in_thread
    def list_versions(
        self, dataset: str, requested_size: int, token: str
    ) -> Page[DatasetVersionRecord]:
        """``dataset``'s versions, lowest first; NotFound alike when absent or hidden."""
        row = dataset_row(dataset)
        listing = Listing(
            tables.DatasetVersion.select().where(tables.DatasetVersion.dataset == row),
            tables.DatasetVersion.version,
            lambda found: _version_record(found, dataset),
            lambda found: found.version,
            {"list": "dataset_versions", "dataset": dataset},
        )
        return self.tokens.page(listing, requested_size, token)

    async def download(
        self, dataset: str, version: int, path: str = "", offset: int = 0
    ) -> AsyncIterator[DownloadChunk]:
        """Stream a version's files in path order; only ``path`` from ``offset`` when given."""
        record = await self.get_version(dataset, version)
        what = f"version {record.version} of dataset {dataset!r}"
        for spec in files_to_send([entry.spec for entry in record.files], path, offset, what):

            def open_blob(spec: FileSpec = spec) -> BinaryIO:
                return self.repository.open_blob(spec.sha256)

            what = f"{spec.path!r} of dataset {dataset!r} version {record.version}"
            async for chunk in read_file(open_blob, spec, offset, what):
                yield chunk

    @in_thread
    def list_tags(self) -> list[tuple[str, int]]:
        """Every tag of the datasets the caller may see, with how many carry it, by tag."""
        tag = tables.DatasetTag
        query = (
            tag.select(tag.tag, pw.fn.COUNT(tag.dataset))
            .join(tables.Dataset)
            .group_by(tag.tag)
            .order_by(tag.tag)
        )
        visible = rules.visible_models(tables.Dataset)
        if visible is not None:
            query = query.where(visible)
        rows: list[tuple[str, int]] = list(query.tuples())  # type: ignore[arg-type]  # .tuples()
        return rows

    def commit_dataset_version(
        self, *, dataset: str, upload_id: str, files: Sequence[FileSpec], manifest_sha256: str
    ) -> DatasetVersionRecord:
        """Read each stored table's schema and number the upload as the next version
        (blocking; every file is a blob the upload pins). The same manifest returns
        the existing version. Scripts are kept unread (no columns, no rows).

        Raises:
            InvalidArgument: a table does not parse as its format, or the tables'
                columns differ.
        """
        schemas = [
            self.read_schema(spec) if is_table(spec.path) else TableSchema([], 0) for spec in files
        ]
        tables_read = [(s, t) for s, t in zip(files, schemas, strict=True) if is_table(s.path)]
        columns = tables_read[0][1].columns if tables_read else []
        for spec, schema in tables_read:
            if schema.columns != columns:
                raise InvalidArgument(
                    f"file {spec.path!r} has columns {_describe(schema.columns)} but "
                    f"{tables_read[0][0].path!r} has {_describe(columns)}: a version's "
                    "tables must share one schema"
                )
        for _ in range(20):
            try:
                return self._commit_once(
                    dataset, upload_id, files, schemas, columns, manifest_sha256
                )
            except LostRace:
                continue
        raise FailedPrecondition(f"could not number a new version of dataset {dataset!r}; retry")

    def read_schema(self, spec: FileSpec) -> TableSchema:
        """The columns and rows of a stored file, read by the parser of its format."""
        with self.repository.open_blob(spec.sha256) as handle:
            return read_table_schema(handle, spec.path)

    def _commit_once(
        self,
        dataset: str,
        upload_id: str,
        files: Sequence[FileSpec],
        schemas: Sequence[TableSchema],
        columns: list[tuple[str, str]],
        manifest_sha256: str,
    ) -> DatasetVersionRecord:
        version = tables.DatasetVersion
        with db.database.atomic():
            owner = writable_dataset(dataset)
            row = version.get_or_none(
                (version.dataset == owner) & (version.sha256 == manifest_sha256)
            )
            if row is None:
                latest = version.select(pw.fn.MAX(version.version)).where(version.dataset == owner)
                number = (latest.scalar() or 0) + 1
                row = created_in_savepoint(
                    lambda: version.create(
                        dataset=owner,
                        version=number,
                        sha256=manifest_sha256,
                        size_bytes=sum(spec.size for spec in files),
                        columns=json.dumps(columns),
                        row_count=sum(schema.row_count for schema in schemas),
                        upload_id=upload_id,
                    )
                )
                tables.DatasetFile.insert_many(
                    [
                        {"version": row, "path": s.path, "blob": s.sha256, "row_count": t.row_count}
                        for s, t in zip(files, schemas, strict=True)
                    ]
                ).execute()
            tables.Upload.update(committed_version=row.version, update_time=db.utcnow()).where(
                tables.Upload.upload_id == upload_id
            ).execute()
            self.blobs.release(upload_id)
        self.repository.discard_staging(upload_id)
        return _version_record(row, dataset)


def read_table_schema(handle: BinaryIO, path: str) -> TableSchema:
    """The columns (name, Arrow type) and row count of a CSV or Parquet file.

    CSV is streamed batch by batch, so memory stays bounded whatever the size.
    InvalidArgument, with the parser's own message, when the file does not parse.
    """
    suffix = _suffix(path)
    try:
        if suffix == ".parquet":
            parquet = pa_parquet.ParquetFile(handle)
            schema, rows = parquet.schema_arrow, parquet.metadata.num_rows
        else:
            reader = pa_csv.open_csv(handle)
            schema, rows = reader.schema, sum(batch.num_rows for batch in reader)
    except (pa.ArrowException, OSError, ValueError) as error:
        raise InvalidArgument(
            f"file {path!r} is not valid {FORMATS[suffix]}: {error}; the upload was dropped, "
            "fix the file and upload it again"
        ) from None
    return TableSchema([(f.name, str(f.type)) for f in schema], int(rows))


def read_numeric_column(
    repository: Repository, files: Sequence[FileSpec], column: str, what: str
) -> npt.NDArray[np.float64]:
    """Every value of ``column`` in ``files`` (CSV or Parquet blobs), as float64, file
    after file (blocking). Arrow reads only that column and casts it; nulls are NaN.

    Raises:
        InvalidArgument: a file lacks the column (naming those it has), the column is not
            numeric (integer, floating point, decimal or boolean), or a file does not parse.
    """
    parts: list[npt.NDArray[np.float64]] = []
    for spec in files:
        try:
            with repository.open_blob(spec.sha256) as handle:
                table = _read_column(handle, spec.path, column, what)
        except (pa.ArrowException, OSError, ValueError) as error:
            raise InvalidArgument(
                f"{what}: file {spec.path!r} does not read as {FORMATS[_suffix(spec.path)]}: "
                f"{error}"
            ) from None
        # Unsafe: an int64 beyond 2^53 (an id, say) is rounded, not refused as INTERNAL.
        values = pc.fill_null(table.column(0).cast(pa.float64(), safe=False), float("nan"))
        parts.append(np.asarray(values.to_numpy(), dtype=np.float64))
    return np.concatenate(parts) if parts else np.zeros(0, np.float64)


def _read_column(handle: BinaryIO, path: str, column: str, what: str) -> pa.Table:
    if _suffix(path) == ".parquet":
        parquet = pa_parquet.ParquetFile(handle)
        _check_numeric_column(parquet.schema_arrow, column, what)
        return parquet.read(columns=[column])
    _check_has_column(pa_csv.open_csv(handle).schema, column, what)
    handle.seek(0)
    options = pa_csv.ConvertOptions(include_columns=[column])
    table = pa_csv.read_csv(handle, convert_options=options)
    # The type of every row's value: the first block's (open_csv) may be numbers
    # where text comes later, or null where numbers do.
    _check_numeric_column(table.schema, column, what)
    return table


def _check_has_column(schema: pa.Schema, column: str, what: str) -> None:
    if column not in schema.names:
        raise InvalidArgument(
            f"column {column!r}: {what} has no such column; its columns: "
            f"{', '.join(schema.names) or 'none'}"
        )


def _check_numeric_column(schema: pa.Schema, column: str, what: str) -> None:
    _check_has_column(schema, column, what)
    kind = schema.field(column).type
    if not (
        pa.types.is_integer(kind)
        or pa.types.is_floating(kind)
        or pa.types.is_decimal(kind)
        or pa.types.is_boolean(kind)
    ):
        raise InvalidArgument(
            f"column {column!r} of {what} is {kind}, not numeric: choose a column of numbers"
        )


def dataset_column(
    repository: Repository, dataset: str, version: int, column: str
) -> tuple[int, npt.NDArray[np.float64]]:
    """The version number (0 resolved to the latest) and every value of ``column`` of
    ``dataset``'s ``version`` (blocking).

    Raises:
        NotFound: no such dataset (or hidden) or version.
        InvalidArgument: as ``read_numeric_column``.
    """
    record = find_dataset_version(dataset, version)
    what = f"dataset {dataset!r} version {record.version}"
    specs = [entry.spec for entry in record.tables]
    return record.version, read_numeric_column(repository, specs, column, what)


def is_table(path: str) -> bool:
    """Whether ``path`` names a CSV or Parquet file (a table, with a schema)."""
    return _suffix(path) in FORMATS


def check_dataset_file(path: str) -> None:
    """InvalidArgument unless ``path`` names a file a dataset holds: a table or a script."""
    if not is_table(path) and _suffix(path) not in SCRIPTS:
        raise InvalidArgument(
            f"file {path!r} is not a dataset file: name it *.csv or *.parquet "
            f"({' or '.join(FORMATS.values())}), or *.py for a training script"
        )


def check_dataset_path(path: str) -> None:
    """InvalidArgument unless ``path`` names a format a dataset holds."""
    if _suffix(path) not in FORMATS:
        raise InvalidArgument(
            f"file {path!r} is not a dataset file: name it *.csv or *.parquet "
            f"({' or '.join(FORMATS.values())})"
        )


def _suffix(path: str) -> str:
    dot = path.rfind(".")
    return path[dot:].lower() if dot >= 0 else ""


def _describe(columns: Sequence[tuple[str, str]]) -> str:
    return "[" + ", ".join(f"{name}: {kind}" for name, kind in columns) + "]"


def dataset_row(name: str) -> Any:
    """The dataset's row if the caller may see it; NotFound alike when absent or hidden."""
    check_name(name, "dataset name")
    row = tables.Dataset.get_or_none(tables.Dataset.name == name)
    if row is None:
        raise rules.not_found(name, "dataset")
    return rules.check_model_read(row)


def writable_dataset(name: str) -> Any:
    """The dataset's row if the caller may change it (add versions, update, delete)."""
    return rules.check_model_write(dataset_row(name))


def hidden_dataset(name: str) -> bool:
    """Whether a dataset named ``name`` exists that the caller may not see (blocking)."""
    row = tables.Dataset.get_or_none(tables.Dataset.name == name)
    return row is not None and not rules.can_see_model(rules.caller(), row)


def dataset_version_row(dataset: str, version: int) -> Any:
    """The row of ``dataset``'s ``version`` (0: the latest), or NotFound (blocking)."""
    owner = dataset_row(dataset)
    query = tables.DatasetVersion.select().where(tables.DatasetVersion.dataset == owner)
    return numbered_row(query, tables.DatasetVersion.version, version, f"dataset {dataset!r}")


def find_dataset_version(dataset: str, version: int) -> DatasetVersionRecord:
    """``dataset``'s ``version`` (0: the latest) if the caller may see it (blocking)."""
    return _version_record(dataset_version_row(dataset, version), dataset)


def dataset_blobs() -> Any:
    """A query of the sha256s of the dataset files the caller may read (all when MLServe)."""
    query = tables.DatasetFile.select(tables.DatasetFile.blob)
    visible = rules.visible_models(tables.Dataset)
    if visible is None:
        return query
    return query.join(tables.DatasetVersion).join(tables.Dataset).where(visible)


def _check_fields(fields: DatasetFields) -> DatasetFields:
    if fields.visibility and fields.visibility not in VISIBILITIES:
        raise InvalidArgument(
            f"dataset.visibility must be {' or '.join(VISIBILITIES)}, not {fields.visibility!r}"
        )
    return DatasetFields(
        description=fields.description,
        tags=check_tags(fields.tags, "dataset.tags"),
        visibility=fields.visibility,
    )


def _write_tags(row: Any, tags: Sequence[str]) -> None:
    if tags:
        tables.DatasetTag.insert_many([{"dataset": row, "tag": tag} for tag in tags]).execute()


def _has_tags(tags: list[str]) -> Any:
    """True for a dataset carrying any of ``tags``: a probe of dataset_tag's index."""
    tag = tables.DatasetTag
    return pw.fn.EXISTS(
        tag.select(pw.SQL("1")).where((tag.dataset == tables.Dataset.id) & tag.tag.in_(tags))
    )


def _dataset_filter(query: DatasetQuery) -> list[Any]:
    conditions: list[Any] = []
    if query.name_prefix:
        conditions.append(tables.Dataset.name.startswith(query.name_prefix))
    if query.workspace:
        conditions.append(tables.Dataset.workspace.in_(workspace_id_query(query.workspace)))
    for tag in check_tags(query.tags_all, "tags_all"):
        conditions.append(_has_tags([tag]))
    tags_any = check_tags(query.tags_any, "tags_any")
    if tags_any:
        conditions.append(_has_tags(tags_any))
    return conditions


def _dataset_records(rows: list[Any]) -> list[DatasetRecord]:
    """Records for ``rows`` with two more queries in all (tags, version counts)."""
    if not rows:
        return []
    ids = [row.id for row in rows]
    tags: dict[int, list[str]] = {dataset_id: [] for dataset_id in ids}
    tag = tables.DatasetTag
    tag_query = tag.select(tag.dataset, tag.tag).where(tag.dataset.in_(ids)).order_by(tag.tag)
    pairs: list[tuple[int, str]] = list(tag_query.tuples())  # type: ignore[arg-type]  # .tuples()
    for dataset_id, name in pairs:
        tags[dataset_id].append(name)
    version = tables.DatasetVersion
    count_query = (
        version.select(version.dataset, pw.fn.MAX(version.version), pw.fn.COUNT(version.id))
        .where(version.dataset.in_(ids))
        .group_by(version.dataset)
        .tuples()
    )
    counts: list[tuple[int, int, int]] = list(count_query)  # type: ignore[arg-type]  # .tuples()
    stats: dict[int, tuple[int, int]] = {
        dataset_id: (latest, count) for dataset_id, latest, count in counts
    }
    spaces = workspace_names({row.workspace_id for row in rows} - {None})
    return [
        DatasetRecord(
            name=row.name,
            fields=DatasetFields(row.description, tags[row.id], row.visibility),
            workspace=spaces.get(row.workspace_id, ""),
            create_time=row.create_time,
            update_time=row.update_time,
            latest_version=stats.get(row.id, (0, 0))[0],
            version_count=stats.get(row.id, (0, 0))[1],
        )
        for row in rows
    ]


def _version_record(row: Any, dataset: str) -> DatasetVersionRecord:
    files = (
        tables.DatasetFile.select(tables.DatasetFile, tables.Blob)
        .join(tables.Blob)
        .where(tables.DatasetFile.version == row.id)
        .order_by(tables.DatasetFile.path)
    )
    return DatasetVersionRecord(
        dataset=dataset,
        version=row.version,
        sha256=row.sha256,
        size_bytes=row.size_bytes,
        files=[
            DatasetFileRecord(FileSpec(f.path, f.blob.size, f.blob.sha256), f.row_count)
            for f in files
        ],
        columns=[(name, kind) for name, kind in json.loads(row.columns)],
        row_count=row.row_count,
        upload_id=row.upload_id,
        create_time=row.create_time,
    )
