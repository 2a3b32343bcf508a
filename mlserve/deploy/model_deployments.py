"""Deployments: the desired state "model M at version V on servers S", and the
reconciler that makes each Triton match it.

Two ways to put a version on a Triton (DESIGN.md): *shared*, for a Triton that
reads MLServe's repository directory (the embedded one), loads by name with
the version's config pinned to that version; *push*, for any other Triton,
sends the config and the version's files in RepositoryModelLoad overrides.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import peewee as pw

from mlserve.access import rules
from mlserve.catalog.models import VersionRecord, find_version, pipeline_members, writable_model
from mlserve.catalog.pipelines import deployed_models
from mlserve.core.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    MLServeError,
    NotFound,
    Unavailable,
)
from mlserve.core.names import check_name
from mlserve.core.paging import Page, PageTokens, page_size
from mlserve.deploy.fleet import READY, Fleet
from mlserve.deploy.tenancy import Placed, check_may_hold, may_hold, placed_model
from mlserve.storage import db, tables
from mlserve.storage.db import in_thread
from mlserve.storage.repository import Repository
from mlserve.triton import modelconfig, serving
from mlserve.triton.serving import NO_SETTINGS, ServingSettings

log = logging.getLogger(__name__)

PENDING = "PENDING"
FAILED = "FAILED"
UNREACHABLE = "UNREACHABLE"
# Worst first: the overall state of a deployment is its worst target's.
_SEVERITY = [FAILED, UNREACHABLE, PENDING, READY]
DEFAULT_SERVER = "local"
UPDATABLE_DEPLOYMENT_FIELDS = frozenset({"version", "servers"})


@dataclass(frozen=True)
class Placement:
    """Where a deployment should go: named servers, or a count and a label selector."""

    servers: Sequence[str] = ()
    replicas: int = 0
    selector: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TargetRecord:
    server: str
    state: str
    message: str
    update_time: dt.datetime


@dataclass(frozen=True)
class DeploymentRecord:
    name: str
    model: str
    version: int
    targets: list[TargetRecord]
    create_time: dt.datetime
    update_time: dt.datetime
    serving: ServingSettings = NO_SETTINGS

    @property
    def servers(self) -> list[str]:
        return [target.server for target in self.targets]

    @property
    def state(self) -> str:
        return severity(target.state for target in self.targets)


def severity(states: Iterable[str]) -> str:
    """The overall state of targets in ``states``: the worst of them."""
    present = set(states)
    return next((state for state in _SEVERITY if state in present), PENDING)


class Deployments:
    def __init__(self, fleet: Fleet, repository: Repository, tokens: PageTokens) -> None:
        self.fleet = fleet
        self.repository = repository
        self.tokens = tokens
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._listeners: list[Callable[[], Awaitable[None]]] = []

    def on_change(self, listener: Callable[[], Awaitable[None]]) -> None:
        """Call ``listener()`` after any deployment or target state changed."""
        self._listeners.append(listener)

    async def changed(self) -> None:
        """Tell the listeners (the router) that deployments changed."""
        for listener in self._listeners:
            await listener()

    async def create(
        self,
        model: str,
        version: int,
        placement: Placement,
        settings: ServingSettings = NO_SETTINGS,
    ) -> DeploymentRecord:
        await in_thread(_deployable_model)(model)
        async with self._locks[model]:
            if await in_thread(_deployment_row_or_none)(model) is not None:
                raise AlreadyExists(
                    f"model {model!r} is already deployed; use UpdateDeployment to change it"
                )
            return await self._apply(model, version, placement, settings)

    async def update(
        self,
        name: str,
        version: int | None,
        servers: Sequence[str] | None,
        *,
        allow_missing: bool = False,
    ) -> DeploymentRecord:
        await in_thread(_deployable_model)(name)
        async with self._locks[name]:
            current = await in_thread(_deployment_row_or_none)(name)
            if current is None:
                if not allow_missing:
                    raise NotFound(f"model {name!r} is not deployed")
                return await self._apply(name, version or 0, Placement(servers or ()))
            record = await in_thread(_record)(current)
            return await self._apply(
                name,
                record.version if version is None else version,
                Placement(record.servers if servers is None else servers),
            )

    async def get(self, name: str) -> DeploymentRecord:
        return await in_thread(_visible_record)(check_name(name, "deployment name"))

    async def of_model(self, model: str) -> DeploymentRecord | None:
        """``model``'s deployment (one per model, named after it), or None."""

        def fetch() -> DeploymentRecord | None:
            row = _deployment_row_or_none(model)
            return None if row is None else _record(row)

        return await in_thread(fetch)()

    async def list_deployments(self, requested_size: int, token: str) -> Page[DeploymentRecord]:
        size = page_size(requested_size)
        query_key = {"list": "deployments"}
        after = self.tokens.decode(query_key, token)

        def fetch() -> list[DeploymentRecord]:
            query = tables.Deployment.select().order_by(tables.Deployment.name).limit(size + 1)
            visible = rules.visible_models()
            if visible is not None:
                query = query.join(tables.Model).where(visible)
            if after is not None:
                query = query.where(tables.Deployment.name > str(after))
            return [_record(row) for row in query]

        records = await in_thread(fetch)()
        next_token = (
            self.tokens.encode(query_key, records[size - 1].name) if len(records) > size else ""
        )
        return Page(records[:size], next_token)

    async def delete(self, name: str) -> None:
        await in_thread(writable_model)(check_name(name, "deployment name"))
        async with self._locks[name]:
            record = await self.get(name)
            # A deployed pipeline may share the model: it stays loaded for it.
            if not await in_thread(pipeline_members)(record.model):
                for server in record.servers:
                    await self.unload_quietly(record.model, server)
            await in_thread(_delete_row)(name)
        await self.changed()

    async def load_model(self, model: str, version: int, server: str) -> DeploymentRecord:
        server = server or DEFAULT_SERVER
        await in_thread(_deployable_model)(model)
        async with self._locks[model]:
            current = await in_thread(_deployment_row_or_none)(model)
            servers = [] if current is None else (await in_thread(_record)(current)).servers
            if server not in servers:
                servers.append(server)
            return await self._apply(model, version, Placement(servers))

    async def unload_model(self, model: str, server: str) -> None:
        await in_thread(writable_model)(check_name(model, "model name"))
        record = await self.get(model)
        if server and server not in record.servers:
            raise NotFound(f"model {model!r} is not deployed on server {server!r}")
        remaining = [name for name in record.servers if server and name != server]
        if not remaining:
            await self.delete(model)
            return
        async with self._locks[model]:
            await self._apply(model, record.version, Placement(remaining))

    async def serving(self) -> dict[str, list[tuple[str, int]]]:
        """Per server, the (model, version) pairs whose load there succeeded.

        Triton's index lists only models in its own repository directory, so
        for push-placed models this is the only record of what a server holds.
        Only models the caller may see are listed.
        """
        return await in_thread(_ready_targets)()

    # --- reconciling --------------------------------------------------------

    async def server_changed(self, server: str, state: str) -> None:
        """Fleet callback: reconcile a server that became ready; mark one that left."""
        if state == READY:
            await self.reconcile_server(server)
        else:
            await in_thread(_set_targets_on_server)(server, UNREACHABLE, f"server is {state}")
        await self.changed()

    async def reconcile_server(self, server: str) -> None:
        """Load on ``server`` every deployment that targets it but is not serving there.

        Readiness is asked per model: models pushed as files never appear in
        Triton's repository index.
        """
        client = await self.fleet.client(server)
        for record in await in_thread(_records_on_server)(server):
            lock = self._locks[record.name]
            if lock.locked():
                continue  # a deploy is changing it right now; the next round looks again
            if await client.model_ready(record.model, record.version):
                if any(t.server == server and t.state != READY for t in record.targets):
                    await in_thread(_set_target)(record.name, server, READY, "")
                continue
            async with lock:
                log.info("reconciling: loading %s v%d on %s", record.model, record.version, server)
                await self._load_on(record.name, record.model, record.version, server)
        await self.changed()

    # --- the work -----------------------------------------------------------

    async def _apply(
        self,
        model: str,
        version: int,
        placement: Placement,
        settings: ServingSettings | None = None,
    ) -> DeploymentRecord:
        """Record the desired state and make the servers match; caller holds the lock.

        ``settings`` None keeps the deployment's serving settings.
        """
        placed = placed_model(await in_thread(_deployable_model)(model))
        target = await in_thread(find_version)(model, version)
        if settings is not None:  # refuse settings the config cannot take, before anything
            serving.apply(modelconfig.parse(target.config, model), settings, "serving")
        for pipeline, used in await in_thread(pipeline_members)(model):
            if used != target.version:
                raise FailedPrecondition(
                    f"deployed pipeline {pipeline!r} runs version {used} of {model!r}; "
                    "undeploy the pipeline before deploying another version"
                )
        servers = await self._place(placement, [placed])
        for server in servers:
            client = await self.fleet.client(server)
            if not await client.is_ready():
                raise Unavailable(
                    f"Triton server {server!r} at {client.address} is not reachable; "
                    "nothing was deployed"
                )
        previous = await in_thread(_write_desired)(model, target.version, servers, settings)
        for server in sorted(set(previous) - set(servers)):
            await self.unload_quietly(model, server)
        await asyncio.gather(
            *(self._load_on(model, model, target.version, server) for server in servers)
        )
        await self.changed()
        return await self.get(model)

    async def place(self, placement: Placement, placed: Sequence[Placed]) -> list[str]:
        """The servers a deployment with ``placement`` goes on (pipelines use it too).

        Every server is one whose ``workspaces`` admit all of ``placed``;
        naming one that does not is FailedPrecondition.
        """
        return await self._place(placement, placed)

    async def _place(self, placement: Placement, placed: Sequence[Placed]) -> list[str]:
        """The servers a deployment goes on: named, chosen by replicas/selector, or the default."""
        servers = placement.servers
        if servers:
            if len(set(servers)) != len(servers):
                raise InvalidArgument("servers lists a server twice")
            for server in servers:
                check_may_hold(await self.fleet.get(server), placed)  # NotFound if unknown
            return list(servers)
        if placement.replicas < 0:
            raise InvalidArgument(f"replicas must not be negative, got {placement.replicas}")
        if placement.replicas or placement.selector:
            return await self._choose_servers(placement, placed)
        names = await self.fleet.names()
        if DEFAULT_SERVER in names:
            check_may_hold(await self.fleet.get(DEFAULT_SERVER), placed)
            return [DEFAULT_SERVER]
        if len(names) == 1:
            check_may_hold(await self.fleet.get(names[0]), placed)
            return names
        raise InvalidArgument(
            "name the servers to deploy on: there is no 'local' server and "
            f"{len(names)} are registered"
        )

    async def _choose_servers(self, placement: Placement, placed: Sequence[Placed]) -> list[str]:
        """Ready servers matching the selector first, the least used among them first.

        Servers whose workspaces do not admit ``placed`` are never candidates.
        """
        selector = placement.selector.items()
        candidates = [
            server
            for server in await self.fleet.servers()
            if selector <= server.labels.items() and may_hold(server, placed)
        ]
        usage = await in_thread(_targets_per_server)()
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
        return [server.name for server in candidates[:wanted]]

    async def _load_on(self, name: str, model: str, version: int, server: str) -> None:
        record = await in_thread(find_version)(model, version)
        try:
            await self._load(record, server)
        except Unavailable as error:
            await in_thread(_set_target)(name, server, UNREACHABLE, error.message)
        except MLServeError as error:
            await in_thread(_set_target)(name, server, FAILED, error.message)
        else:
            await in_thread(_set_target)(name, server, READY, "")
        # Only to show what is loaded; the caller holds the deployment's lock,
        # so the reconciler must not be called from here.
        await self.fleet.refresh(server, notify=False)

    async def _load(self, record: VersionRecord, server: str) -> None:
        client = await self.fleet.client(server)
        row = await in_thread(tables.Server.get)(tables.Server.name == server)
        config = modelconfig.for_version(
            modelconfig.parse(record.config, record.model), record.version
        )
        row_settings = await in_thread(_serving_of)(record.model)
        config = serving.apply(config, row_settings, "serving")
        files = None if row.shares_repository else await in_thread(self.files_to_push)(record)
        await client.load(record.model, config_json=modelconfig.to_json(config), files=files)

    def files_to_push(self, record: VersionRecord) -> dict[str, bytes]:
        """A version's files keyed as RepositoryModelLoad takes them (blocking)."""
        files: dict[str, bytes] = {}
        for spec in record.files:
            with self.repository.open_version_file(
                record.model, record.version, spec.path, spec.sha256
            ) as f:
                files[f"{record.version}/{spec.path}"] = f.read()
        return files

    async def unload_quietly(self, model: str, server: str) -> None:
        """Unload ``model`` from ``server``; log, do not raise, when it cannot be done."""
        try:
            client = await self.fleet.client(server)
            await client.unload(model)
        except (Unavailable, NotFound) as error:
            log.warning("could not unload %s from %s: %s", model, server, error.message)


