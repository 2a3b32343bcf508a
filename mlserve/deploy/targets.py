"""Targets: where a deployment goes, and how it is doing on each server.

Shared by model and pipeline deployments alike: placement (which servers a
deployment goes on), the ready check made before anything is written, the
per-server target rows (desired: this deployment on that server; observed:
its last state there), and the writes made when a server comes or goes.
This module and ``lifecycle`` own the deployment tables; nothing else
queries them.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import peewee as pw

from mlserve.catalog.versions import MemoryNeed, VersionRecord, memory_needs
from mlserve.core.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from mlserve.deploy import placement as by_memory
from mlserve.deploy.fleet import READY, Fleet
from mlserve.deploy.tenancy import Placed, check_may_hold, may_hold
from mlserve.storage import db, tables
from mlserve.storage.repository import Repository

log = logging.getLogger(__name__)

PENDING = "PENDING"
LOADING = "LOADING"
FAILED = "FAILED"
UNREACHABLE = "UNREACHABLE"
COLD = "COLD"  # on demand: not loaded there now (never yet, evicted or idle)
# Worst first: the overall state of a deployment is its worst target's.
_SEVERITY = [FAILED, UNREACHABLE, PENDING, LOADING, COLD, READY]
DEFAULT_SERVER = "local"


@dataclass(frozen=True)
class Placement:
    """Where a deployment should go: named servers, or a count and a label selector."""

    servers: Sequence[str] = ()
    replicas: int = 0
    selector: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class MemberState:
    """A pipeline member's state on one server."""

    model: str
    version: int
    state: str
    message: str


@dataclass(frozen=True)
class TargetRecord:
    """A deployment on one server: its state there (and, for a pipeline, its members')."""

    server: str
    state: str
    message: str
    update_time: dt.datetime
    members: tuple[MemberState, ...] = ()


@dataclass(frozen=True)
class Served:
    """A Triton model (a deployment, or a deployed pipeline's member) on one server."""

    deployment: str
    server: str
    model: str
    version: int
    ready: bool
    on_demand: bool = False  # its deployment loads on demand


@dataclass(frozen=True)
class GpuMemory:
    """One GPU of a server: bytes its deployments need there, bytes free for more
    (None: its size is not stated)."""

    index: int
    used: int
    free: int | None


@dataclass(frozen=True)
class ServerMemory:
    """A server's memory as ListServers shows it: host used and free (None: not
    stated), and each GPU's."""

    used: int = 0
    free: int | None = None
    gpus: tuple[GpuMemory, ...] = ()


NO_MEMORY = ServerMemory()  # a server placement has not seen yet


def need_of(memory: MemoryNeed) -> by_memory.Need:
    """What placement counts of a version's memory need: its bytes, where its config
    runs it."""
    return by_memory.Need(memory.bytes, memory.instance_groups)


def severity(states: Iterable[str]) -> str:
    """The overall state of targets in ``states``: the worst of them."""
    present = set(states)
    return next((state for state in _SEVERITY if state in present), PENDING)


