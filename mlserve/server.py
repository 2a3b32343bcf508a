"""Assembles one MLServe process: store, domain, gRPC services, health,
reflection, the embedded Triton, the health and reconcile loops, and graceful
shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import os
import secrets
import signal
import socket
from dataclasses import dataclass

import grpc
import peewee as pw
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry, start_http_server

from mlserve import __version__
from mlserve.access import ADMIN_KEY_FILE, Access
from mlserve.access.apps import Apps
from mlserve.access.audit import AuditLog
from mlserve.access.tokens import OidcConfig, TokenVerifier
from mlserve.access.users import Users
from mlserve.access.workspaces import Workspaces
from mlserve.api import reflection
from mlserve.api.apps import AppService
from mlserve.api.assays import SERVICE as ASSAY_SERVICE
from mlserve.api.assays import AssayService
from mlserve.api.audit import AuditService
from mlserve.api.datasets import DatasetService
from mlserve.api.deployments import DeploymentService
from mlserve.api.explain import ExplainService
from mlserve.api.generic_server import GenericHandlersOnly
from mlserve.api.inference import SERVICE as INFERENCE_SERVICE
from mlserve.api.inference import InferenceGateway
from mlserve.api.inference_log import SERVICE as INFERENCE_LOG_SERVICE
from mlserve.api.inference_log import InferenceLogService
from mlserve.api.instance import InstanceDescription, InstanceService
from mlserve.api.interceptor import (
    MANAGEMENT_MESSAGE_BYTES,
    UPLOAD_FRAMING_BYTES,
    CallGuard,
    MessageLimits,
)
from mlserve.api.models import ModelService
from mlserve.api.pipelines import PipelineService
from mlserve.api.servers import ServerService
from mlserve.api.training import TrainingService
from mlserve.api.users import UserService
from mlserve.api.workspaces import WorkspaceService
from mlserve.assays.scheduler import AssayScheduler
from mlserve.assays.service import Assays
from mlserve.catalog.artifacts import Artifacts
from mlserve.catalog.datasets import Datasets
from mlserve.catalog.models import Models, adopt_unowned_models
from mlserve.catalog.pipelines import Pipelines
from mlserve.catalog.uploads import UploadLimits, Uploads
from mlserve.catalog.versions import Versions
from mlserve.core.errors import MLServeError
from mlserve.core.paging import PageTokens
from mlserve.deploy.fleet import Fleet
from mlserve.deploy.health import HealthLoop, Hook
from mlserve.deploy.lifecycle import DEFAULT_SERVER, Deployments, DeploymentUsage
from mlserve.deploy.placement import MAX_HOST_MEMORY_BYTES, Capacity
from mlserve.gateway.router import Router
from mlserve.gateway.stats import InferenceStats
from mlserve.gateway.triton_share import TritonShare
from mlserve.monitor import InferenceLog, LogSettings
from mlserve.monitor.explain import Explainer
from mlserve.monitor.store import LogStore
from mlserve.settings import Settings
from mlserve.storage import db, tables
from mlserve.storage.blobs import Blobs
from mlserve.storage.db import in_thread
from mlserve.storage.repository import LocalRepository, Repository
from mlserve.storage.s3 import S3Repository
from mlserve.training.jobs import TrainingJobs
from mlserve.training.runner import JobStatus, LocalRunner, RunnerLimits
from mlserve.triton.host import host_capacity, tree_resident_bytes
from mlserve.triton.launcher import EmbeddedTriton, bundled_backends
from mlserve.triton.sandbox import Sandbox
from mlserve.triton.supervisor import LivenessProbing, TritonSupervisor
from mlserve.workers import MULTIPROCESS_VARIABLE, MergedWorkers, report_ready
from mlserve_api.v1 import (
    app_pb2,
    app_pb2_grpc,
    assay_pb2_grpc,
    audit_pb2,
    audit_pb2_grpc,
    dataset_pb2,
    dataset_pb2_grpc,
    deployment_pb2,
    deployment_pb2_grpc,
    explain_pb2,
    explain_pb2_grpc,
    inference_log_pb2_grpc,
    instance_pb2,
    instance_pb2_grpc,
    model_pb2,
    model_pb2_grpc,
    pipeline_pb2,
    pipeline_pb2_grpc,
    server_pb2,
    server_pb2_grpc,
    training_pb2,
    training_pb2_grpc,
    user_pb2,
    user_pb2_grpc,
    workspace_pb2,
    workspace_pb2_grpc,
)

log = logging.getLogger(__name__)

SERVICES = (
    INFERENCE_SERVICE,
    model_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name,
    server_pb2.DESCRIPTOR.services_by_name["ServerService"].full_name,
    deployment_pb2.DESCRIPTOR.services_by_name["DeploymentService"].full_name,
    user_pb2.DESCRIPTOR.services_by_name["UserService"].full_name,
    workspace_pb2.DESCRIPTOR.services_by_name["WorkspaceService"].full_name,
    app_pb2.DESCRIPTOR.services_by_name["AppService"].full_name,
    audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name,
    pipeline_pb2.DESCRIPTOR.services_by_name["PipelineService"].full_name,
    INFERENCE_LOG_SERVICE,
    ASSAY_SERVICE,
    instance_pb2.DESCRIPTOR.services_by_name["InstanceService"].full_name,
    dataset_pb2.DESCRIPTOR.services_by_name["DatasetService"].full_name,
    training_pb2.DESCRIPTOR.services_by_name["TrainingService"].full_name,
    explain_pb2.DESCRIPTOR.services_by_name["ExplainService"].full_name,
)


@dataclass
class Domain:
    """The domain objects one process shares between its services."""

    repository: Repository
    models: Models
    versions: Versions
    artifacts: Artifacts
    uploads: Uploads
    fleet: Fleet
    deployments: Deployments
    access: Access
    router: Router
    stats: InferenceStats
    users: Users
    workspaces: Workspaces
    apps: Apps
    audit: AuditLog
    pipelines: Pipelines
    inference_log: InferenceLog
    datasets: Datasets
    assays: Assays
    tokens: PageTokens


def token_verifier(settings: Settings) -> TokenVerifier | None:
    """OIDC sign-in for the issuers ``settings`` trust, or None (API keys only)."""
    if not settings.oidc_issuer:
        return None
    return TokenVerifier(
        OidcConfig(
            issuers=settings.oidc_issuer,
            audience=settings.oidc_audience,
            user_claim=settings.oidc_user_claim,
            roles_claim=settings.oidc_roles_claim,
            workspaces_claim=settings.oidc_workspaces_claim,
            fetch_timeout=settings.oidc_fetch_timeout,
        )
    )


def build_domain(settings: Settings) -> Domain:
    primary = is_primary(settings)
    tables.connect(settings.database_url)
    secret = db.run(tables.get_or_create_setting, "page_token_secret", _random_secret)
    tokens = PageTokens(secret)
    repository = open_repository(settings)
    blobs = Blobs(repository)
    if primary:  # the others start once it serves: their sweep could race its uploads
        db.run(blobs.sweep)
    usage = DeploymentUsage()
    versions = Versions(repository, tokens, blobs, usage)
    artifacts = Artifacts(repository, tokens, blobs)
    limits = UploadLimits(
        max_upload_bytes=settings.max_upload_bytes,
        max_staging_bytes=settings.max_staging_bytes,
        expire_after=dt.timedelta(seconds=settings.upload_expiry),
        allowed_backends=frozenset(settings.allowed_backends or bundled_backends()),
    )
    datasets = Datasets(repository, tokens, blobs)
    uploads = Uploads(repository, versions, artifacts, blobs, limits, datasets)
    fleet = Fleet(tokens)
    stats = InferenceStats(worker=worker_label(settings))
    audit = AuditLog(tokens)
    deployments = Deployments(
        fleet,
        repository,
        tokens,
        load_timeout=settings.load_timeout,
        headroom=settings.placement_headroom,
        registry=stats.registry,
        audit=audit,
    )
    fleet.on_change(deployments.server_changed)
    router = Router(fleet)
    deployments.on_change(router.reload)
    inference_log = InferenceLog(
        LogSettings(
            LogStore.at(settings.log_location),
            queue_size=settings.log_queue_size,
            flush_interval=settings.log_flush_interval,
            retention_seconds=settings.log_retention_seconds,
            retention_bytes=settings.log_retention_bytes,
            file_tag="" if settings.worker_slot is None else f"w{settings.worker_slot.index}-",
            housekeeping=primary,
        ),
        stats.registry,
        tokens,
    )
    return Domain(
        repository,
        Models(repository, tokens, blobs, usage),
        versions,
        artifacts,
        uploads,
        fleet,
        deployments,
        Access(tokens=token_verifier(settings)),
        router,
        stats,
        Users(tokens),
        Workspaces(tokens),
        Apps(tokens),
        audit,
        Pipelines(tokens, usage),
        inference_log,
        datasets,
        Assays(inference_log.store, tokens, repository),
        tokens,
    )


def is_primary(settings: Settings) -> bool:
    """Whether this process runs what runs once: alone, or worker 0 of ``--workers``."""
    return settings.worker_slot is None or settings.worker_slot.primary


def worker_label(settings: Settings) -> str:
    """This process's ``worker`` label in the metrics: its index among the workers."""
    return "0" if settings.worker_slot is None else str(settings.worker_slot.index)