def _deployment_row_or_none(name: str) -> Any:
    return tables.Deployment.get_or_none(tables.Deployment.name == name)


def _visible_record(name: str) -> DeploymentRecord:
    """Deployment ``name``, or NotFound alike when absent or its model is hidden (blocking)."""
    row = _deployment_row_or_none(name)
    if row is None or not rules.can_see_model(rules.caller(), row.model):
        raise NotFound(f"deployment {name!r} does not exist")
    return _record(row)


def _deployable_model(name: str) -> Any:
    """The row of model ``name`` if the caller may deploy it (blocking).

    A pipeline's name is refused first, saying how pipelines are deployed.
    """
    check_name(name, "model name")
    if _is_pipeline(name):
        raise InvalidArgument(
            f"{name!r} is a pipeline, not a model: deploy it with CreateDeployment naming "
            f"it in 'pipeline' (mlserve pipelines deploy {name})"
        )
    return writable_model(name)


def _is_pipeline(name: str) -> bool:
    return bool(tables.Pipeline.select().where(tables.Pipeline.name == name).exists())


def _serving_of(name: str) -> ServingSettings:
    row = _deployment_row_or_none(name)
    return NO_SETTINGS if row is None else ServingSettings.from_json(row.serving)


def _write_desired(
    model: str, version: int, servers: Sequence[str], settings: ServingSettings | None = None
) -> list[str]:
    """Make the store say "model at version on servers"; return the servers it named before."""
    with db.database.atomic():
        model_row = tables.Model.get(tables.Model.name == model)
        row = _deployment_row_or_none(model)
        if row is None:
            row = tables.Deployment.create(
                name=model,
                model=model_row,
                version=version,
                serving=(settings or NO_SETTINGS).to_json(),
            )
            previous: list[str] = []
        else:
            previous = [t.server.name for t in row.targets]
            changed = row.version != version
            if settings is not None:
                row.serving = settings.to_json()
            row.version = version
            row.update_time = db.utcnow()
            row.save()
            if changed:
                tables.DeploymentTarget.update(state=PENDING, message="").where(
                    tables.DeploymentTarget.deployment == row
                ).execute()
        tables.DeploymentTarget.delete().where(
            (tables.DeploymentTarget.deployment == row)
            & tables.DeploymentTarget.server.not_in(
                tables.Server.select().where(tables.Server.name.in_(list(servers)))
            )
        ).execute()
        for position, server in enumerate(servers):
            server_row = tables.Server.get(tables.Server.name == server)
            try:
                with db.database.atomic():
                    tables.DeploymentTarget.create(
                        deployment=row, server=server_row, position=position
                    )
            except pw.IntegrityError:
                tables.DeploymentTarget.update(position=position).where(
                    (tables.DeploymentTarget.deployment == row)
                    & (tables.DeploymentTarget.server == server_row)
                ).execute()
    return previous


