"""Models in the catalog: their metadata, the ListModels filters and orders, and
what may be done to a model (see, change, download, upload to, delete).

Every public method of ``Models`` is a coroutine; the blocking store work runs
in a thread (``in_thread``). Versions are in ``versions.py``, artifacts in
``artifacts.py``; both find their model through ``model_row`` here.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import peewee as pw

from mlserve.access import forget_decisions, rules
from mlserve.access.workspaces import workspace_id_query, workspace_names
from mlserve.catalog import model_metadata
from mlserve.catalog.model_metadata import ModelFields
from mlserve.catalog.namespace import refuse_pipeline_name
from mlserve.core.errors import AlreadyExists, InvalidArgument
from mlserve.core.names import check_name, check_tags
from mlserve.core.paging import Listing, Page, PageTokens
from mlserve.storage import db, tables
from mlserve.storage.blobs import Blobs
from mlserve.storage.db import in_thread
from mlserve.storage.repository import Repository


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


class Usage(Protocol):
    """What the catalog asks the deployments before it deletes (blocking calls);
    ``deploy.lifecycle.DeploymentUsage`` answers."""

    def refuse_if_deployed(self, model: str, version: int | None = None) -> None:
        """FailedPrecondition when ``model`` (at ``version``; None: any) is deployed."""

    def deployed_version(self, name: str) -> int:
        """The version deployment ``name`` runs, 0 when there is none."""


class Models:
    def __init__(
        self, repository: Repository, tokens: PageTokens, blobs: Blobs, usage: Usage
    ) -> None:
        self.repository = repository
        self.tokens = tokens
        self.blobs = blobs
        self.usage = usage

    @in_thread
    def create_model(self, name: str, fields: ModelFields, workspace: str = "") -> ModelRecord:
        """Create model ``name`` with ``fields``, in ``workspace`` (default: the caller's
        default workspace).

        Raises:
            InvalidArgument: a bad name or field.
            AlreadyExists: a model or a pipeline has that name.
            PermissionDenied: the caller may not add models to that workspace.
        """
        check_name(name, "model name")
        refuse_pipeline_name(name)
        fields = model_metadata.check_fields(model_metadata.for_create(fields))
        try:
            with db.database.atomic():
                row = tables.Model(name=name, workspace=rules.workspace_for_new_model(workspace))
                model_metadata.write(row, fields)
        except pw.IntegrityError:
            raise AlreadyExists(f"model {name!r} already exists") from None
        forget_decisions()
        return _model_records([row])[0]

    @in_thread
    def get_model(self, name: str) -> ModelRecord:
        """Model ``name``; NotFound alike when absent and when the caller may not see it."""
        return _model_records([model_row(name)])[0]

    @in_thread
    def list_models(self, requested_size: int, token: str, query: ModelQuery) -> Page[ModelRecord]:
        """One page in ``query``'s order, after the (sort key, id) the token carries.

        Keyset paging: a page starts strictly after the previous page's last
        row, so rows inserted or deleted between pages shift nothing; the id
        breaks ties between equal sort keys.
        """
        column_name, descending = _parse_order(query.order_by)
        column = _ORDERS[column_name]
        conditions = _model_filter(query)
        visible = rules.visible_models()
        if visible is not None:
            conditions.append(visible)
        select = tables.Model.select()
        listing = Listing(
            select.where(*conditions) if conditions else select,
            column,
            lambda row: row,
            lambda row: [_json_key(getattr(row, column_name)), row.id],
            {
                "list": "models",
                "prefix": query.name_prefix,
                "kind": query.kind,
                "all": sorted(set(query.tags_all)),
                "any": sorted(set(query.tags_any)),
                "labels": sorted(set(query.labels)),
                "order": [column_name, descending],
                "workspace": query.workspace,
            },
            sort=(column.desc(), tables.Model.id.desc())
            if descending
            else (column, tables.Model.id),
            after=lambda key: _after(column, descending, key),
        )
        page = self.tokens.page(listing, requested_size, token)
        # records in one go: two more queries for the page, not two per row
        return Page(_model_records(page.items), page.next_page_token)

    @in_thread
    def update_model(self, name: str, fields: ModelFields, mask: Sequence[str]) -> ModelRecord:
        """Change the fields ``mask`` names (``*``: all updatable ones), checked like a create;
        the model's editors and admins only.

        Raises:
            InvalidArgument: an immutable, output-only or unknown field in the mask, or a bad value.
        """
        with db.database.atomic():
            row = rules.check_model_write(model_row(name))
            current = model_metadata.read(row, _tags_of([row.id])[row.id])
            merged = model_metadata.check_fields(model_metadata.apply_mask(current, fields, mask))
            row.update_time = db.utcnow()
            model_metadata.write(row, merged)
        forget_decisions()
        return _model_records([row])[0]

    @in_thread
    def delete_model(self, name: str) -> None:
        """Delete the model with its versions and artifacts, then the file contents nothing
        else uses. FailedPrecondition while any version is deployed, alone or in a pipeline.
        """
        with db.database.atomic():
            row = rules.check_model_write(model_row(name))
            self.usage.refuse_if_deployed(row.name)
            row.delete_instance(recursive=False)
        forget_decisions()
        self.repository.delete_model(name)
        self.blobs.collect()


def adopt_unowned_models(workspace_id: int) -> int:
    """Put every model without a workspace (from a database older than workspaces)
    into workspace ``workspace_id``; how many moved (blocking)."""
    unowned = tables.Model.workspace.is_null()
    return int(tables.Model.update(workspace=workspace_id).where(unowned).execute())


def hidden_model(name: str) -> bool:
    """Whether a model named ``name`` exists that the caller may not see (blocking)."""
    row = tables.Model.get_or_none(tables.Model.name == name)
    return row is not None and not rules.can_see_model(rules.caller(), row)


def writable_model(name: str) -> Any:
    """The row of model ``name`` if the caller may change it (blocking)."""
    return rules.check_model_write(model_row(name))


def check_upload(name: str) -> None:
    """Raise unless the caller may add a version to ``name``, or create it (blocking)."""
    row = tables.Model.get_or_none(tables.Model.name == name)
    if row is None:
        rules.workspace_for_new_model("")
    else:
        rules.check_model_write(row)


def require_download_allowed(model: str) -> None:
    """Raise unless the caller may download ``model``'s files (blocking).

    Versions and artifacts alike pass here: NOT_FOUND when the caller may not
    see the model, PERMISSION_DENIED when its allow_download is off.
    """
    rules.check_download(model_row(model))


def ids_of(names: Iterable[str]) -> dict[str, int]:
    """The row id of each model named that exists, whoever the caller is: for
    MLServe's own accounting (the memory a server's models need), never shown
    (blocking)."""
    wanted = sorted(set(names))
    if not wanted:
        return {}
    query = tables.Model.select(tables.Model.name, tables.Model.id).where(
        tables.Model.name.in_(wanted)
    )
    return {row.name: row.id for row in query}


def visible_model_ids(workspace: str = "") -> Any:
    """A query of the ids of the models the caller may see, of ``workspace`` when given,
    to filter other tables by (blocking)."""
    query = tables.Model.select(tables.Model.id)
    if workspace:
        query = query.where(tables.Model.workspace.in_(workspace_id_query(workspace)))
    visible = rules.visible_models()
    return query if visible is None else query.where(visible)


def model_names(model_ids: Sequence[int]) -> dict[int, str]:
    """The names of the models with ``model_ids`` (blocking; no visibility check)."""
    if not model_ids:
        return {}
    query = tables.Model.select(tables.Model.id, tables.Model.name)
    rows = query.where(tables.Model.id.in_(sorted(set(model_ids))))
    return {row.id: row.name for row in rows}


def model_row(name: str) -> Any:
    """The model's row if the caller may see it; NotFound alike when absent or hidden."""
    check_name(name, "model name")
    row = tables.Model.get_or_none(tables.Model.name == name)
    if row is None:
        raise rules.not_found(name)
    return rules.check_model_read(row)


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
        conditions.append(model.workspace.in_(workspace_id_query(query.workspace)))
    if model_metadata.check_kind(query.kind, "kind"):
        conditions.append(model.kind == query.kind)
    for tag in check_tags(query.tags_all, "tags_all"):
        conditions.append(_has_tags([tag]))
    tags_any = check_tags(query.tags_any, "tags_any")
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


