"""Apps: their gateway settings (retries, timeout), the models they route, and
their consumers (who hold app keys).

Every public method is a coroutine running its store work in a thread. Each
write that can change an access decision calls ``forget_decisions()``, so this
process's cached decisions are dropped at once.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import peewee as pw

from mlserve.access import rules
from mlserve.access.keys import forget_decisions
from mlserve.core.errors import AlreadyExists, InvalidArgument, NotFound
from mlserve.core.names import check_name, check_update_mask
from mlserve.core.paging import Listing, Page, PageTokens
from mlserve.storage import db, tables
from mlserve.storage.db import in_thread

UPDATABLE_APP_FIELDS = frozenset({"description", "retries", "timeout"})
MAX_RETRIES = 5


@dataclass(frozen=True)
class AppRecord:
    name: str
    description: str
    retries: int
    timeout_seconds: float
    create_time: dt.datetime


@dataclass(frozen=True)
class AppFields:
    description: str = ""
    retries: int = 2
    timeout_seconds: float = 0.0


@dataclass(frozen=True)
class RouteRecord:
    app: str
    model: str
    create_time: dt.datetime


@dataclass(frozen=True)
class ConsumerRecord:
    app: str
    name: str
    create_time: dt.datetime


class Apps:
    def __init__(self, tokens: PageTokens) -> None:
        self.tokens = tokens

    @in_thread
    def create_app(self, name: str, fields: AppFields) -> AppRecord:
        """Create app ``name``.

        Raises:
            InvalidArgument: a bad name, retries outside 0 to 5, a negative timeout.
            AlreadyExists: an app has that name.
        """
        check_name(name, "app name")
        _check_app_fields(fields)
        try:
            row = tables.App.create(
                name=name,
                description=fields.description,
                retries=fields.retries,
                timeout_seconds=fields.timeout_seconds,
            )
        except pw.IntegrityError:
            raise AlreadyExists(f"app {name!r} already exists") from None
        return _app_record(row)

    @in_thread
    def get_app(self, name: str) -> AppRecord:
        """App ``name``, or NotFound."""
        return _app_record(app_row(name))

    @in_thread
    def list_apps(self, requested: int, token: str) -> Page[AppRecord]:
        """Every app, by name."""
        listing = Listing(
            tables.App.select(), tables.App.name, _app_record, lambda row: row.name,
            {"list": "apps"},
        )  # fmt: skip
        return self.tokens.page(listing, requested, token)

    @in_thread
    def update_app(self, name: str, fields: AppFields, mask: Sequence[str]) -> AppRecord:
        """Change the fields ``mask`` names (description, retries, timeout); the gateway
        applies new retries and timeouts from its next call."""
        check_update_mask(mask, UPDATABLE_APP_FIELDS)
        _check_app_fields(fields)
        row = app_row(name)
        if "description" in mask:
            row.description = fields.description
        if "retries" in mask:
            row.retries = fields.retries
        if "timeout" in mask:
            row.timeout_seconds = fields.timeout_seconds
        row.save()
        forget_decisions()
        return _app_record(row)

    @in_thread
    def delete_app(self, name: str) -> None:
        """Delete the app with its routes, consumers and their keys (which stop working at once)."""
        app_row(name).delete_instance(recursive=True)
        forget_decisions()

    @in_thread
    def add_route(self, app: str, model: str) -> RouteRecord:
        """Let ``app``'s keys call ``model`` through the gateway.

        Raises:
            NotFound: no such app or model.
            AlreadyExists: the app routes the model already.
        """
        with db.database.atomic():
            found = app_row(app)
            rules.require_model(check_name(model, "model"))
            try:
                row = tables.AppRoute.create(app=found, model=model)
            except pw.IntegrityError:
                raise AlreadyExists(f"app {app!r} already routes model {model!r}") from None
        forget_decisions()
        return RouteRecord(app, row.model, row.create_time)

    @in_thread
    def remove_route(self, app: str, model: str) -> None:
        """Stop routing ``model`` for ``app``; NotFound when it was not routed."""
        deleted = (
            tables.AppRoute.delete()
            .where((tables.AppRoute.app == app_row(app)) & (tables.AppRoute.model == model))
            .execute()
        )
        if not deleted:
            raise NotFound(f"app {app!r} has no route to model {model!r}")
        forget_decisions()

    @in_thread
    def list_routes(self, app: str, requested: int, token: str) -> Page[RouteRecord]:
        """``app``'s routes by model name; routes to models the caller may not see are
        not listed."""
        query = tables.AppRoute.select().where(tables.AppRoute.app == app_row(app))
        visible = rules.visible_model_name_query()
        if visible is not None:
            query = query.where(tables.AppRoute.model.in_(visible))
        listing = Listing(
            query, tables.AppRoute.model,
            lambda row: RouteRecord(app, row.model, row.create_time), lambda row: row.model,
            {"list": "routes", "app": app},
        )  # fmt: skip
        return self.tokens.page(listing, requested, token)

    @in_thread
    def add_consumer(self, app: str, name: str) -> ConsumerRecord:
        """Add consumer ``name`` to ``app`` (an admin then makes its keys)."""
        check_name(name, "consumer name")
        try:
            row = tables.AppConsumer.create(app=app_row(app), name=name)
        except pw.IntegrityError:
            raise AlreadyExists(f"app {app!r} already has a consumer {name!r}") from None
        return ConsumerRecord(app, row.name, row.create_time)

    @in_thread
    def remove_consumer(self, app: str, name: str) -> None:
        """Remove the consumer and its keys, which stop working at once."""
        consumer_row(app, name).delete_instance(recursive=True)
        forget_decisions()

    @in_thread
    def list_consumers(self, app: str, requested: int, token: str) -> Page[ConsumerRecord]:
        """``app``'s consumers by name."""
        query = tables.AppConsumer.select().where(tables.AppConsumer.app == app_row(app))
        listing = Listing(
            query, tables.AppConsumer.name,
            lambda row: ConsumerRecord(app, row.name, row.create_time), lambda row: row.name,
            {"list": "consumers", "app": app},
        )  # fmt: skip
        return self.tokens.page(listing, requested, token)


def app_row(name: str) -> Any:
    """The store row of app ``name``, or NotFound (blocking)."""
    row = tables.App.get_or_none(tables.App.name == check_name(name, "app name"))
    if row is None:
        raise NotFound(f"app {name!r} does not exist")
    return row


def consumer_row(app: str, name: str) -> Any:
    """The store row of ``app``'s consumer ``name``, or NotFound (blocking)."""
    row = tables.AppConsumer.get_or_none(
        (tables.AppConsumer.app == app_row(app))
        & (tables.AppConsumer.name == check_name(name, "consumer name"))
    )
    if row is None:
        raise NotFound(f"app {app!r} has no consumer {name!r}")
    return row


def _check_app_fields(fields: AppFields) -> None:
    if not 0 <= fields.retries <= MAX_RETRIES:
        raise InvalidArgument(f"retries must be 0 to {MAX_RETRIES}, got {fields.retries}")
    if fields.timeout_seconds < 0:
        raise InvalidArgument("timeout must not be negative")


def _app_record(row: Any) -> AppRecord:
    return AppRecord(row.name, row.description, row.retries, row.timeout_seconds, row.create_time)
