"""The fleet: registered Triton servers, their clients, and their observed health.

Registration only records a server; its health is observed by ``watch``,
which polls every server, keeps the last status in memory (``ListServers``
reads it without touching a Triton) and tells the reconciler when a server
becomes ready again.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import peewee as pw

from mlserve.access import rules
from mlserve.core.errors import AlreadyExists, InvalidArgument, NotFound
from mlserve.core.names import check_name
from mlserve.core.paging import Page, PageTokens, page_size
from mlserve.storage import db, tables
from mlserve.storage.db import in_thread
from mlserve.triton.client import IndexEntry, TritonClient

log = logging.getLogger(__name__)

READY = "READY"
NOT_READY = "NOT_READY"
UNREACHABLE = "UNREACHABLE"
UNCHECKED = "UNSPECIFIED"

_DNS_LABEL = r"[A-Za-z0-9]([A-Za-z0-9\-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}$){_DNS_LABEL}(\.{_DNS_LABEL})*")
UPDATABLE_SERVER_FIELDS = frozenset({"address", "description", "labels", "shares_repository"})


@dataclass(frozen=True)
class ServerStatus:
    state: str = UNCHECKED
    last_health_time: dt.datetime | None = None
    loaded: list[IndexEntry] = field(default_factory=list)
    message: str = ""


@dataclass(frozen=True)
class ServerRecord:
    name: str
    address: str
    description: str
    labels: dict[str, str]
    embedded: bool
    shares_repository: bool
    create_time: dt.datetime
    status: ServerStatus


@dataclass(frozen=True)
class ServerFields:
    address: str = ""
    description: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    shares_repository: bool = False


ChangeCallback = Callable[[str, str], Awaitable[None]]


def check_address(address: str) -> str:
    """``host:port`` with a hostname, an IPv4 address or a bracketed IPv6 address."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgument(f"address {address!r} must be host:port with a port from 1 to 65535")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise InvalidArgument(f"address {address!r} has a malformed IPv6 host") from None
        return address
    if not _HOSTNAME.fullmatch(host):
        raise InvalidArgument(f"address {address!r} has a malformed host {host!r}")
    return address


