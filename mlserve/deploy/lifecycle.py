"""Deployments: the desired state "model or pipeline P at version V on servers
S", and the reconciler that makes each Triton match it.

One deployment concept for both: a model deployment loads one model version;
a pipeline deployment loads its member models, then its Triton ensemble
(``ensembles``). Both share placement, target records and the reconciler
(``targets``), and one lock per Triton model name, so a model deployment and
a pipeline that runs the same model never change it at once.

Two ways to put a version on a Triton (DESIGN.md): *shared*, for a Triton that
reads MLServe's repository directory (the embedded one), loads by name with
the version's config pinned to that version; *push*, for any other Triton,
sends the config and the version's files in RepositoryModelLoad overrides.

Loads run in the background: an API call records the desired state, marks its
targets LOADING and answers; a task per deployment then loads it on each
server under its locks, each load bounded by the deployment's deadline (a
load past it is FAILED, the server keeps serving the rest). Deleting a
deployment abandons its running load, so a wedged Triton load never holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import time
from collections import defaultdict
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from mlserve.access import rules
from mlserve.access.audit import AuditLog
from mlserve.access.rules import Principal
from mlserve.catalog.models import model_row, writable_model
from mlserve.catalog.namespace import refuse_pipeline_name
from mlserve.catalog.pipelines import (
    Member,
    Spec,
    check,
    member_configs,
    version_row,
    writable_pipeline,
)
from mlserve.catalog.versions import (
    VersionRecord,
    find_version,
    memory_needs,
    record_measurement,
)
from mlserve.core.aio import Backoff, SingleFlight
from mlserve.core.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    MLServeError,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from mlserve.core.names import check_name
from mlserve.core.paging import Page, PageTokens, page_size
from mlserve.deploy import ensembles, targets
from mlserve.deploy.busy import MARK_LIFETIME, REFRESH_INTERVAL, BusyMarks, is_busy
from mlserve.deploy.ensembles import EnsembleLoader, EnsemblePlan
from mlserve.deploy.fleet import READY, Fleet
from mlserve.deploy.on_demand import Loading
from mlserve.deploy.placement import (
    DEFAULT_HEADROOM,
    Host,
    LoadPlan,
    Need,
    QueueGrowth,
    Resident,
    Room,
    memory_name,
    over_usable,
    plan_load,
    scale_up_to,
)
from mlserve.deploy.targets import (
    COLD,
    DEFAULT_SERVER,
    FAILED,
    UNREACHABLE,
    Placement,
    Placer,
    TargetRecord,
    severity,
)
from mlserve.deploy.tenancy import placed_model, placed_models, placed_pipeline
from mlserve.storage import db, tables
from mlserve.storage.db import in_thread
from mlserve.storage.repository import Repository
from mlserve.triton import modelconfig, serving
from mlserve.triton.serving import NO_SETTINGS, ServingSettings

log = logging.getLogger(__name__)

UPDATABLE_DEPLOYMENT_FIELDS = frozenset({"version", "servers"})
# How long the reconciler waits before loading again a deployment whose load
# failed on a server: 2 s, doubling to 5 minutes (an API call loads at once).
RELOAD_BACKOFF = Backoff(initial=2.0, cap=300.0)
# How long one load may take when neither the deployment nor the server says.
DEFAULT_LOAD_TIMEOUT = 120.0
# Beyond the deadline, what Triton's own RPC is given: our deadline fires first.
_RPC_SLACK = 10.0
_LIST_KEY = {"list": "deployments"}
EAGERLY = Loading()
NOT_LOADED_YET = "not loaded: loads on its first inference (on demand)"
# Who the audit trail names for what MLServe does on its own (evictions).
MLSERVE_ITSELF = Principal(key_prefix="", name="mlserve", role="admin")

__all__ = ["DEFAULT_SERVER", "DeploymentRecord", "Deployments", "Placement", "Wanted"]


@dataclass(frozen=True)
class Wanted:
    """What CreateDeployment asks for: a model or a pipeline, at a version, placed."""

    model: str = ""
    pipeline: str = ""
    name: str = ""  # must be empty or the model's (pipeline's) name
    version: int = 0  # 0: the latest
    placement: Placement = field(default_factory=Placement)
    serving: ServingSettings | None = None  # None: none given
    load_timeout: float = 0.0  # seconds per load; 0: the server's default
    loading: Loading = EAGERLY


@dataclass(frozen=True)
class DeploymentRecord:
    """A deployment of a model (``model`` set) or of a pipeline (``pipeline`` set)."""

    name: str
    model: str
    pipeline: str
    version: int
    targets: list[TargetRecord]
    create_time: dt.datetime
    update_time: dt.datetime
    serving: ServingSettings = NO_SETTINGS
    load_timeout: float = 0.0  # as set at create; 0: the server's default
    loading: Loading = EAGERLY

    @property
    def servers(self) -> list[str]:
        return [target.server for target in self.targets]

    @property
    def state(self) -> str:
        return severity(target.state for target in self.targets)


@dataclass(frozen=True)
class _LoadOrder:
    """What loading one deployment on one server takes, read from the store."""

    name: str
    shares_repository: bool
    plan: EnsemblePlan | None = None  # a pipeline's
    version: VersionRecord | None = None  # a model's
    config_json: str = ""  # a model's, version pinned and serving settings applied
    load_timeout: float = 0.0  # the deployment's; 0: the server's default
    models: tuple[str, ...] = ()  # the Triton models the load puts on the server


@dataclass(frozen=True)
class _Rollout:
    """A model deployment moving to another version: the servers where the version it
    serves is READY (each with whether it shares the repository), and the config that
    makes Triton serve both versions side by side."""

    servers: tuple[tuple[str, bool], ...]
    versions: tuple[VersionRecord, VersionRecord]  # (serving now, next)
    config_json: str

    def files_to_push(self, repository: Repository) -> dict[str, bytes]:
        """Both versions' files, for a server that does not share the repository."""
        files: dict[str, bytes] = {}
        for record in self.versions:
            files.update(targets.files_to_push(repository, record))
        return files


@dataclass(frozen=True)
class _OnServer:
    """A deployment targeting one server, as the reconciler looks at it."""

    name: str
    version: int
    is_pipeline: bool
    state: str  # its target's, on that server
    models: tuple[str, ...]  # the Triton models it loads: the lock names
    on_demand_here: bool = False  # loaded there only by an inference (or left COLD)


@dataclass(frozen=True)
class _ColdStart:
    """An on-demand model deployment as a cold start reads it."""

    name: str
    servers: tuple[str, ...]
    need: Need  # what its version needs, and where
    ready: bool  # a copy is READY already


@dataclass(frozen=True)
class _ScaleUp:
    """An on-demand model deployment as scaling up reads it."""

    name: str
    servers: tuple[str, ...]  # its targets, in order
    loaded: frozenset[str]  # those where a copy is READY
    allowed: int  # copies it may have at once (max_copies)
    need: Need  # what its version needs, and where


# How long a cold start waits for other processes' busy marks to clear when only
# they stand between it and room: a mark lingers up to two refresh intervals after
# its process's last request, and a killed process's marks up to their lifetime.
_QUIET_WAIT = MARK_LIFETIME + REFRESH_INTERVAL


class _BusyElsewhere(Exception):
    """No room, but evicting what other processes mark busy would make it."""

    def __init__(self, exhausted: ResourceExhausted) -> None:
        super().__init__(str(exhausted))
        self.exhausted = exhausted


@dataclass(frozen=True)
class _Held:
    """A model a server holds, as eviction reads it."""

    deployment: str
    model: str
    version: int
    evictable: bool
    loaded_at: float  # when its target there last became READY (seconds since the epoch)