class Placer:
    """Chooses servers for deployments and checks that they answer."""

    def __init__(self, fleet: Fleet, headroom: float = by_memory.DEFAULT_HEADROOM) -> None:
        self.fleet = fleet
        self.headroom = by_memory.check_headroom(headroom)

    async def place(
        self,
        placement: Placement,
        placed: Sequence[Placed],
        *,
        need: by_memory.Wanted = 0,
        deployment: str = "",
    ) -> list[str]:
        """The servers a deployment with ``placement`` goes on, each one whose
        ``workspaces`` admit everything in ``placed`` and that can run ``need``
        (its config's GPUs are there: ``placement.misfit``).

        Named servers as given (each must be registered; their room is
        checked by ``require_room``); else ``replicas``
        servers matching ``selector``, ready and least used first, each with
        room for ``need`` on each memory it uses (host, GPUs) besides what the
        deployments but ``deployment`` need there (``placement.choose``); else
        the default server, or the only one.

        Raises:
            InvalidArgument: a server named twice, negative replicas, or no
                default to fall back on.
            NotFound: a named server is not registered.
            FailedPrecondition: fewer matching servers than replicas, a chosen
                server may not hold one of ``placed``, or cannot run ``need``
                (a GPU model where no GPU is recorded).
            ResourceExhausted: fewer matching servers than replicas have
                room for ``need``.
        """
        servers = placement.servers
        if servers:
            if len(set(servers)) != len(servers):
                raise InvalidArgument("servers lists a server twice")
            for server in servers:
                record = await self.fleet.get(server)  # NotFound if unknown
                check_may_hold(record, placed)
                by_memory.check_runs_on(server, record.capacity, need)
            return list(servers)
        if placement.replicas < 0:
            raise InvalidArgument(f"replicas must not be negative, got {placement.replicas}")
        if placement.replicas or placement.selector:
            return await self._choose(placement, placed, need, deployment)
        names = await self.fleet.names()
        fallback = (
            DEFAULT_SERVER if DEFAULT_SERVER in names else names[0] if len(names) == 1 else ""
        )
        if fallback:
            record = await self.fleet.get(fallback)
            check_may_hold(record, placed)
            by_memory.check_runs_on(fallback, record.capacity, need)
            return [fallback]
        raise InvalidArgument(
            "name the servers to deploy on: there is no 'local' server and "
            f"{len(names)} are registered"
        )

    async def require_room(
        self,
        placement: Placement,
        servers: Sequence[str],
        need: by_memory.Wanted,
        deployment: str,
    ) -> None:
        """When ``placement`` names its servers, ResourceExhausted naming the first of
        ``servers`` without room for ``need`` on a memory it uses (host or a GPU)
        besides what the deployments but ``deployment`` need there
        (``placement.check_named``), before anything is written; servers chosen
        by ``place`` had room already."""
        if not placement.servers or not any(n.bytes for n in by_memory.needs_of(need)):
            return
        held = await db.in_thread(needs_held)(deployment)
        records = [await self.fleet.get(server) for server in servers]
        rooms = [by_memory.Room.holding(r.name, r.capacity, held.get(r.name, ())) for r in records]
        by_memory.check_named(rooms, need, self.headroom)

    async def require_ready(self, servers: Iterable[str]) -> None:
        """Raise Unavailable, naming the first server that does not answer, before
        anything is written."""
        for server in servers:
            client = await self.fleet.client(server)
            if not await client.is_ready():
                raise Unavailable(
                    f"Triton server {server!r} at {client.address} is not reachable; "
                    "nothing was deployed"
                )

    async def unload_quietly(self, model: str, server: str) -> None:
        """Unload ``model`` from ``server``; log, do not raise, when it cannot be done."""
        try:
            client = await self.fleet.client(server)
            await client.unload(model)
        except (Unavailable, NotFound) as error:
            log.warning("could not unload %s from %s: %s", model, server, error.message)

    async def unload_unused(
        self, server: str, models: set[str], *, except_deployment: str = ""
    ) -> None:
        """Unload those of ``models`` that no deployment but ``except_deployment``
        keeps on ``server``."""
        in_use = await db.in_thread(models_in_use_on)(server, except_deployment)
        for model in sorted(models - in_use):
            await self.unload_quietly(model, server)

    async def _choose(
        self,
        placement: Placement,
        placed: Sequence[Placed],
        need: by_memory.Wanted,
        deployment: str,
    ) -> list[str]:
        """Ready servers matching the selector first, the least used among them first;
        servers whose workspaces do not admit ``placed`` are never candidates, nor
        those without ``need`` bytes free."""
        selector = placement.selector.items()
        candidates = [
            server
            for server in await self.fleet.servers()
            if selector <= server.labels.items() and may_hold(server, placed)
        ]
        usage = await db.in_thread(_targets_per_server)()
        candidates.sort(key=lambda s: (s.status.state != READY, usage.get(s.name, 0), s.name))
        wanted = placement.replicas or len(candidates)
        described = ",".join(f"{k}={v}" for k, v in sorted(placement.selector.items()))
        if not candidates or wanted > len(candidates):
            workspaces = sorted({item.workspace for item in placed})
            raise FailedPrecondition(
                f"{wanted or 1} replica(s) wanted but {len(candidates)} registered server(s) "
                f"match {described or 'any labels'} and may hold workspace(s) "
                + ", ".join(repr(w) for w in workspaces)
            )
        held = await db.in_thread(needs_held)(deployment)
        rooms = [
            by_memory.Room.holding(server.name, server.capacity, held.get(server.name, ()))
            for server in candidates
        ]
        return by_memory.choose(rooms, need, wanted, self.headroom)

    async def memory(self) -> dict[str, ServerMemory]:
        """Per registered server, the bytes its deployments need and the bytes free
        for more, on the host and on each GPU."""
        held = await db.in_thread(needs_held)()
        found: dict[str, ServerMemory] = {}
        for server in await self.fleet.servers():
            room = by_memory.Room.holding(server.name, server.capacity, held.get(server.name, ()))
            gpus = tuple(
                GpuMemory(gpu, room.used_on(gpu), free)
                for gpu, free in room.gpu_free(self.headroom)
            )
            found[server.name] = ServerMemory(
                room.used, room.free_on(by_memory.HOST, self.headroom), gpus
            )
        return found


def place_for_shared_load(repository: Repository, record: VersionRecord) -> None:
    """Put ``record`` in the repository's Triton layout (files, then config), for a
    Triton that reads the repository itself to load it by name (blocking)."""
    repository.place_version(record.model, record.version, record.files, record.config)