class Fleet:
    def __init__(self, tokens: PageTokens) -> None:
        self.tokens = tokens
        self._clients: dict[str, TritonClient] = {}
        self._status: dict[str, ServerStatus] = {}
        self._on_change: list[ChangeCallback] = []
        self._checks: dict[str, asyncio.Task[ServerStatus]] = {}
        self._delete_checks: list[Callable[[Any], None]] = []

    def on_change(self, callback: ChangeCallback) -> None:
        """Call ``callback(server_name, state)`` whenever a server turns READY or stops being so."""
        self._on_change.append(callback)

    def refuse_delete_when(self, check: Callable[[Any], None]) -> None:
        """Run ``check(server_row)`` (blocking, in the deleting transaction) before a
        server is unregistered; it raises to refuse (the deployments' targets do)."""
        self._delete_checks.append(check)

    # --- registry -----------------------------------------------------------

    async def register(
        self, name: str, fields: ServerFields, *, embedded: bool = False
    ) -> ServerRecord:
        check_name(name, "server name")
        check_address(fields.address)
        labels = json.dumps(dict(sorted(fields.labels.items())))
        try:
            await in_thread(tables.Server.create)(
                name=name,
                address=fields.address,
                description=fields.description,
                labels=labels,
                embedded=embedded,
                shares_repository=embedded or fields.shares_repository,
            )
        except pw.IntegrityError:
            raise AlreadyExists(f"server {name!r} is already registered") from None
        await self.refresh(name)
        return await self.get(name)

    async def register_embedded(self, name: str, address: str) -> ServerRecord:
        """Record the embedded Triton under ``name``, updating its address on restarts."""
        row = await in_thread(tables.Server.get_or_none)(tables.Server.name == name)
        if row is None:
            return await self.register(
                name, ServerFields(address=address, description="embedded Triton"), embedded=True
            )
        await self.update(name, ServerFields(address=address), ["address"])
        return await self.get(name)

    async def get(self, name: str) -> ServerRecord:
        """One server with its last status; ``loaded`` lists only models the caller may see."""
        (record,) = await self._visible_to_caller(
            [self._record(await in_thread(_server_row)(name))]
        )
        return record

    async def list_servers(self, requested_size: int, token: str) -> Page[ServerRecord]:
        size = page_size(requested_size)
        query_key = {"list": "servers"}
        after = self.tokens.decode(query_key, token)

        def fetch() -> list[Any]:
            query = tables.Server.select().order_by(tables.Server.name).limit(size + 1)
            if after is not None:
                query = query.where(tables.Server.name > str(after))
            return list(query)

        rows = await in_thread(fetch)()
        records = await self._visible_to_caller([self._record(row) for row in rows[:size]])
        next_token = self.tokens.encode(query_key, rows[size - 1].name) if len(rows) > size else ""
        return Page(records, next_token)

    async def update(self, name: str, fields: ServerFields, mask: Sequence[str]) -> ServerRecord:
        unknown = set(mask) - UPDATABLE_SERVER_FIELDS
        if unknown or not mask:
            raise InvalidArgument(
                "update_mask must name some of: " + ", ".join(sorted(UPDATABLE_SERVER_FIELDS))
            )
        if "address" in mask:
            check_address(fields.address)

        def write() -> Any:
            row = _server_row(name)
            if "address" in mask:
                row.address = fields.address
            if "description" in mask:
                row.description = fields.description
            if "labels" in mask:
                row.labels = json.dumps(dict(sorted(fields.labels.items())))
            if "shares_repository" in mask:
                row.shares_repository = fields.shares_repository
            row.save()
            return row

        row = await in_thread(write)()
        if "address" in mask:
            await self._drop_client(name)
            await self.refresh(name)
        return self._record(row)

    async def delete(self, name: str) -> None:
        def remove() -> None:
            with db.database.atomic():
                row = _server_row(name)
                for check in self._delete_checks:
                    check(row)
                row.delete_instance()

        await in_thread(remove)()
        await self._drop_client(name)
        self._status.pop(name, None)

    # --- clients and health -------------------------------------------------

    def cached_client(self, name: str) -> TritonClient | None:
        """The client of ``name`` if one was made already (the gateway's fast path)."""
        return self._clients.get(name)

    async def client(self, name: str) -> TritonClient:
        """The (cached) client of a registered server, or NotFound."""
        client = self._clients.get(name)
        if client is None:
            row = await in_thread(_server_row)(name)
            client = self._clients.setdefault(name, TritonClient(name, row.address))
        return client

    def status(self, name: str) -> ServerStatus:
        return self._status.get(name, ServerStatus())

    async def refresh(self, name: str, *, notify: bool = True) -> ServerStatus:
        """Check one server now; fire on_change callbacks when it turned READY or left READY."""
        client = await self.client(name)
        before = self.status(name).state
        now = db.utcnow()
        if await client.is_ready():
            try:
                loaded = await client.index()
            except Exception as error:
                status = replace(self.status(name), state=UNREACHABLE, message=str(error))
            else:
                status = ServerStatus(READY, now, loaded, "")
        else:
            status = replace(
                self.status(name),
                state=UNREACHABLE,
                message=f"no answer from {client.address}",
            )
        self._status[name] = status
        if (status.state == READY) != (before == READY):
            if status.state == READY:
                log.info("server %s is ready at %s", name, client.address)
            else:
                log.warning("server %s is %s: %s", name, status.state, status.message)
        # Every READY round is reported, not only the flips: a Triton that
        # restarts between two rounds looks READY twice but has lost its models.
        if notify and (status.state == READY or before == READY):
            for callback in self._on_change:
                await callback(name, status.state)
        return status

    async def servers(self) -> list[ServerRecord]:
        """Every registered server with its last observed status."""
        rows = await in_thread(lambda: list(tables.Server.select().order_by(tables.Server.name)))()
        return [self._record(row) for row in rows]

    async def names(self) -> list[str]:
        def fetch() -> list[str]:
            return [row.name for row in tables.Server.select(tables.Server.name)]

        return await in_thread(fetch)()

    def suspect(self, name: str) -> None:
        """Check ``name`` soon, in the background (a call to it just failed)."""
        if name not in self._checks:
            check = asyncio.create_task(self.refresh(name))
            self._checks[name] = check
            check.add_done_callback(lambda _: self._checks.pop(name, None))

    async def refresh_all(self) -> None:
        """Check every registered server once."""
        names = await self.names()
        results = await asyncio.gather(
            *(self.refresh(name) for name in names), return_exceptions=True
        )
        for name, result in zip(names, results, strict=True):
            if isinstance(result, BaseException):
                log.error("health check of server %s failed: %s", name, result)

    def any_ready(self) -> bool:
        return any(status.state == READY for status in self._status.values())

    async def close(self) -> None:
        for name in list(self._clients):
            await self._drop_client(name)

    async def _drop_client(self, name: str) -> None:
        client = self._clients.pop(name, None)
        if client is not None:
            await client.close()

    async def _visible_to_caller(self, records: list[ServerRecord]) -> list[ServerRecord]:
        """``records`` with each status's ``loaded`` cut to the models the caller may see.

        Triton's index lists every directory of a shared repository, private
        models of other workspaces included.
        """
        names = {entry.name for record in records for entry in record.status.loaded}
        visible = await in_thread(rules.visible_model_names)(names)
        if visible == names:
            return records
        return [
            replace(
                record,
                status=replace(
                    record.status,
                    loaded=[entry for entry in record.status.loaded if entry.name in visible],
                ),
            )
            for record in records
        ]

    def _record(self, row: Any) -> ServerRecord:
        return ServerRecord(
            name=row.name,
            address=row.address,
            description=row.description,
            labels=json.loads(row.labels),
            embedded=row.embedded,
            shares_repository=row.shares_repository,
            create_time=row.create_time,
            status=self.status(row.name),
        )


def _server_row(name: str) -> Any:
    check_name(name, "server name")
    row = tables.Server.get_or_none(tables.Server.name == name)
    if row is None:
        raise NotFound(f"server {name!r} is not registered")
    return row