def _set_target(name: str, server: str, state: str, message: str) -> None:
    deployment = _deployment_row_or_none(name)
    server_row = tables.Server.get_or_none(tables.Server.name == server)
    if deployment is None or server_row is None:
        return
    tables.DeploymentTarget.update(state=state, message=message, update_time=db.utcnow()).where(
        (tables.DeploymentTarget.deployment == deployment)
        & (tables.DeploymentTarget.server == server_row)
    ).execute()


def _ready_targets() -> dict[str, list[tuple[str, int]]]:
    """Per server, the (model, version) pairs loaded there that the caller may see."""
    rows = (
        tables.DeploymentTarget.select(tables.DeploymentTarget, tables.Deployment, tables.Server)
        .join_from(tables.DeploymentTarget, tables.Deployment)
        .join_from(tables.DeploymentTarget, tables.Server)
        .where(tables.DeploymentTarget.state == READY)
    )
    serving: defaultdict[str, list[tuple[str, int]]] = defaultdict(list)
    for row in rows:
        serving[row.server.name].append((row.deployment.name, row.deployment.version))
    for server, model, version, ready in deployed_models():
        if ready and (model, version) not in serving[server]:
            serving[server].append((model, version))
    visible = rules.visible_model_names(model for pairs in serving.values() for model, _ in pairs)
    return {
        server: [(model, version) for model, version in pairs if model in visible]
        for server, pairs in serving.items()
    }


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