def files_to_push(repository: Repository, record: VersionRecord) -> dict[str, bytes]:
    """A version's files keyed as RepositoryModelLoad takes them (blocking)."""
    files: dict[str, bytes] = {}
    for spec in record.files:
        with repository.open_version_file(
            record.model, record.version, spec.path, spec.sha256
        ) as f:
            files[f"{record.version}/{spec.path}"] = f.read()
    return files


# --- the target rows (blocking) ---------------------------------------------------


def write(
    deployment: Any,
    servers: Sequence[str],
    *,
    reset: bool,
    members: Sequence[MemberState] = (),
    still_ready: Collection[str] = (),
) -> list[str]:
    """Make ``deployment``'s targets exactly ``servers``, in that order; return the
    servers it had before. ``reset`` puts every kept target back to PENDING (a new
    version) but those on ``still_ready`` (the new version serves there already);
    new targets start PENDING with ``members`` PENDING too."""
    previous = [target.server.name for target in deployment.targets]
    if reset:
        tables.DeploymentTarget.update(state=PENDING, message="").where(
            (tables.DeploymentTarget.deployment == deployment)
            & tables.DeploymentTarget.server.not_in(
                tables.Server.select().where(tables.Server.name.in_(list(still_ready)))
            )
        ).execute()
    tables.DeploymentTarget.delete().where(
        (tables.DeploymentTarget.deployment == deployment)
        & tables.DeploymentTarget.server.not_in(
            tables.Server.select().where(tables.Server.name.in_(list(servers)))
        )
    ).execute()
    pending = _members_json(members)
    for position, server in enumerate(servers):
        server_row = tables.Server.get(tables.Server.name == server)
        try:
            with db.database.atomic():
                tables.DeploymentTarget.create(
                    deployment=deployment, server=server_row, position=position, members=pending
                )
        except pw.IntegrityError:
            tables.DeploymentTarget.update(position=position).where(
                (tables.DeploymentTarget.deployment == deployment)
                & (tables.DeploymentTarget.server == server_row)
            ).execute()
    return previous


def set_state(
    name: str,
    server: str,
    state: str,
    message: str,
    members: Sequence[MemberState] | None = None,
) -> None:
    """Record deployment ``name``'s state on ``server`` (``members`` None: keep them)."""
    server_row = tables.Server.get_or_none(tables.Server.name == server)
    deployment = tables.Deployment.get_or_none(tables.Deployment.name == name)
    if deployment is None or server_row is None:
        return  # undeployed or unregistered meanwhile
    values: dict[str, Any] = {"state": state, "message": message, "update_time": db.utcnow()}
    if members is not None:
        values["members"] = _members_json(members)
    tables.DeploymentTarget.update(**values).where(
        (tables.DeploymentTarget.deployment == deployment)
        & (tables.DeploymentTarget.server == server_row)
    ).execute()


def mark_loading(name: str, servers: Sequence[str]) -> None:
    """Record LOADING for deployment ``name``'s targets on ``servers`` that are not
    READY (a READY one keeps serving the version it has while the next loads)."""
    deployment = tables.Deployment.get_or_none(tables.Deployment.name == name)
    if deployment is None:
        return
    server_rows = tables.Server.select().where(tables.Server.name.in_(list(servers)))
    tables.DeploymentTarget.update(state=LOADING, message="", update_time=db.utcnow()).where(
        (tables.DeploymentTarget.deployment == deployment)
        & tables.DeploymentTarget.server.in_(server_rows)
        & (tables.DeploymentTarget.state != READY)
    ).execute()


def set_state_on_server(server: str, state: str, message: str) -> None:
    """Record ``state`` for every deployment's target on ``server`` (it came or went)."""
    server_row = tables.Server.get_or_none(tables.Server.name == server)
    if server_row is None:
        return
    tables.DeploymentTarget.update(state=state, message=message, update_time=db.utcnow()).where(
        tables.DeploymentTarget.server == server_row
    ).execute()


def of(deployment: Any) -> list[TargetRecord]:
    """``deployment``'s targets in placement order."""
    rows = (
        tables.DeploymentTarget.select(tables.DeploymentTarget, tables.Server)
        .join(tables.Server)
        .where(tables.DeploymentTarget.deployment == deployment)
        .order_by(tables.DeploymentTarget.position)
    )
    return [
        TargetRecord(
            row.server.name,
            row.state,
            row.message,
            row.update_time,
            tuple(MemberState(*entry) for entry in json.loads(row.members)),
        )
        for row in rows
    ]


