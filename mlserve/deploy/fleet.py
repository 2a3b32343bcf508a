"""The fleet: registered Triton servers, their clients, and their observed health.

Registration only records a server; its health is observed by the health
loop (``deploy/health.py``), which checks every server each round, keeps the
last status in memory (``ListServers`` reads it without touching a Triton)
and asks the reconciler (``deploy/reconciler.py``) to make a server match its
deployments when it is ready or stops being so. Asking never waits: the
callbacks registered with :meth:`Fleet.on_change` run on the reconciler's
workers, never inside a health check.

Triton clients come from a factory (by default :class:`TritonClient`), so
unit tests can put a scripted client in Triton's place.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import peewee as pw

from mlserve.access import rules
from mlserve.core.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from mlserve.core.names import check_name, check_update_mask
from mlserve.core.paging import Listing, Page, PageTokens
from mlserve.deploy.placement import NOT_STATED, Capacity
from mlserve.deploy.reconciler import ChangeCallback, Reconciler
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
UPDATABLE_SERVER_FIELDS = frozenset(
    {"address", "description", "labels", "shares_repository", "workspaces", "capacity"}
)


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
    workspaces: tuple[str, ...] = ()
    """Workspaces whose models and pipelines it may hold; empty: any."""
    capacity: Capacity = NOT_STATED

    def serves(self, workspace: str) -> bool:
        """Whether a model or pipeline of ``workspace`` may be placed here."""
        return not self.workspaces or workspace in self.workspaces


@dataclass(frozen=True)
class ServerFields:
    address: str = ""
    description: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    shares_repository: bool = False
    workspaces: Sequence[str] = ()
    capacity: Capacity = NOT_STATED


ClientFactory = Callable[[str, str], TritonClient]
"""``factory(server_name, address)``: the client MLServe talks to that server through."""


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


class Holdings(Protocol):
    """What the deployments tell the fleet about a server (blocking calls, given its row)."""

    def refuse_delete(self, server: Any) -> None:
        """FailedPrecondition while some deployment targets ``server``."""

    def held_on(self, server: Any) -> list[tuple[str, str, str]]:
        """(kind, name, workspace) of each model or pipeline deployed on ``server``."""


class _NothingHeld:
    """A fleet without deployments: servers hold nothing."""

    def refuse_delete(self, server: Any) -> None:
        return None

    def held_on(self, server: Any) -> list[tuple[str, str, str]]:
        return []


_NOTHING_HELD = _NothingHeld()


class Fleet:
    def __init__(
        self,
        tokens: PageTokens,
        *,
        client_factory: ClientFactory = TritonClient,
        reconciler: Reconciler | None = None,
    ) -> None:
        self.tokens = tokens
        self.reconciler = reconciler or Reconciler()
        self._client_factory = client_factory
        self._clients: dict[str, TritonClient] = {}
        self._status: dict[str, ServerStatus] = {}
        self._checks: dict[str, asyncio.Task[None]] = {}
        self._holdings: Holdings = _NOTHING_HELD
        self._probes: dict[str, Callable[[], int]] = {}

    def on_change(self, callback: ChangeCallback) -> None:
        """Have the reconciler call ``callback(server_name, state)`` when a server is seen
        READY (every health round) or stops being READY; never inside a health check."""
        self.reconciler.on_change(callback)

    def track_holdings(self, holdings: Holdings) -> None:
        """Ask ``holdings`` (the deployments) what a server holds before it is
        unregistered or restricted to workspaces."""
        self._holdings = holdings

    # --- registry -----------------------------------------------------------

    async def register(
        self, name: str, fields: ServerFields, *, embedded: bool = False
    ) -> ServerRecord:
        check_name(name, "server name")
        check_address(fields.address)
        capacity = fields.capacity.checked()
        labels = json.dumps(dict(sorted(fields.labels.items())))

        def create() -> None:
            tables.Server.create(
                name=name,
                address=fields.address,
                description=fields.description,
                labels=labels,
                embedded=embedded,
                shares_repository=fields.shares_repository,
                workspaces=_workspaces_json(fields.workspaces),
                gpu_count=capacity.gpu_count,
                gpu_memory=capacity.gpu_memory_bytes,
                host_memory=capacity.host_memory_bytes,
            )

        try:
            await in_thread(create)()
        except pw.IntegrityError:
            raise AlreadyExists(f"server {name!r} is already registered") from None
        await self.refresh(name)
        return await self.get(name)

    async def register_embedded(
        self,
        name: str,
        address: str,
        *,
        shares_repository: bool = True,
        capacity: Capacity = NOT_STATED,
    ) -> ServerRecord:
        """Record the embedded Triton under ``name``, updating its address and
        ``capacity`` (the host's, read at start) on restarts.

        ``shares_repository`` is false when the repository is in a bucket: the
        embedded Triton then serves a local directory and gets pushes.
        """
        row = await in_thread(tables.Server.get_or_none)(tables.Server.name == name)
        fields = ServerFields(
            address=address,
            description="embedded Triton",
            shares_repository=shares_repository,
            capacity=capacity,
        )
        if row is None:
            return await self.register(name, fields, embedded=True)
        await self.update(name, fields, ["address", "shares_repository", "capacity"])
        return await self.get(name)

    async def get(self, name: str) -> ServerRecord:
        """One server with its last status; ``loaded`` lists only models the caller may see."""
        (record,) = await self._visible_to_caller(
            [self._record(await in_thread(_server_row)(name))]
        )
        return record

    async def list_servers(self, requested_size: int, token: str) -> Page[ServerRecord]:
        listing = Listing(
            tables.Server.select(), tables.Server.name, lambda row: row, lambda row: row.name,
            {"list": "servers"},
        )  # fmt: skip
        rows = await in_thread(self.tokens.page)(listing, requested_size, token)
        records = await self._visible_to_caller([self._record(row) for row in rows.items])
        return Page(records, rows.next_page_token)

    async def update(self, name: str, fields: ServerFields, mask: Sequence[str]) -> ServerRecord:
        check_update_mask(mask, UPDATABLE_SERVER_FIELDS)
        if "address" in mask:
            check_address(fields.address)
        if "capacity" in mask:
            fields.capacity.checked()

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
            if "workspaces" in mask:
                row.workspaces = _workspaces_json(fields.workspaces)
                self._check_holds_only(row, fields.workspaces)
            if "capacity" in mask:
                row.gpu_count = fields.capacity.gpu_count
                row.gpu_memory = fields.capacity.gpu_memory_bytes
                row.host_memory = fields.capacity.host_memory_bytes
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
                self._holdings.refuse_delete(row)
                row.delete_instance()

        await in_thread(remove)()
        await self._drop_client(name)
        self._status.pop(name, None)
        self.reconciler.forget(name)

    def watch_resident_memory(self, name: str, probe: Callable[[], int]) -> None:
        """Have ``probe()`` (blocking) tell the resident bytes of server ``name``'s
        Triton process tree, to measure loads by (the embedded Triton's)."""
        self._probes[name] = probe

    def resident_probe(self, name: str) -> Callable[[], int] | None:
        """The probe of ``watch_resident_memory`` for ``name``, if there is one."""
        return self._probes.get(name)

    # --- clients and health -------------------------------------------------

    def cached_client(self, name: str) -> TritonClient | None:
        """The client of ``name`` if one was made already (the gateway's fast path)."""
        return self._clients.get(name)

    async def client(self, name: str) -> TritonClient:
        """The (cached) client of a registered server, or NotFound."""
        client = self._clients.get(name)
        if client is None:
            row = await in_thread(_server_row)(name)
            client = self._clients.setdefault(name, self._client_factory(name, row.address))
        return client

    def status(self, name: str) -> ServerStatus:
        return self._status.get(name, ServerStatus())

    async def refresh(self, name: str, *, notify: bool = True) -> ServerStatus:
        """Check one server now and return what was seen.

        With ``notify``, ask the reconciler to reconcile it when it is READY or
        just left READY; that only queues the server and never waits.
        """
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
            self.reconciler.request(name, status.state)
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
        self._check_soon(name)

    async def refresh_all(self, timeout: float | None = None) -> None:
        """Check every registered server, waiting at most ``timeout`` seconds (None: all).

        A server whose previous check is still running is not checked twice;
        a check that outlasts ``timeout`` goes on in the background, so one
        slow server never holds up the round's view of the others. A server whose
        address changed in the store (an embedded Triton restarted by another
        process: a replica, or worker 0 of ``--workers``) gets a new client first.
        """

        def fetch() -> list[tuple[str, str]]:
            return [(row.name, row.address) for row in tables.Server.select()]

        servers = await in_thread(fetch)()
        for name, address in servers:
            client = self._clients.get(name)
            if client is not None and client.address != address:
                await self._drop_client(name)
        checks = [self._check_soon(name) for name, _ in servers]
        if checks:
            await asyncio.wait(checks, timeout=timeout)

    def _check_soon(self, name: str) -> asyncio.Task[None]:
        check = self._checks.get(name)
        if check is None:
            check = asyncio.create_task(self._check(name), name=f"health-check-{name}")
            self._checks[name] = check
            check.add_done_callback(lambda _: self._checks.pop(name, None))
        return check

    async def _check(self, name: str) -> None:
        try:
            await self.refresh(name)
        except NotFound:
            pass  # deleted since the round listed it
        except Exception as error:
            log.error("health check of server %s failed: %s", name, error)

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

    def _check_holds_only(self, server: Any, workspaces: Sequence[str]) -> None:
        """FailedPrecondition while ``server`` holds a deployment outside ``workspaces``
        (blocking)."""
        if not workspaces:
            return
        for kind, name, workspace in self._holdings.held_on(server):
            if workspace not in workspaces:
                raise FailedPrecondition(
                    f"server {server.name!r} holds {kind} {name!r} of workspace {workspace!r}; "
                    "undeploy it from this server before restricting it to "
                    + ", ".join(repr(w) for w in workspaces)
                )

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
            workspaces=tuple(json.loads(row.workspaces)),
            capacity=Capacity(row.gpu_count, row.gpu_memory, row.host_memory),
        )


def _server_row(name: str) -> Any:
    check_name(name, "server name")
    row = tables.Server.get_or_none(tables.Server.name == name)
    if row is None:
        raise NotFound(f"server {name!r} is not registered")
    return row


def _workspaces_json(workspaces: Sequence[str]) -> str:
    """The stored form of ``Server.workspaces``, each an existing workspace (blocking)."""
    names = sorted(set(workspaces))
    if len(names) != len(workspaces):
        raise InvalidArgument("server.workspaces lists a workspace twice")
    for index, name in enumerate(workspaces):
        check_name(name, f"server.workspaces[{index}]")
    known = {
        row.name
        for row in tables.Workspace.select(tables.Workspace.name).where(
            tables.Workspace.name.in_(names)
        )
    }
    for index, name in enumerate(workspaces):
        if name not in known:
            raise InvalidArgument(f"server.workspaces[{index}]: there is no workspace {name!r}")
    return json.dumps(names)