def _json_key(value: Any) -> Any:
    """A sort key as a page token keeps it: datetimes as ISO text."""
    return value.isoformat() if isinstance(value, dt.datetime) else value


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
    space_names = workspace_names({row.workspace_id for row in rows} - {None})
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


class LostRace(Exception):
    """A concurrent commit created the model or took the version number first.

    Retrying sees its row. Any other integrity error is a real fault and is
    not retried.
    """


def created_in_savepoint(create: Callable[[], Any]) -> Any:
    """``create()`` in a savepoint (PostgreSQL aborts the whole transaction on a
    unique violation unless it is contained), a unique clash as ``LostRace``."""
    try:
        with db.database.atomic():
            return create()
    except pw.IntegrityError:
        raise LostRace from None


def model_for_upload(name: str) -> Any:
    """The row of model ``name``, created in the caller's default workspace when
    absent (blocking, inside the committing transaction). LostRace when a
    concurrent commit creates it first: the retry then finds it."""
    found = tables.Model.get_or_none(tables.Model.name == name)
    return found or created_in_savepoint(
        lambda: tables.Model.create(name=name, workspace=rules.workspace_for_new_model(""))
    )


def downloadable_model_ids() -> Any:
    """A query of the ids of the models whose files the caller may download (None: all).

    Skipping an upload's bytes on a digest match hands the caller the stored
    content. Without this, knowing a private file's sha256 and size would be
    enough to copy it into one's own model and download it from there.
    """
    visible = rules.visible_models()
    if visible is None:
        return None
    readable = visible & (tables.Model.allow_download == True)  # noqa: E712
    return tables.Model.select(tables.Model.id).where(readable)