@dataclass(frozen=True)
class _IdleCandidate:
    """An on-demand copy that idle unloading may take."""

    deployment: str
    server: str
    after: float  # its idle_unload_after, seconds
    loaded_at: float  # when its target there last became READY (seconds since the epoch)


class Deployments:
    """Every deployment's lifecycle: create, update, delete, and reconcile."""

    def __init__(
        self,
        fleet: Fleet,
        repository: Repository,
        tokens: PageTokens,
        *,
        retry: Backoff = RELOAD_BACKOFF,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        busy: BusyMarks | None = None,
        load_timeout: float = DEFAULT_LOAD_TIMEOUT,
        headroom: float = DEFAULT_HEADROOM,
        registry: CollectorRegistry | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        self.fleet = fleet
        self.repository = repository
        self.tokens = tokens
        self.placer = Placer(fleet, headroom)
        self.ensembles = EnsembleLoader(self.placer, repository)
        # One lock per Triton model name, for model and pipeline deployments alike.
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._listeners: list[Callable[[], Awaitable[None]]] = []
        # (deployment, server) whose last load failed: failures in a row, and
        # when the reconciler may try again.
        self._retry = retry
        self._clock = clock
        self._wall_clock = wall_clock
        self._failed_loads: dict[tuple[str, str], tuple[int, float]] = {}
        self.load_timeout = load_timeout
        # The background load of each deployment being loaded, by its name.
        self._loads: dict[str, asyncio.Task[None]] = {}
        # Unloads after an abandoned load: kept so they are not collected mid-way.
        self._cleanups: set[asyncio.Task[None]] = set()
        # Per server: held while a first load is measured by its resident memory,
        # so that two loads' growth is not counted as one's.
        self._measuring: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        # On demand: one cold start per model at a time. What eviction and idle
        # unloading read is shared by every MLServe process on the database: when a
        # copy was last used is Triton's own record, and what is in flight is the
        # busy marks every process publishes (``mlserve.deploy.busy``).
        self._cold_starts: SingleFlight[str, bool] = SingleFlight()
        self.busy = busy or BusyMarks()
        self.audit = audit
        registry = registry or CollectorRegistry()
        self._evictions = Counter(
            "mlserve_evictions",
            "On-demand models unloaded to make room for another's load",
            ["server"],
            registry=registry,
        )
        self._idle_unloads = Counter(
            "mlserve_idle_unloads",
            "On-demand models unloaded after idle_unload_after_seconds unused",
            ["server"],
            registry=registry,
        )
        self._scale_ups = Counter(
            "mlserve_scale_ups",
            "Copies of hot on-demand models loaded because their Triton queue time grew",
            ["server"],
            registry=registry,
        )
        self._cold_loads = Counter(
            "mlserve_on_demand_loads",
            "Loads of on-demand models made by an inference",
            ["server"],
            registry=registry,
        )
        fleet.track_holdings(targets.ServerHoldings())

    def on_change(self, listener: Callable[[], Awaitable[None]]) -> None:
        """Call ``listener()`` after any deployment or target state changed."""
        self._listeners.append(listener)

    async def _notify(self) -> None:
        for listener in self._listeners:
            await listener()

    @contextlib.asynccontextmanager
    async def _locked(self, models: Iterable[str]) -> AsyncIterator[None]:
        """Hold the lock of each Triton model in ``models``: this process's, then the
        database's, so that no other call here and no other MLServe on the same
        database changes them meanwhile. Taken in name order: no deadlock."""
        names = sorted(set(models))
        async with contextlib.AsyncExitStack() as stack:
            for name in names:
                await stack.enter_async_context(self._locks[name])
            await stack.enter_async_context(db.named_locks(names))
            yield

    @contextlib.asynccontextmanager
    async def _locked_if_free(self, models: Iterable[str]) -> AsyncIterator[bool]:
        """``_locked`` for the reconciler, which never waits: yields False (holding
        nothing) when a call here or another MLServe holds one of ``models``."""
        names = sorted(set(models))
        if self._busy(names):
            yield False
            return
        async with contextlib.AsyncExitStack() as stack:
            for name in names:  # free just now, and nothing awaited since
                await stack.enter_async_context(self._locks[name])
            yield await stack.enter_async_context(db.named_locks(names, wait=False))

    def _busy(self, models: Iterable[str]) -> bool:
        return any(self._locks[name].locked() for name in models)

    # --- the API ------------------------------------------------------------

    async def create(self, wanted: Wanted, *, wait: bool = False) -> DeploymentRecord:
        """Deploy a model or a pipeline: record it, start loading it on its servers,
        and return it LOADING (with ``wait``: once every server's load finished).

        Raises:
            InvalidArgument: both or neither of model and pipeline, a name other
                than theirs, serving settings for a pipeline, a bad placement.
            AlreadyExists: it is deployed already (UpdateDeployment changes it).
            NotFound: the model, pipeline, version or a named server is missing.
            FailedPrecondition: it clashes with what another deployment runs.
            Unavailable: a chosen server does not answer; nothing was written.
        """
        if not math.isfinite(wanted.load_timeout) or wanted.load_timeout < 0:
            raise InvalidArgument(
                "load_timeout_seconds must be 0 (the server's default) or a number of "
                "seconds above 0"
            )
        loading = wanted.loading.checked()
        if wanted.pipeline:
            if loading != EAGERLY:
                raise InvalidArgument(
                    "pipelines are loaded eagerly: leave loading, min_copies, max_copies, "
                    "idle_unload_after_seconds and pinned unset"
                )
            return await self._settled(await self._create_pipeline(wanted), wait)
        if wanted.name and wanted.name != wanted.model:
            raise InvalidArgument("a deployment is named after its model: leave name empty")
        model = wanted.model
        await in_thread(_deployable_model)(model)
        async with self._locked([model]):
            if await in_thread(_row_or_none)(model) is not None:
                raise AlreadyExists(
                    f"model {model!r} is already deployed; use UpdateDeployment to change it"
                )
            record = await self._apply(
                model,
                wanted.version,
                wanted.placement,
                wanted.serving or NO_SETTINGS,
                load_timeout=wanted.load_timeout,
                loading=loading,
            )
        return await self._settled(record, wait)

    async def _settled(self, record: DeploymentRecord, wait: bool) -> DeploymentRecord:
        return await self.settled(record.name) if wait else record

    async def settled(self, name: str) -> DeploymentRecord:
        """Deployment ``name`` once its background load (if one runs) ended; the load
        goes on when the caller gives up waiting.

        Raises:
            NotFound: it is not deployed, or was undeployed while loading.
        """
        load = self._loads.get(name)
        if load is None:
            return await self.get(name)
        try:
            await asyncio.shield(load)
        except asyncio.CancelledError:
            if not load.cancelled():
                raise  # the caller gave up; the load goes on
            # Abandoned by a DeleteDeployment: get() says it is gone.
        return await self.get(name)

    async def _create_pipeline(self, wanted: Wanted) -> DeploymentRecord:
        if wanted.model or wanted.serving is not None:
            raise InvalidArgument(
                "set either model or pipeline, not both; a pipeline's serving settings "
                "belong to its steps"
            )
        if wanted.name and wanted.name != wanted.pipeline:
            raise InvalidArgument("a deployment is named after its pipeline: leave name empty")
        pipeline = check_name(wanted.pipeline, "pipeline name")
        # The pipeline's workspace is read here, in the thread: not on the event loop.
        placed_itself = await in_thread(lambda: placed_pipeline(writable_pipeline(pipeline)))()
        members = await in_thread(ensembles.step_models)(pipeline, wanted.version)
        async with self._locked([pipeline, *members]):
            if await in_thread(_row_or_none)(pipeline) is not None:
                raise AlreadyExists(f"pipeline {pipeline!r} is already deployed")
            plan = await in_thread(_plan)(pipeline, wanted.version)
            # The ensemble and every member land on each server.
            placed = [placed_itself, *await in_thread(placed_models)(sorted(plan.members))]
            needs = await in_thread(memory_needs)(
                (member.model, member.version) for member in plan.members.values()
            )
            need = [targets.need_of(found) for _, found in sorted(needs.items())]
            servers = await self.placer.place(
                wanted.placement, placed, need=need, deployment=pipeline
            )
            await self.placer.require_room(wanted.placement, servers, need, pipeline)
            await self.placer.require_ready(servers)
            await in_thread(_write_pipeline)(plan, servers, wanted.load_timeout)
            await self._start_loads(pipeline, servers, [pipeline, *members])
        await self._notify()
        return await self.get(pipeline)

    async def update(
        self,
        name: str,
        version: int | None,
        servers: Sequence[str] | None,
        *,
        allow_missing: bool = False,
        wait: bool = False,
        loading: Loading = EAGERLY,
    ) -> DeploymentRecord:
        """Move model deployment ``name`` to ``version`` and/or ``servers`` (None: keep);
        loads run in the background as for ``create`` (``wait``: wait for them).

        ``allow_missing`` deploys it when it is not deployed yet, with ``loading``;
        an existing deployment keeps its loading (InvalidArgument when ``loading``
        asks for another). Pipelines are deployed again to change them
        (InvalidArgument says so).
        """
        loading = loading.checked()
        await in_thread(_deployable_model)(name)
        async with self._locked([name]):
            current = await in_thread(_record_or_none)(name)
            if current is None:
                if not allow_missing:
                    raise NotFound(f"model {name!r} is not deployed")
                record = await self._apply(
                    name, version or 0, Placement(servers or ()), loading=loading
                )
            else:
                if loading not in (EAGERLY, current.loading):
                    raise InvalidArgument(
                        f"deployment {name!r} is {current.loading.mode} with its limits set at "
                        "create; loading, min_copies, max_copies, idle_unload_after_seconds and "
                        "pinned cannot change: undeploy it and deploy again"
                    )
                record = await self._apply(
                    name,
                    current.version if version is None else version,
                    Placement(current.servers if servers is None else servers),
                )
        return await self._settled(record, wait)

    async def get(self, name: str) -> DeploymentRecord:
        """Deployment ``name``; NotFound alike when it is absent or the caller may not
        see what it deploys."""
        return await in_thread(_visible_record)(check_name(name, "deployment name"))

    async def of_model(self, model: str) -> DeploymentRecord | None:
        """``model``'s deployment (one per model, named after it), or None."""

        def fetch() -> DeploymentRecord | None:
            row = _row_or_none(model)
            return None if row is None or row.model_id is None else _record(row)

        return await in_thread(fetch)()

    async def list_deployments(self, requested_size: int, token: str) -> Page[DeploymentRecord]:
        """Model and pipeline deployments the caller may see, in name order, paged."""
        size = page_size(requested_size)
        after = self.tokens.decode(_LIST_KEY, token)
        records = await in_thread(_records_after)(None if after is None else str(after), size + 1)
        more = len(records) > size
        next_token = self.tokens.encode(_LIST_KEY, records[size - 1].name) if more else ""
        return Page(records[:size], next_token)

    async def delete(self, name: str) -> None:
        """Undeploy ``name`` (a model or a pipeline) from every server.

        What another deployment still uses on a server (a pipeline's member
        deployed on its own too, say) stays loaded there. A load still running
        is abandoned and what it loads is unloaded in the background, so this
        answers at once even when Triton's load is wedged.
        """
        models = await in_thread(_writable_models)(check_name(name, "deployment name"))
        abandoned = await self._abandon_load(name)
        async with self._locked(models):
            await self._delete(name, abandoned=abandoned)
        await self._notify()

    async def _delete(self, name: str, *, abandoned: bool = False) -> None:
        """``delete`` for a caller holding the deployment's locks. When its load was
        cut short (``abandoned``) or a target is not READY (a load past its deadline,
        say), Triton may still be busy loading it: unload in the background."""
        record = await in_thread(_record_or_none)(name)
        unsettled = record is not None and any(t.state != READY for t in record.targets)
        servers, models = await in_thread(_delete_row)(name)
        if abandoned or unsettled:
            self._in_background(self._unload_from(servers, set(models)))
            return
        await self._unload_from(servers, set(models))

    async def _unload_from(self, servers: Iterable[str], models: set[str]) -> None:
        for server in servers:
            await self.placer.unload_unused(server, models)
            await self.fleet.refresh(server, notify=False)

    def _in_background(self, work: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await work
            except MLServeError as error:
                log.warning("cleaning up after an abandoned load: %s", error.message)

        task = asyncio.create_task(run())
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)

    async def _abandon_load(self, name: str) -> bool:
        """Cancel deployment ``name``'s background load, if one runs; True if one did."""
        load = self._loads.pop(name, None)
        if load is None or load.done():
            return False
        load.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await load
        return True

    async def load_model(
        self, model: str, version: int, server: str, *, wait: bool = False
    ) -> DeploymentRecord:
        """Add ``server`` (default: 'local') to ``model``'s deployment at ``version``,
        deploying it if it was not; loads in the background (``wait``: wait for it)."""
        server = server or DEFAULT_SERVER
        await in_thread(_deployable_model)(model)
        async with self._locked([model]):
            current = await in_thread(_record_or_none)(model)
            servers = [] if current is None else current.servers
            if server not in servers:
                servers.append(server)
            record = await self._apply(model, version, Placement(servers))
        return await self._settled(record, wait)

    async def unload_model(self, model: str, server: str) -> None:
        """Take ``model`` off ``server`` (empty: off every server); undeploy it when no
        server is left."""
        await in_thread(writable_model)(check_name(model, "model name"))
        abandoned = await self._abandon_load(model)
        async with self._locked([model]):
            # Read under the lock: a concurrent update must not be undone.
            record = await self.get(model)
            if server and server not in record.servers:
                raise NotFound(f"model {model!r} is not deployed on server {server!r}")
            remaining = [name for name in record.servers if server and name != server]
            if remaining:
                await self._apply(model, record.version, Placement(remaining))
                return
            await self._delete(model, abandoned=abandoned)
        await self._notify()

    async def serving(self) -> dict[str, list[tuple[str, int]]]:
        """Per server, the (model, version) pairs whose load there succeeded, of the
        models the caller may see."""

        def fetch() -> dict[str, list[tuple[str, int]]]:
            entries = [entry for entry in targets.served() if entry.ready]
            visible = rules.visible_model_names(entry.model for entry in entries)
            found: defaultdict[str, list[tuple[str, int]]] = defaultdict(list)
            for entry in entries:
                pair = (entry.model, entry.version)
                if entry.model in visible and pair not in found[entry.server]:
                    found[entry.server].append(pair)
            return dict(found)

        return await in_thread(fetch)()

    # --- reconciling --------------------------------------------------------

    async def server_changed(self, server: str, state: str) -> None:
        """Fleet callback: reconcile a server that became ready; mark one that left.

        Safe to run concurrently with the API calls: it skips what they hold.
        """
        if state == READY:
            await self.reconcile_server(server)
            return
        await in_thread(targets.set_state_on_server)(server, UNREACHABLE, f"server is {state}")
        await self._notify()

    async def reconcile_server(self, server: str) -> None:
        """Load on ``server`` every deployment that targets it but is not serving there.

        Readiness is asked per model: models pushed as files never appear in
        Triton's repository index. A deployment being changed right now is
        left to the next round; a pipeline whose target FAILED is left alone
        (retrying would load and unload its healthy members every round:
        undeploy and deploy again to retry).
        """
        client = await self.fleet.client(server)
        for found in await in_thread(_on_server)(server):
            if (
                self._busy(found.models)
                or found.name in self._loads
                or (found.is_pipeline and found.state == FAILED)
            ):
                continue
            if not self._may_retry(found.name, server):
                continue  # its last loads there failed: wait out the back-off
            if await client.model_ready(found.name, found.version):
                if found.state != READY:
                    await in_thread(targets.set_state)(found.name, server, READY, "")
                continue
            if found.on_demand_here:
                if found.state != COLD:
                    await in_thread(targets.set_state)(found.name, server, COLD, NOT_LOADED_YET)
                continue
            async with self._locked_if_free(found.models) as held:
                if not held:
                    continue  # being changed here or by another MLServe: next round
                log.info("reconciling: loading %s v%d on %s", found.name, found.version, server)
                load = self._track(found.name, self._load_on(found.name, server))
                try:
                    await load
                except asyncio.CancelledError:
                    if not load.cancelled():
                        raise
                    # A DeleteDeployment abandoned it; go on with the rest.
        await self._notify()

    # --- on demand ----------------------------------------------------------

    async def warm(self, model: str) -> bool:
        """Load on-demand deployment ``model`` on one of its servers unless a copy is
        READY, once however many callers ask at once (a caller that gives up does
        not cancel it); True once a copy is READY, False when ``model`` is not an
        on-demand model deployment (nothing to do).

        Room is made by evicting, on one server, the least recently used
        on-demand models that are neither pinned, nor kept by min_copies, nor
        answering requests: no more than it takes (``placement.plan_load``).

        Raises:
            ResourceExhausted: no server of it can make room.
            Unavailable: no server of it is ready, or the load failed there.
        """
        return await self._cold_starts.run(model, lambda: self._cold_start(model))

    async def _cold_start(self, model: str) -> bool:
        for _ in range(3):  # evictions planned outside the locks may change inside
            order = await in_thread(_cold_start_order)(model)
            if order is None or order.ready:
                return order is not None
            plan = await self._plan_waiting_for_quiet(order)
            async with self._locked([model, *plan.evict]):
                order = await in_thread(_cold_start_order)(model)
                if order is None or order.ready:
                    return order is not None
                try:
                    again = await self._plan_cold_start(order)
                except _BusyElsewhere:
                    continue  # a victim became busy elsewhere meanwhile: plan again
                if again.server != plan.server or not set(again.evict) <= set(plan.evict):
                    continue
                for victim in again.evict:
                    await self._evict(victim, again.server, model)
                await in_thread(targets.mark_loading)(model, [again.server])
                await self._load_on(model, again.server)
                self._cold_loads.labels(server=again.server).inc()
            await self._notify()
            record = await in_thread(_record_or_none)(model)
            found = [] if record is None else record.targets
            target = next((t for t in found if t.server == again.server), None)
            if target is None:
                return False  # undeployed meanwhile
            if target.state != READY:
                # The caller may be a consumer: Triton's words and the server's name are
                # for MLServe's log and the target's state (GetDeployment), not for it.
                log.warning(
                    "on-demand load of %s on server %s failed: %s",
                    model, again.server, target.message or target.state,
                )  # fmt: skip
                raise Unavailable(_could_not_load(model))
            return True
        raise Unavailable(f"on-demand model {model!r} could not be placed: busy; retry")

    async def _plan_waiting_for_quiet(self, order: _ColdStart) -> LoadPlan:
        """``_plan_cold_start``; when no server can make room only because models are
        marked busy by other processes, planned again as their marks clear (a mark
        outlives its process's last request by up to two refresh intervals), for at
        most ``_QUIET_WAIT`` seconds."""
        deadline = self._clock() + _QUIET_WAIT
        while True:
            try:
                return await self._plan_cold_start(order)
            except _BusyElsewhere as blocked:
                if self._clock() >= deadline:
                    raise blocked.exhausted from None
            await asyncio.sleep(REFRESH_INTERVAL / 4)

    async def _plan_cold_start(self, order: _ColdStart) -> LoadPlan:
        records = {record.name: record for record in await self.fleet.servers()}
        ready = [
            server
            for server in order.servers
            if server in records and records[server].status.state == READY
        ]
        if not ready:
            log.warning(
                "on-demand model %s: none of its servers (%s) is ready to load it",
                order.name, ", ".join(order.servers),
            )  # fmt: skip
            raise Unavailable(_could_not_load(order.name))
        held, needs = await in_thread(_held_on)(ready)
        # Read only when some server holds a model it could evict: most cold
        # starts find room, and then nobody's use matters.
        evictable = [s for s in ready if any(entry.evictable for entry in held.get(s, ()))]
        busy = await self.busy.busy(evictable) if evictable else set()
        last_used = {server: await self._last_inferences(server) for server in evictable}
        now = self._wall_clock()

        def used(server: str, entry: _Held) -> float:
            seen = last_used.get(server)
            if seen is None:
                return now  # its server cannot say: as if just used, evicted last
            return max(seen.get(entry.model, 0.0), entry.loaded_at)

        hosts = [
            Host(
                server,
                records[server].capacity,
                [
                    Resident.of(
                        entry.deployment,
                        needs.get((entry.model, entry.version), Need(0)),
                        records[server].capacity,
                        used(server, entry),
                        pinned=not entry.evictable,
                        in_flight=int(is_busy(busy, server, entry.deployment)),
                    )
                    for entry in held.get(server, ())
                ],
            )
            for server in ready
        ]
        try:
            return plan_load(hosts, order.need, self.placer.headroom)
        except ResourceExhausted as exhausted:
            marked = busy - self.busy.local()
            if any(is_busy(marked, host.server, r.model) for host in hosts for r in host.resident):
                raise _BusyElsewhere(exhausted) from None
            raise

    async def _last_inferences(self, server: str) -> dict[str, float] | None:
        """Model -> when ``server``'s Triton last answered an inference of it (seconds
        since the epoch; absent: never since it loaded), or None when it cannot say.

        Triton's statistics count every inference, through whichever MLServe
        process (worker or replica) it came: the same answer for every evictor."""
        try:
            client = self.fleet.cached_client(server) or await self.fleet.client(server)
            return await client.last_inferences()
        except MLServeError as error:
            log.warning("no statistics from server %s: %s", server, error)
            return None

    async def _evict(self, victim: str, server: str, for_model: str) -> None:
        """Unload ``victim`` from ``server`` to make room for ``for_model`` and record
        it: the target's state (COLD, and why), the counter, the audit trail."""
        await self.placer.unload_quietly(victim, server)
        message = (
            f"evicted from {server} at {db.utcnow():%Y-%m-%d %H:%M:%S} UTC to make room "
            f"for {for_model!r}"
        )
        await in_thread(targets.set_state)(victim, server, COLD, message)
        self._evictions.labels(server=server).inc()
        log.info("on demand: %s", message.replace("evicted", f"evicted {victim}", 1))
        if self.audit is not None:
            await self.audit.record(
                MLSERVE_ITSELF, "mlserve.v1.DeploymentService/Evict", victim, message
            )

    async def unload_idle(self) -> None:
        """Unload each on-demand copy unused for its deployment's
        idle_unload_after_seconds, down to min_copies (those are never idled out),
        skipping copies with requests in flight or being changed (the health
        loop calls it after every round).

        Unused means: no inference answered by that server's Triton (its own
        ``last_inference``, whichever MLServe process sent it) nor a load of the
        copy within the time, and no busy mark of any process on it. A server
        whose statistics cannot be read keeps its copies this round."""
        now = self._wall_clock()
        due = [c for c in await in_thread(_idle_candidates)() if now - c.loaded_at >= c.after]
        if not due:
            return  # cheap check first: nothing loaded long enough to be idle
        servers = {candidate.server for candidate in due}
        busy = await self.busy.busy(servers)
        last_used = {server: await self._last_inferences(server) for server in servers}
        unloaded = 0
        for candidate in due:
            name, server = candidate.deployment, candidate.server
            if not self._idle(candidate, busy, last_used.get(server), now):
                continue
            async with self._locked_if_free([name]) as held:
                if not held:
                    continue
                # Read again under the lock, just before unloading: a request may
                # have begun through another process meanwhile.
                now = self._wall_clock()
                again = await self._last_inferences(server)
                if not self._idle(candidate, await self.busy.busy([server]), again, now):
                    continue
                await self.placer.unload_quietly(name, server)
                await in_thread(targets.set_state)(
                    name,
                    server,
                    COLD,
                    f"unloaded from {server} after {candidate.after:g} s unused",
                )
                self._idle_unloads.labels(server=server).inc()
                unloaded += 1
        if unloaded:
            await self._notify()

    @staticmethod
    def _idle(
        candidate: _IdleCandidate,
        busy: set[tuple[str, str]],
        last_used: Mapping[str, float] | None,
        now: float,
    ) -> bool:
        if last_used is None or is_busy(busy, candidate.server, candidate.deployment):
            return False
        used = max(last_used.get(candidate.deployment, 0.0), candidate.loaded_at)
        return now - used >= candidate.after

    async def scale_up(
        self, queue_growth: Mapping[tuple[str, str], QueueGrowth], threshold_ms: float
    ) -> None:
        """Give each hot on-demand model deployment one more copy, up to max_copies:
        hot when, on every server where a copy is READY, ``queue_growth[(model,
        server)]`` (this round's Triton statistics; a copy missing from it had no
        traffic) has a mean queue time per request above ``threshold_ms``
        (``placement.scale_up_to``). The copy goes on the ready server of its
        targets with the most free memory, only if that one has room (nothing is
        evicted for it); at most one per deployment per call (the health loop
        calls it after every round); counted in ``mlserve_scale_ups_total`` and
        audited. ``threshold_ms`` 0: never."""
        if threshold_ms <= 0:
            return
        ready = {
            server.name: server.capacity
            for server in await self.fleet.servers()
            if server.status.state == READY
        }
        holding: dict[str, list[Need]] | None = None
        loaded_any = False
        idle = QueueGrowth(0, 0)
        for order in await in_thread(_scale_up_candidates)():
            loaded = {
                server: queue_growth.get((order.name, server), idle) for server in order.loaded
            }
            if not all(g.mean_queue_ns() > threshold_ms * 1e6 for g in loaded.values()):
                continue  # cheap check first: most rounds scale nothing
            holding = holding if holding is not None else await in_thread(targets.needs_held)()
            rooms = [
                Room.holding(server, ready[server], holding.get(server, ()))
                for server in order.servers
                # a server whose last loads of it failed waits out its back-off
                if server in ready and self._may_retry(order.name, server)
            ]
            chosen = scale_up_to(
                loaded, rooms, order.need, order.allowed, threshold_ms * 1e6, self.placer.headroom
            )
            if chosen is None:
                continue
            async with self._locked_if_free([order.name]) as held:
                if not held:
                    continue  # being changed: the next round sees it again
                if await in_thread(_scale_up_order_of)(order.name) != order:
                    continue  # changed before the lock (another replica scaled it, say)
                await in_thread(targets.mark_loading)(order.name, [chosen])
                await self._load_on(order.name, chosen)
            loaded_any = True  # its target's state changed, READY or not
            record = await in_thread(_record_or_none)(order.name)
            states = {t.server: t.state for t in record.targets} if record else {}
            if states.get(chosen) == READY:
                holding.setdefault(chosen, []).append(order.need)
                await self._record_scale_up(order, chosen, loaded, threshold_ms)
        if loaded_any:
            await self._notify()

    async def _record_scale_up(
        self, order: _ScaleUp, server: str, loaded: Mapping[str, QueueGrowth], threshold_ms: float
    ) -> None:
        queued = ", ".join(
            f"{name} {growth.mean_queue_ns() / 1e6:.0f} ms"
            for name, growth in sorted(loaded.items())
        )
        message = (
            f"scaled up onto {server} at {db.utcnow():%Y-%m-%d %H:%M:%S} UTC: mean queue "
            f"time per request over the last round above {threshold_ms:g} ms on every "
            f"copy ({queued})"
        )
        self._scale_ups.labels(server=server).inc()
        log.info("on demand: %s %s", order.name, message)
        if self.audit is not None:
            await self.audit.record(
                MLSERVE_ITSELF, "mlserve.v1.DeploymentService/ScaleUp", order.name, message
            )

    # --- the work -----------------------------------------------------------

    async def _apply(
        self,
        model: str,
        version: int,
        placement: Placement,
        settings: ServingSettings | None = None,
        *,
        load_timeout: float = 0.0,
        loading: Loading | None = None,
    ) -> DeploymentRecord:
        """Record the desired state of a model deployment and start making the servers
        match (in the background); the caller holds the model's lock. ``settings``
        None keeps the deployment's; ``load_timeout`` and ``loading`` are a new
        deployment's (None: the deployment's, eager for a new one)."""
        placed = await in_thread(lambda: placed_model(_deployable_model(model)))()
        target = await in_thread(find_version)(model, version)
        if settings is not None:  # refuse settings the config cannot take, before anything
            serving.apply(modelconfig.parse(target.config, model), settings, "serving")
        for pipeline, used in await in_thread(_pipelines_running)(model):
            if used != target.version:
                raise FailedPrecondition(
                    f"deployed pipeline {pipeline!r} runs version {used} of {model!r}; "
                    "undeploy the pipeline before deploying another version"
                )
        loading = loading or await in_thread(_loading_of)(model)
        need = targets.need_of(target.memory)
        # On demand, a load makes room by evicting: placement does not refuse it
        # for memory, only for GPUs its config names that a server does not have.
        servers = await self.placer.place(
            placement,
            [placed],
            need=Need(0, need.instance_groups) if loading.on_demand else need,
            deployment=model,
        )
        if loading.min_copies > len(servers):
            raise InvalidArgument(
                f"min_copies is {loading.min_copies} but the deployment is placed on "
                f"{len(servers)} server(s)"
            )
        if loading.pinned:
            await self._check_pins(model, servers, need)
        if not loading.on_demand:
            await self.placer.require_room(placement, servers, need, model)
        await self.placer.require_ready(servers)
        # A new version is loaded beside the serving one first (a rollout), so the
        # route can move to it; the loads of the version alone then run in the background.
        serving_both = await self._load_beside(model, target.version, servers, settings)
        previous = await in_thread(_write_model)(
            model, target.version, servers, settings, serving_both, load_timeout, loading
        )
        if serving_both:
            await self._notify()  # the route moves to the new version where it serves
        for server in sorted(set(previous) - set(servers)):
            await self.placer.unload_unused(server, {model})
        # Loading the version alone also unloads the old one where both served;
        # Triton lets the requests in flight on it finish first. On demand, only
        # min_copies and the copies serving now are loaded; the rest are COLD.
        warm = await in_thread(_warm_targets)(model)
        for server in servers:
            if server not in warm:
                await in_thread(targets.set_state)(model, server, COLD, NOT_LOADED_YET)
        await self._start_loads(model, warm, [model])
        await self._notify()
        return await self.get(model)

    async def _check_pins(self, model: str, servers: Sequence[str], need: Need) -> None:
        """FailedPrecondition when pinning ``model`` (``need``) on ``servers`` would pin
        more on one of their memories (host, a GPU) than it holds less the headroom."""
        pinned = await in_thread(_pinned_needs)(model)
        records = {record.name: record for record in await self.fleet.servers()}
        for server in servers:
            over = over_usable(
                records[server].capacity, [*pinned.get(server, ()), need], self.placer.headroom
            )
            if over is not None:
                memory, total, usable = over
                raise FailedPrecondition(
                    f"pinned deployments on server {server!r} would need {total} bytes of "
                    f"{memory_name(memory)}, more than its {usable} bytes for models "
                    f"(capacity less {self.placer.headroom:.0%} headroom); unpin some or add "
                    "capacity. Nothing was deployed."
                )

    async def _start_loads(self, name: str, servers: Sequence[str], models: list[str]) -> None:
        """Mark ``name``'s targets on ``servers`` LOADING and load it there in a task
        of its own, which takes ``models``' locks once the caller lets go of them."""
        # A target READY stays so: the version it serves is routed to meanwhile.
        await in_thread(targets.mark_loading)(name, servers)
        await self._abandon_load(name)  # an older load waits for the caller's locks

        async def load() -> None:
            async with self._locked(models):
                await asyncio.gather(*(self._load_on(name, server) for server in servers))
            await self._notify()

        self._track(name, load())

    def _track(self, name: str, load: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``load`` of deployment ``name`` as the task DeleteDeployment abandons."""
        task = asyncio.create_task(load, name=f"load {name}")
        self._loads[name] = task

        def forget(done: asyncio.Task[None]) -> None:
            if self._loads.get(name) is done:
                del self._loads[name]
            if not done.cancelled() and done.exception() is not None:
                log.error("loading %s failed", name, exc_info=done.exception())

        task.add_done_callback(forget)
        return task

    async def _load_beside(
        self, model: str, version: int, servers: Sequence[str], settings: ServingSettings | None
    ) -> list[str]:
        """Load ``version`` of ``model`` beside the version its deployment serves, on
        each of ``servers`` where that one is READY, so that requests are answered
        all along while the route still names the old version; return the servers
        where both versions now serve. Nothing is loaded for a new deployment, the
        same version, or when the two versions' configs differ in more than their
        versions (Triton serves one config per model): the old way, a switch, is left.
        The caller holds the model's lock."""
        rollout = await in_thread(_rollout)(model, version, servers, settings)
        if rollout is None:
            return []

        async def load(server: str, shares: bool) -> bool:
            try:
                client = await self.fleet.client(server)
                files = None
                if shares:
                    for record in rollout.versions:
                        await in_thread(targets.place_for_shared_load)(self.repository, record)
                else:
                    files = await in_thread(rollout.files_to_push)(self.repository)
                await client.load(model, config_json=rollout.config_json, files=files)
            except MLServeError as error:
                log.warning(
                    "could not load %s v%d beside v%d on %s: %s",
                    model, version, rollout.versions[0].version, server, error.message,
                )  # fmt: skip
                return False
            return True

        loaded = await asyncio.gather(*(load(*server) for server in rollout.servers))
        return [server for (server, _), ok in zip(rollout.servers, loaded, strict=True) if ok]

    async def _load_on(self, name: str, server: str) -> None:
        """Load deployment ``name`` on ``server`` and record how it went; the caller
        holds its locks."""
        order = await in_thread(self._load_order)(name, server)
        if order is None:
            return  # undeployed, or the server unregistered, meanwhile
        members = None
        deadline = order.load_timeout or self.load_timeout
        try:
            if order.plan is not None:
                state, message, members = await asyncio.wait_for(
                    self.ensembles.load(order.plan, server, order.shares_repository), deadline
                )
            else:
                state, message = await asyncio.wait_for(
                    self._load_model(order, server, deadline + _RPC_SLACK), deadline
                )
        except TimeoutError:
            # Triton may be stuck in the model's initialize(): the server is not
            # at fault and keeps serving the rest.
            state, message = FAILED, f"load did not finish in {deadline:g} s"
            self._in_background(
                self.placer.unload_unused(server, set(order.models), except_deployment=name)
            )
        await in_thread(targets.set_state)(name, server, state, message, members)
        # An unreachable server is the health loop's to watch; a refused load is ours.
        self._count_load(name, server, failed=state == FAILED)
        # Only to show what is loaded; the caller holds the deployment's locks,
        # so the reconciler must not be called from here.
        await self.fleet.refresh(server, notify=False)

    def _may_retry(self, name: str, server: str) -> bool:
        failed = self._failed_loads.get((name, server))
        return failed is None or self._clock() >= failed[1]

    def _count_load(self, name: str, server: str, *, failed: bool) -> None:
        """Remember a failed load of ``name`` on ``server`` (the reconciler then waits
        ``retry``'s delay, doubling, before the next); forget it once one works."""
        if not failed:
            self._failed_loads.pop((name, server), None)
            return
        failures = self._failed_loads.get((name, server), (0, 0.0))[0] + 1
        self._failed_loads[(name, server)] = (
            failures,
            self._clock() + self._retry.delay(failures),
        )

    async def _load_model(self, order: _LoadOrder, server: str, timeout: float) -> tuple[str, str]:
        """Load a model deployment; return its target's (state, message)."""
        version = order.version
        assert version is not None
        try:
            client = await self.fleet.client(server)
            files = None
            if order.shares_repository:
                await in_thread(targets.place_for_shared_load)(self.repository, version)
            else:
                files = await in_thread(targets.files_to_push)(self.repository, version)
            load = client.load(
                order.name, config_json=order.config_json, files=files, timeout=timeout
            )
            probe = self.fleet.resident_probe(server)
            if version.memory.measured or probe is None:
                await load
                if not version.memory.measured:
                    await self._record_memory(version, server, client)
            else:
                async with self._measuring[server]:
                    before = await in_thread(probe)()
                    await load
                    grown = await in_thread(probe)() - before
                    await self._record_memory(version, server, client, grown)
        except Unavailable as error:
            return UNREACHABLE, error.message
        except MLServeError as error:
            return FAILED, error.message
        return READY, ""

    async def _record_memory(
        self, version: VersionRecord, server: str, client: Any, grown: int = 0
    ) -> None:
        """Record the memory ``version`` was seen to take on ``server`` just after its
        first load: what Triton reports for it, else ``grown`` (the Triton process
        tree's resident memory across the load), when either is above 0."""
        try:
            reported = await client.reported_memory(version.model, version.version)
        except MLServeError as error:  # the load worked; the measurement waits for the next
            log.warning("could not measure %s on %s: %s", version.model, server, error.message)
            return
        size, how = (reported, "triton") if reported > 0 else (grown, "rss")
        if size <= 0:
            return
        try:
            first = await in_thread(record_measurement)(
                version.model, version.version, size, server, how
            )
        except MLServeError as error:  # deleted meanwhile: the load itself worked
            log.warning("could not record %s's memory: %s", version.model, error.message)
            return
        if first:
            log.info(
                "%s v%d measured on %s: %d bytes (%s; estimated %d)",
                version.model, version.version, server, size, how, version.memory.estimated,
            )  # fmt: skip

    def _load_order(self, name: str, server: str) -> _LoadOrder | None:
        """What loading ``name`` on ``server`` takes (blocking)."""
        row = _row_or_none(name)
        shares = targets.shares_repository(server)
        if row is None or shares is None:
            return None
        if row.pipeline_id is not None:
            recorded = {m.model.name: (m.version, m.config) for m in row.members}
            return _LoadOrder(
                name,
                shares,
                plan=ensembles.recorded_plan(name, row.version, recorded),
                load_timeout=row.load_timeout,
                models=(name, *recorded),
            )
        record = find_version(name, row.version)
        config = _deployed_config(record, row.serving)
        return _LoadOrder(
            name,
            shares,
            version=record,
            config_json=modelconfig.to_json(config),
            load_timeout=row.load_timeout,
            models=(name,),
        )


class DeploymentUsage:
    """Answers the catalog's questions before it deletes (``catalog.models.Usage``)."""

    def refuse_if_deployed(self, model: str, version: int | None = None) -> None:
        """FailedPrecondition when ``model`` (at ``version``; None: any) is deployed on
        its own or run by a deployed pipeline (blocking)."""
        for pipeline, used in _pipelines_running(model):
            if version is None or used == version:
                raise FailedPrecondition(
                    f"version {used} of {model!r} is used by deployed pipeline "
                    f"{pipeline!r}; undeploy the pipeline first"
                )
        row = _row_or_none(model)
        if row is not None and row.model_id is not None and version in (None, row.version):
            raise FailedPrecondition(
                f"version {row.version} of {model!r} is deployed (deployment "
                f"{row.name!r}); undeploy it first"
            )

    def deployed_version(self, name: str) -> int:
        """The version deployment ``name`` runs, 0 when there is none (blocking)."""
        row = _row_or_none(name)
        return 0 if row is None else int(row.version)


# --- the store (blocking) -----------------------------------------------------------


def _row_or_none(name: str) -> Any:
    return tables.Deployment.get_or_none(tables.Deployment.name == name)


def _record_or_none(name: str) -> DeploymentRecord | None:
    row = _row_or_none(name)
    return None if row is None else _record(row)


def _deployed_thing(row: Any) -> Any:
    """The model or pipeline row that deployment ``row`` deploys."""
    return row.model if row.model_id is not None else row.pipeline


def _visible_record(name: str) -> DeploymentRecord:
    """Deployment ``name``, or NotFound alike when absent or what it deploys is hidden."""
    row = _row_or_none(name)
    if row is None or not rules.can_see_model(rules.caller(), _deployed_thing(row)):
        raise NotFound(f"deployment {name!r} does not exist")
    return _record(row)


def _writable_models(name: str) -> list[str]:
    """The Triton models of deployment ``name`` if the caller may undeploy it."""
    row = _row_or_none(name)
    if row is None or not rules.can_see_model(rules.caller(), _deployed_thing(row)):
        raise NotFound(f"deployment {name!r} does not exist")
    rules.check_model_write(_deployed_thing(row))
    return [name, *_member_names(row)]


def _member_names(row: Any) -> list[str]:
    return [member.model.name for member in row.members]


def _deployable_model(name: str) -> Any:
    """The row of model ``name`` if the caller may deploy it.

    A pipeline's name is refused first, saying how pipelines are deployed.
    """
    check_name(name, "model name")
    try:
        refuse_pipeline_name(name)
    except AlreadyExists:
        raise InvalidArgument(
            f"{name!r} is a pipeline, not a model: deploy it with CreateDeployment naming "
            f"it in 'pipeline' (mlserve pipelines deploy {name})"
        ) from None
    return writable_model(name)


def _pipelines_running(model: str) -> list[tuple[str, int]]:
    """(pipeline, member version) of each deployed pipeline that runs ``model``."""
    query = (
        tables.DeploymentMember.select(tables.DeploymentMember.version, tables.Deployment.name)
        .join_from(tables.DeploymentMember, tables.Deployment)
        .where(tables.DeploymentMember.model == model_row(model))
        .order_by(tables.Deployment.name)
    )
    return [(row.deployment.name, row.version) for row in query]


def _deployed_config(record: VersionRecord, serving_json: str, field: str = "serving") -> Any:
    """The config a model deployment loads ``record`` with: pinned to its version,
    the deployment's serving settings (``serving_json``) applied."""
    config = modelconfig.for_version(modelconfig.parse(record.config, record.model), record.version)
    return serving.apply(config, ServingSettings.from_json(serving_json), field)


def _rollout(
    model: str, version: int, servers: Sequence[str], settings: ServingSettings | None
) -> _Rollout | None:
    """What loading ``version`` beside the version ``model``'s deployment serves on
    ``servers`` takes; None when there is nothing to load beside (``_load_beside``)."""
    row = _row_or_none(model)
    if row is None or row.model_id is None or row.version == version:
        return None
    serving_now = [
        target.server
        for target in targets.of(row)
        if target.state == READY and target.server in servers
    ]
    if not serving_now:
        return None
    old = find_version(model, row.version)
    new = find_version(model, version)
    new_serving = row.serving if settings is None else settings.to_json()
    new_config = _deployed_config(new, new_serving)
    if not modelconfig.same_but_versions(_deployed_config(old, row.serving), new_config):
        return None
    both = modelconfig.for_versions(new_config, [old.version, new.version])
    shares = [(server, bool(targets.shares_repository(server))) for server in serving_now]
    return _Rollout(tuple(shares), (old, new), modelconfig.to_json(both))


def _write_model(
    model: str,
    version: int,
    servers: Sequence[str],
    settings: ServingSettings | None,
    serving_both: Sequence[str] = (),
    load_timeout: float = 0.0,
    loading: Loading = EAGERLY,
) -> list[str]:
    """Make the store say "model at version on servers"; return the servers it named
    before. Targets on ``serving_both`` stay READY: the new version serves there."""
    with db.database.atomic():
        row = _row_or_none(model)
        if row is None:
            row = tables.Deployment.create(
                name=model,
                model=model_row(model),
                version=version,
                serving=(settings or NO_SETTINGS).to_json(),
                load_timeout=load_timeout,
                loading=loading.mode,
                min_copies=loading.min_copies,
                max_copies=loading.max_copies,
                idle_unload_after=loading.idle_unload_after,
                pinned=loading.pinned,
            )
            new_version = False
        else:
            new_version = row.version != version
            if settings is not None:
                row.serving = settings.to_json()
            row.version = version
            row.update_time = db.utcnow()
            row.save()
        return targets.write(row, servers, reset=new_version, still_ready=serving_both)


def _write_pipeline(plan: EnsemblePlan, servers: Sequence[str], load_timeout: float) -> None:
    with db.database.atomic():
        row = tables.Deployment.create(
            name=plan.name,
            pipeline=writable_pipeline(plan.name),
            version=plan.version,
            load_timeout=load_timeout,
        )
        for member in plan.members.values():
            tables.DeploymentMember.create(
                deployment=row,
                model=model_row(member.model),
                version=member.version,
                config=modelconfig.render(member.config),
            )
        targets.write(row, servers, reset=False, members=plan.pending())


def _plan(pipeline: str, version: int) -> EnsemblePlan:
    """Resolve member versions, re-check the DAG, refuse clashes."""
    row = version_row(pipeline, version)
    spec = Spec.from_json(row.spec)
    deployed = {
        found.name: found.version
        for found in tables.Deployment.select().where(
            tables.Deployment.name.in_([step.model for step in spec.steps])
            & tables.Deployment.model.is_null(False)
        )
    }
    members = member_configs(spec, deployed)
    plan = ensembles.make_plan(pipeline, row.version, spec, members, check(spec, members))
    for member in plan.members.values():
        _refuse_clash(pipeline, member)
    return plan


def _refuse_clash(pipeline: str, member: Member) -> None:
    """A member model already loaded with another version or config cannot be shared."""
    config_text = modelconfig.render(member.config)
    own = _row_or_none(member.model)
    if own is not None and own.model_id is not None:
        own_config = _deployed_config(
            find_version(member.model, own.version), own.serving, f"deployment {own.name!r}"
        )
        if own.version != member.version or modelconfig.render(own_config) != config_text:
            raise FailedPrecondition(
                f"pipeline {pipeline!r} needs model {member.model!r} at version "
                f"{member.version} with its step's settings, but the model is deployed on its "
                f"own at version {own.version}: undeploy it, or pin the step to that version"
            )
    other = (
        tables.DeploymentMember.select(tables.DeploymentMember, tables.Deployment)
        .join_from(tables.DeploymentMember, tables.Deployment)
        .where(tables.DeploymentMember.model == model_row(member.model))
        .order_by(tables.Deployment.name)
        .first()
    )
    if other is not None and other.config != config_text:
        raise FailedPrecondition(
            f"model {member.model!r} is a member of deployed pipeline "
            f"{other.deployment.name!r} at version {other.version} with other "
            "settings; Triton serves one config per model"
        )


def _on_server(server: str) -> list[_OnServer]:
    """The deployments targeting ``server``, model deployments first (pipelines may
    share their members)."""
    found = []
    for name, state in targets.names_on(server):
        row = _row_or_none(name)
        if row is not None:
            is_pipeline = row.pipeline_id is not None
            position = [target.server for target in targets.of(row)].index(server)
            found.append(
                _OnServer(
                    name,
                    row.version,
                    is_pipeline,
                    state,
                    (name, *_member_names(row)),
                    on_demand_here=_loading(row).evictable(position),
                )
            )
    return found


def _delete_row(name: str) -> tuple[list[str], list[str]]:
    """Delete deployment ``name``; return its servers and its Triton models."""
    with db.database.atomic():
        row = _row_or_none(name)
        if row is None:
            raise NotFound(f"deployment {name!r} does not exist")
        servers = [target.server for target in targets.of(row)]
        models = [name, *_member_names(row)]
        row.delete_instance(recursive=True)
    return servers, models


def _records_after(after: str | None, limit: int) -> list[DeploymentRecord]:
    query = (
        tables.Deployment.select(tables.Deployment).order_by(tables.Deployment.name).limit(limit)
    )
    if after is not None:
        query = query.where(tables.Deployment.name > after)
    visible = rules.visible_name_query()
    if visible is not None:  # a deployment is named after its model or pipeline
        query = query.where(tables.Deployment.name.in_(visible))
    return [_record(row) for row in query]


def _record(row: Any) -> DeploymentRecord:
    is_model = row.model_id is not None
    return DeploymentRecord(
        name=row.name,
        model=row.name if is_model else "",
        pipeline="" if is_model else row.name,
        version=row.version,
        targets=targets.of(row),
        create_time=row.create_time,
        update_time=row.update_time,
        serving=ServingSettings.from_json(row.serving),
        load_timeout=row.load_timeout,
        loading=_loading(row),
    )


def _loading(row: Any) -> Loading:
    return Loading(row.loading, row.min_copies, row.max_copies, row.idle_unload_after, row.pinned)


def _loading_of(name: str) -> Loading:
    """Deployment ``name``'s loading; eager when it is not deployed."""
    row = _row_or_none(name)
    return EAGERLY if row is None else _loading(row)


def _warm_targets(name: str) -> list[str]:
    """The servers deployment ``name`` is loaded on now: every target when eager; on
    demand its first min_copies targets and those where a copy is READY."""
    row = _row_or_none(name)
    if row is None:
        return []
    loading = _loading(row)
    found = targets.of(row)
    keep = loading.warm_positions(len(found))
    return [t.server for i, t in enumerate(found) if i < keep or t.state == READY]


def _pinned_needs(except_deployment: str) -> dict[str, list[Need]]:
    """Per server, the needs of the pinned model deployments but
    ``except_deployment`` targeting it."""
    rows = tables.Deployment.select().where(
        tables.Deployment.pinned
        & tables.Deployment.model.is_null(False)
        & (tables.Deployment.name != except_deployment)
    )
    placed = [(row.name, row.version, targets.of(row)) for row in rows]
    needs = memory_needs((name, version) for name, version, _ in placed)
    pinned: defaultdict[str, list[Need]] = defaultdict(list)
    for name, version, found in placed:
        need = needs.get((name, version))
        for target in found:
            if need is not None:
                pinned[target.server].append(targets.need_of(need))
    return dict(pinned)


def _could_not_load(model: str) -> str:
    """What an inference caller hears of a cold load that failed: no server name and
    no Triton text (they are in the log and the deployment's targets)."""
    return (
        f"on-demand model {model!r} could not be loaded: retry later, or ask its owner "
        "to check the deployment's targets (GetDeployment)"
    )


def _cold_start_order(name: str) -> _ColdStart | None:
    """What a cold start of ``name`` needs to know; None unless it is an on-demand
    model deployment."""
    row = _row_or_none(name)
    if row is None or row.model_id is None or not _loading(row).on_demand:
        return None
    found = targets.of(row)
    loading = _loading(row)
    ready = [t.server for t in found if t.state == READY]
    allowed = loading.copies_allowed(len(found))
    return _ColdStart(
        name,
        tuple(t.server for t in found),
        targets.need_of(find_version(name, row.version).memory),
        bool(ready) or len(ready) >= allowed,
    )


def _scale_up_candidates() -> list[_ScaleUp]:
    """Every on-demand model deployment with a READY copy and room for more copies."""
    rows = tables.Deployment.select().where(
        (tables.Deployment.loading == "on_demand") & tables.Deployment.model.is_null(False)
    )
    return [order for row in rows if (order := _scale_up_order(row)) is not None]


def _scale_up_order_of(name: str) -> _ScaleUp | None:
    """``_scale_up_order`` of deployment ``name`` as the store has it now."""
    row = _row_or_none(name)
    return None if row is None else _scale_up_order(row)


def _scale_up_order(row: Any) -> _ScaleUp | None:
    """What scaling up deployment ``row`` reads; None unless it is an on-demand model
    deployment with a READY copy and fewer than it may have."""
    if row.model_id is None or not _loading(row).on_demand:
        return None
    on = targets.of(row)
    loaded = frozenset(t.server for t in on if t.state == READY)
    allowed = _loading(row).copies_allowed(len(on))
    if not loaded or len(loaded) >= allowed:
        return None
    need = targets.need_of(find_version(row.name, row.version).memory)
    return _ScaleUp(row.name, tuple(t.server for t in on), loaded, allowed, need)


def _held_on(
    servers: Sequence[str],
) -> tuple[dict[str, list[_Held]], dict[tuple[str, int], Need]]:
    """Per server of ``servers``, the models loaded there, each with whether it may be
    evicted; and their memory needs by (model, version)."""
    loadings = {row.name: (row, _loading(row)) for row in tables.Deployment.select()}
    held: defaultdict[str, list[_Held]] = defaultdict(list)
    for entry in targets.served():
        if entry.server not in servers or not entry.ready:
            continue
        row, loading = loadings[entry.deployment]
        found = targets.of(row)
        position = [t.server for t in found].index(entry.server)
        evictable = entry.model == entry.deployment and loading.evictable(position)
        held[entry.server].append(
            _Held(
                entry.deployment,
                entry.model,
                entry.version,
                evictable,
                _epoch_seconds(found[position].update_time),
            )
        )
    needs = memory_needs((h.model, h.version) for found in held.values() for h in found)
    return dict(held), {key: targets.need_of(need) for key, need in needs.items()}


def _idle_candidates() -> list[_IdleCandidate]:
    """Every READY on-demand copy that may be unloaded when idle."""
    rows = tables.Deployment.select().where(
        (tables.Deployment.loading == "on_demand") & (tables.Deployment.idle_unload_after > 0)
    )
    found = []
    for row in rows:
        loading = _loading(row)
        for position, target in enumerate(targets.of(row)):
            if target.state == READY and loading.evictable(position):
                found.append(
                    _IdleCandidate(
                        row.name,
                        target.server,
                        loading.idle_unload_after,
                        _epoch_seconds(target.update_time),
                    )
                )
    return found


def _epoch_seconds(naive_utc: dt.datetime) -> float:
    """A time the store keeps (naive UTC, ``db.utcnow``) in seconds since the epoch."""
    return naive_utc.replace(tzinfo=dt.timezone.utc).timestamp()