def _set_targets_on_server(server: str, state: str, message: str) -> None:
    server_row = tables.Server.get_or_none(tables.Server.name == server)
    if server_row is None:
        return
    tables.DeploymentTarget.update(state=state, message=message, update_time=db.utcnow()).where(
        tables.DeploymentTarget.server == server_row
    ).execute()


def _delete_row(name: str) -> None:
    with db.database.atomic():
        row = _deployment_row_or_none(name)
        if row is not None:
            row.delete_instance(recursive=True)


def _record(row: Any) -> DeploymentRecord:
    targets = (
        tables.DeploymentTarget.select(tables.DeploymentTarget, tables.Server)
        .join(tables.Server)
        .where(tables.DeploymentTarget.deployment == row)
        .order_by(tables.DeploymentTarget.position)
    )
    return DeploymentRecord(
        name=row.name,
        model=row.model.name,
        version=row.version,
        targets=[TargetRecord(t.server.name, t.state, t.message, t.update_time) for t in targets],
        create_time=row.create_time,
        update_time=row.update_time,
        serving=ServingSettings.from_json(row.serving),
    )


def _records_on_server(server: str) -> list[DeploymentRecord]:
    rows = (
        tables.Deployment.select()
        .join(tables.DeploymentTarget)
        .join(tables.Server)
        .where(tables.Server.name == server)
    )
    return [_record(row) for row in rows]