def served() -> list[Served]:
    """Every deployment, and every deployed pipeline's member, on each of its servers.

    A member counts as ready where its pipeline's target is READY. Triton's
    index lists only the models of its own repository directory, so for
    push-placed models this is the only record of what a server holds.
    """
    rows = (
        tables.DeploymentTarget.select(tables.DeploymentTarget, tables.Deployment, tables.Server)
        .join_from(tables.DeploymentTarget, tables.Deployment)
        .join_from(tables.DeploymentTarget, tables.Server)
        # Models before pipelines: a member deployed on its own keeps its version.
        .order_by(
            tables.Deployment.pipeline.is_null(False),
            tables.Deployment.name,
            tables.DeploymentTarget.position,
        )
    )
    found: list[Served] = []
    for target in rows:
        name, server, ready = target.deployment.name, target.server.name, target.state == READY
        lazy = target.deployment.loading == "on_demand"
        found.append(Served(name, server, name, target.deployment.version, ready, lazy))
        found.extend(
            Served(name, server, model, version, ready)
            for model, version, *_ in json.loads(target.members)
        )
    return found


def needs_held(except_deployment: str = "") -> dict[str, list[by_memory.Need]]:
    """Per server, the needs of the model versions deployments but
    ``except_deployment`` keep there: measured where measured, else estimated,
    with where their configs run them; a model two deployments share counts
    once, an on-demand one only where it is loaded (blocking)."""
    entries = {
        (entry.server, entry.model, entry.version)
        for entry in served()
        if entry.deployment != except_deployment and (entry.ready or not entry.on_demand)
    }
    needs = memory_needs((model, version) for _, model, version in entries)
    held: defaultdict[str, list[by_memory.Need]] = defaultdict(list)
    for server, model, version in sorted(entries):
        need = needs.get((model, version))  # a pipeline's ensemble has none
        if need is not None:
            held[server].append(need_of(need))
    return dict(held)


def shares_repository(server: str) -> bool | None:
    """Whether ``server`` reads MLServe's repository; None when it is not registered."""
    row = tables.Server.get_or_none(tables.Server.name == server)
    return None if row is None else bool(row.shares_repository)


def names_on(server: str) -> list[tuple[str, str]]:
    """(deployment, its state there) of each deployment on ``server``, models first."""
    query = (
        tables.Deployment.select(tables.Deployment.name, tables.DeploymentTarget.state)
        .join(tables.DeploymentTarget)
        .join(tables.Server)
        .where(tables.Server.name == server)
        .order_by(tables.Deployment.pipeline.is_null(False), tables.Deployment.name)
        .tuples()
    )
    rows: list[tuple[str, str]] = list(query)  # type: ignore[arg-type]  # .tuples()
    return rows


def models_in_use_on(server: str, except_deployment: str = "") -> set[str]:
    """Triton models that a deployment other than ``except_deployment`` keeps on
    ``server``: model deployments, deployed pipelines and their members."""
    return {
        entry.model
        for entry in served()
        if entry.server == server and entry.deployment != except_deployment
    }


class ServerHoldings:
    """What the fleet asks before it unregisters or restricts a server (``fleet.Holdings``)."""

    def refuse_delete(self, server: Any) -> None:
        """FailedPrecondition when a deployment targets the server row ``server`` (blocking)."""
        target = tables.DeploymentTarget.get_or_none(tables.DeploymentTarget.server == server)
        if target is None:
            return
        deployment: Any = target.deployment
        if deployment.pipeline_id is not None:
            raise FailedPrecondition(
                f"server {server.name!r} is a target of pipeline {deployment.name!r}; "
                "undeploy it first"
            )
        raise FailedPrecondition(
            f"server {server.name!r} is a target of deployment {deployment.name!r}; "
            "undeploy from it first"
        )

    def held_on(self, server: Any) -> list[tuple[str, str, str]]:
        """(kind, name, workspace) of each model or pipeline deployed on the server row
        ``server`` that belongs to a workspace (blocking)."""
        held: list[tuple[str, str, str]] = []
        rows: Any = (
            tables.Deployment.select()
            .join(tables.DeploymentTarget)
            .where(tables.DeploymentTarget.server == server)
            .order_by(tables.Deployment.name)
        )
        for row in rows:
            kind, deployed = ("model", row.model) if row.model_id else ("pipeline", row.pipeline)
            if deployed.workspace_id is not None:
                held.append((kind, row.name, deployed.workspace.name))
        return held


def _targets_per_server() -> dict[str, int]:
    query = (
        tables.DeploymentTarget.select(
            tables.Server.name, pw.fn.COUNT(tables.DeploymentTarget.server)
        )
        .join(tables.Server)
        .group_by(tables.Server.name)
        .tuples()
    )
    rows: list[tuple[str, int]] = list(query)  # type: ignore[arg-type]  # .tuples()
    return dict(rows)


def _members_json(members: Sequence[MemberState]) -> str:
    return json.dumps([[m.model, m.version, m.state, m.message] for m in members])