def open_repository(settings: Settings) -> Repository:
    """The repository ``--storage`` names, checked reachable (StartupFailed if not)."""
    if settings.bucket is None:
        return LocalRepository(settings.repository_dir, settings.staging_dir, settings.blobs_dir)
    repository = S3Repository(settings.bucket.resolved(os.environ), settings.staging_dir)
    try:
        repository.check()
    except MLServeError as error:
        raise StartupFailed(f"--storage: {error.message}") from None
    log.info("versions and contents in the %s", repository.describe())
    return repository


def _random_secret() -> bytes:
    return secrets.token_bytes(32)


class StartupFailed(Exception):
    """MLServe cannot start; the message says why and where to look."""


class MLServe:
    """One running MLServe: ``await start()``, then ``await stop()``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.port = 0
        self._server: aio.Server | None = None
        self._health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self._triton: EmbeddedTriton | None = None
        self._loops: list[asyncio.Task[None]] = []
        self._domain: Domain | None = None
        self._training: TrainingJobs | None = None
        self._runner: LocalRunner | None = None

    async def start(self) -> None:
        settings = self.settings
        primary = is_primary(settings)
        # Decided first: without a sandbox MLServe refuses to start at all
        # rather than serve with a Triton that can read its secrets. Only one
        # process owns the embedded Triton; other workers route to it.
        sandbox = (
            await in_thread(Sandbox.find)(unsafe_shared_user=settings.unsafe_shared_user)
            if settings.embedded_triton and primary
            else None
        )
        settings.home.mkdir(parents=True, exist_ok=True)
        domain = self._domain = await in_thread(build_domain)(settings)
        key_file = await in_thread(domain.access.bootstrap_admin_key)(
            settings.home, adopt_unowned_models
        )
        if key_file is not None:
            log.info("wrote the first admin key to %s (mode 0600)", key_file)
        await self._start_training(domain, sandbox)
        self._server = self._grpc_server(domain)
        if settings.tls_cert is not None and settings.tls_key is not None:
            credentials = grpc.ssl_server_credentials(
                [(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())]
            )
            self.port = self._server.add_secure_port(settings.listen, credentials)
        else:
            self.port = self._server.add_insecure_port(settings.listen)
        if self.port == 0:
            raise RuntimeError(f"could not listen on {settings.listen}")
        if primary:
            # Health answers (NOT_SERVING) while the embedded Triton starts.
            await self._server.start()
            await self._set_health(False)
        log.info("MLServe listening on %s (TLS %s)", self.address, self._tls_word)
        log.info("state in %s (%s)", settings.home, db.describe(db.database.obj))
        if primary:
            # First the reconciler, so that what the first checks ask for is done.
            task = asyncio.create_task(domain.fleet.reconciler.run(), name="reconciler")
            self._loops.append(task)
        if sandbox is not None:
            await self._start_embedded_triton(domain, sandbox)
        await domain.router.reload()
        await domain.inference_log.policies.reload()
        await in_thread(domain.inference_log.start)()
        await domain.fleet.refresh_all()
        if not primary:
            # Another worker takes connections only once it can route them.
            await self._server.start()
        await self._update_health()
        if settings.metrics_listen and primary:
            host, _, port = settings.metrics_listen.rpartition(":")
            start_http_server(int(port), host or "127.0.0.1", registry=metrics_registry(domain))
            log.info("Prometheus metrics on http://%s/metrics", settings.metrics_listen)
        hooks: list[Hook] = [
            self._update_health,
            domain.stats.flush,
            domain.router.reload,
            domain.inference_log.policies.reload,
        ]
        if primary:
            assay_scheduler = AssayScheduler(
                domain.assays,
                domain.stats.registry,
                # A window is scored once the log's writer has flushed its last calls.
                settle=dt.timedelta(seconds=settings.log_flush_interval + 1),
            )
            task = asyncio.create_task(assay_scheduler.run(), name="assay-scheduler")
            self._loops.append(task)
            # The share needs the gateway's latency of the same calls: with --workers
            # the other workers' calls are not in this process's totals.
            share = TritonShare(
                domain.stats.registry, domain.stats if settings.workers == 1 else None
            )
            hooks.append(functools.partial(share.poll, domain.router, domain.fleet))
            # After the poll: hot on-demand models gain a copy from this round's queue times.
            hooks.append(
                functools.partial(
                    self._scale_up, share, domain.deployments, settings.scale_up_queue_ms
                )
            )
            # One worker unloads idle on-demand copies; what it reads is shared by
            # every process (Triton's last_inference, the busy marks).
            hooks.append(domain.deployments.unload_idle)
            sweep = expire_uploads(domain.uploads, settings.upload_sweep_interval)
            self._loops.append(asyncio.create_task(sweep, name="upload-expiry"))
        # Routes: deployments changed through another replica (or worker) on the same
        # database. Policies likewise; the log's directory is probed for its health.
        health_loop = HealthLoop(domain.fleet, settings.health_interval, hooks=hooks)
        self._loops.append(asyncio.create_task(health_loop.run(), name="health-loop"))
        # Every process renews the busy marks of its own requests in flight.
        self._loops.append(asyncio.create_task(domain.deployments.busy.run(), name="busy-marks"))
        log.info("%s", self.ready_line())
        if settings.worker_slot is not None:
            report_ready(settings.worker_slot.ready_fd, self.port)

    @staticmethod
    async def _scale_up(share: TritonShare, deployments: Deployments, threshold_ms: float) -> None:
        await deployments.scale_up(share.queue_growth(), threshold_ms)

    async def _start_training(self, domain: Domain, sandbox: Sandbox | None) -> None:
        """The local training runner, in the sandbox Triton uses (found here when there is
        no embedded Triton); without one, TrainingService answers FAILED_PRECONDITION."""
        if sandbox is None:
            try:
                sandbox = await in_thread(Sandbox.find)()
            except MLServeError as error:
                log.warning("training jobs are off: %s", error)
                return
        if not sandbox.confined:
            log.warning("training jobs are off: they never run without the sandbox")
            return

        async def changed(status: JobStatus) -> None:
            assert self._training is not None
            await self._training.changed(status)

        def logged(job_id: str, line: str) -> None:
            assert self._training is not None
            self._training.logged(job_id, line)

        settings = self.settings
        self._runner = LocalRunner(
            sandbox,
            RunnerLimits(concurrent=settings.training_concurrency, queued=settings.training_queue),
            changed,
            logged,
            labels=frozenset(settings.training_labels),
            allow_network=settings.training_allow_network,
        )
        self._training = TrainingJobs(
            self._runner,
            domain.uploads,
            domain.repository,
            settings.storage_dir / "training",
            domain.tokens,
            instance=self.training_instance,
            limits=settings.training_limits,
        )
        interrupted = await self._training.recover()
        if interrupted:
            log.warning(
                "%d training jobs were queued or running when MLServe stopped: FAILED, "
                "interrupted by a restart (%s)",
                len(interrupted),
                ", ".join(interrupted),
            )
        self._training.start()
        self._runner.start()

    @property
    def instance_name(self) -> str:
        """This instance's name, as GetInstance tells callers."""
        return self.settings.instance_name or socket.gethostname()

    @property
    def training_instance(self) -> str:
        """The name this process's training jobs are recorded under: each of
        ``--workers`` runs the jobs created through it, so each has its own."""
        slot = self.settings.worker_slot
        return self.instance_name if slot is None else f"{self.instance_name} worker {slot.index}"

    def ready_line(self) -> str:
        """The one line that tells someone who just ran ``mlserve serve`` where things are."""
        settings = self.settings
        triton = f"; Triton's log {settings.triton_log}" if settings.embedded_triton else ""
        return (
            f"ready: serving on {self.address}, TLS {self._tls_word}; admin key in "
            f"{settings.home / ADMIN_KEY_FILE}; MLServe logs here{triton}"
        )

    @property
    def _tls_word(self) -> str:
        return "on" if self.settings.tls_cert is not None else "off"

    @property
    def address(self) -> str:
        host = self.settings.listen.rpartition(":")[0]
        return f"{host}:{self.port}"

    async def wait(self) -> None:
        assert self._server is not None
        await self._server.wait_for_termination()

    async def stop(self) -> None:
        log.info("shutting down: in-flight calls get %.0fs", self.settings.shutdown_grace)
        await self._health.enter_graceful_shutdown()
        for task in self._loops:
            task.cancel()
        for task in self._loops:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._training is not None:
            await self._training.stop()
        if self._server is not None:
            await self._server.stop(self.settings.shutdown_grace)
        if self._domain is not None:
            await self._domain.stats.flush()
            # Its requests are over: other processes may evict their models at once.
            try:
                await self._domain.deployments.busy.withdraw()
            except MLServeError as error:
                log.warning("busy marks left to expire: %s", error.message)
            # After the server: calls that finished in the grace period are logged too.
            await self._domain.inference_log.close()
            await self._domain.fleet.close()
        if self._triton is not None:
            await self._triton.stop()
            log.info("embedded Triton stopped")
        # No domain: start refused before the database was opened.
        if self._domain is not None and not db.database.is_closed():
            db.database.close()

    def _grpc_server(self, domain: Domain) -> aio.Server:
        limit = self.settings.max_message_bytes
        limits = MessageLimits(
            inference=limit,
            upload=min(limit, domain.uploads.limits.max_chunk_bytes + UPLOAD_FRAMING_BYTES),
            management=min(limit, MANAGEMENT_MESSAGE_BYTES),
        )
        guard = CallGuard(domain.access, domain.audit, limits, self._anonymous_gateway())
        server = GenericHandlersOnly(
            aio.server(
                interceptors=[guard],
                options=[
                    ("grpc.max_receive_message_length", limit),
                    ("grpc.max_send_message_length", limit),
                    # Several workers share the port; one process alone must own it.
                    ("grpc.so_reuseport", int(self.settings.worker_slot is not None)),
                ],
            )
        )
        # First, so that inference calls find their handler at the first lookup.
        gateway = InferenceGateway(
            domain.router,
            domain.fleet,
            domain.deployments,
            domain.stats,
            domain.access,
            domain.inference_log,
        )
        server.add_generic_rpc_handlers((gateway.handler(),))
        model_pb2_grpc.add_ModelServiceServicer_to_server(
            ModelService(
                domain.models,
                domain.versions,
                domain.artifacts,
                domain.uploads,
                domain.stats,
                domain.deployments,
            ),
            server,
        )
        server_pb2_grpc.add_ServerServiceServicer_to_server(
            ServerService(domain.fleet, domain.deployments), server
        )
        deployment_pb2_grpc.add_DeploymentServiceServicer_to_server(
            DeploymentService(domain.deployments, domain.inference_log, domain.stats),
            server,
        )
        pipeline_pb2_grpc.add_PipelineServiceServicer_to_server(
            PipelineService(domain.pipelines, lambda: self.address), server
        )
        user_pb2_grpc.add_UserServiceServicer_to_server(UserService(domain.users), server)
        workspace_pb2_grpc.add_WorkspaceServiceServicer_to_server(
            WorkspaceService(domain.workspaces), server
        )
        app_pb2_grpc.add_AppServiceServicer_to_server(AppService(domain.apps), server)
        audit_pb2_grpc.add_AuditServiceServicer_to_server(AuditService(domain.audit), server)
        inference_log_pb2_grpc.add_InferenceLogServiceServicer_to_server(
            InferenceLogService(domain.inference_log), server
        )
        assay_pb2_grpc.add_AssayServiceServicer_to_server(AssayService(domain.assays), server)
        instance_pb2_grpc.add_InstanceServiceServicer_to_server(
            InstanceService(self._description()), server
        )
        dataset_pb2_grpc.add_DatasetServiceServicer_to_server(
            DatasetService(domain.datasets, domain.uploads), server
        )
        training_pb2_grpc.add_TrainingServiceServicer_to_server(
            TrainingService(self._training), server
        )
        explain_pb2_grpc.add_ExplainServiceServicer_to_server(
            ExplainService(Explainer(gateway.forwarder, domain.repository, domain.inference_log)),
            server,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable(server, [*SERVICES, health.SERVICE_NAME])
        return server

    def _description(self) -> InstanceDescription:
        """What GetInstance says: a feature is true only when built and switched on."""
        settings = self.settings
        features = {
            "tls": settings.tls_cert is not None,
            "postgresql": isinstance(db.database.obj, pw.PostgresqlDatabase),
            "oidc": bool(settings.oidc_issuer),
            "metrics": bool(settings.metrics_listen),
            "embedded_triton": settings.embedded_triton,
            "pipelines": True,
            "inference_log": INFERENCE_LOG_SERVICE in SERVICES,
            "datasets": "mlserve.v1.DatasetService" in SERVICES,
            "s3_storage": settings.bucket is not None,
            "assays": True,
            "explain": True,
            # Jobs run only in the sandbox; without one the runner is never made.
            "training": self._runner is not None,
        }
        return InstanceDescription(
            name=self.instance_name,
            version=__version__,
            oidc_issuers=settings.oidc_issuer,
            oidc_audience=settings.oidc_audience,
            features=features,
        )

    def _anonymous_gateway(self) -> bool:
        if not self.settings.bench_anonymous_gateway:
            return False
        host = self.settings.listen.rpartition(":")[0]
        if host not in ("127.0.0.1", "localhost", "[::1]"):
            raise RuntimeError("--bench-anonymous-gateway is allowed only on a loopback address")
        log.warning("BENCHMARK MODE: gateway calls without a key are served unauthenticated")
        return True

    async def _start_embedded_triton(self, domain: Domain, sandbox: Sandbox) -> None:
        """Start the embedded Triton and supervise it from then on.

        A Triton that does not come up at MLServe's own start is not retried
        (that is nearly always a flag, a library or the sandbox, which a retry
        will not fix): StartupFailed, and ``mlserve serve`` exits non-zero. One
        that exits later is restarted by the supervisor, with back-off, for good.
        """
        settings = self.settings
        self._triton = EmbeddedTriton(
            settings.repository_dir,
            settings.home / "triton",
            log_path=settings.triton_log,
            extra_args=settings.triton_args,
            sandbox=sandbox,
        )
        log.info("starting the embedded Triton (log: %s)", settings.triton_log)
        try:
            await self._triton.start()
        except MLServeError as error:
            raise StartupFailed(f"the embedded Triton could not start: {error.message}") from None
        triton = self._triton
        domain.fleet.watch_resident_memory(
            DEFAULT_SERVER, lambda: tree_resident_bytes(triton.pid) if triton.pid else 0
        )
        register = functools.partial(
            domain.fleet.register_embedded,
            DEFAULT_SERVER,
            shares_repository=settings.bucket is None,
            capacity=embedded_capacity(settings.model_memory),
        )
        await register(self._triton.address)
        log.info("embedded Triton ready at %s as server %r", self._triton.address, DEFAULT_SERVER)
        probing = LivenessProbing(
            interval=settings.triton_liveness_interval,
            timeout=settings.triton_liveness_timeout,
            failures=settings.triton_liveness_failures,
        )
        supervisor = TritonSupervisor(
            self._triton, register, probing=probing, registry=domain.stats.registry
        )
        self._loops.append(asyncio.create_task(supervisor.run(), name="triton-supervisor"))

    async def _update_health(self) -> None:
        assert self._domain is not None
        inference_log = self._domain.inference_log
        await self._set_health(
            self._domain.fleet.any_ready(), await in_thread(inference_log.check_writable)()
        )

    async def _set_health(self, serving: bool, log_writable: bool = True) -> None:
        """Every service follows the fleet; the inference log also needs its directory."""
        for service in ("", *SERVICES):
            up = serving and (log_writable or service != INFERENCE_LOG_SERVICE)
            await self._health.set(service, _SERVING if up else _NOT_SERVING)


def embedded_capacity(model_memory: int) -> Capacity:
    """The embedded Triton's capacity: this host's GPUs, and ``model_memory``
    bytes for models (0: MemAvailable now)."""
    host = host_capacity()
    return Capacity(
        gpu_count=host.gpu_count,
        gpu_memory_bytes=host.gpu_memory_bytes,
        host_memory_bytes=min(model_memory or host.host_memory_bytes, MAX_HOST_MEMORY_BYTES),
    )


def metrics_registry(domain: Domain) -> CollectorRegistry:
    """What /metrics serves: this process's series, or with ``--workers`` every
    worker's merged (prometheus_client's multiprocess files)."""
    if MULTIPROCESS_VARIABLE not in os.environ:
        return domain.stats.registry
    merged = CollectorRegistry()
    MergedWorkers(merged)  # type: ignore[no-untyped-call]
    return merged


_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def expire_uploads(uploads: Uploads, interval: float) -> None:
    """Forever: delete abandoned uploads, then wait ``interval`` seconds."""
    while True:
        try:
            await uploads.expire_abandoned()
        except Exception:
            log.exception("sweep for abandoned uploads failed")
        await asyncio.sleep(interval)


async def serve(settings: Settings) -> None:
    """Run MLServe until SIGTERM or SIGINT, then shut down gracefully."""
    mlserve = MLServe(settings)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    try:
        await mlserve.start()
        await stopping.wait()
    finally:
        await mlserve.stop()
