"""Assembles one MLServe process: store, domain, gRPC services, health,
reflection, the embedded Triton, the health and reconcile loops, and graceful
shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
from dataclasses import dataclass

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import start_http_server

from mlserve.access import ADMIN_KEY_FILE, Access
from mlserve.access.audit import AuditLog
from mlserve.access.directory import Directory
from mlserve.api import reflection
from mlserve.api.apps import AppService
from mlserve.api.audit import AuditService
from mlserve.api.deployments import DeploymentService
from mlserve.api.generic_server import GenericHandlersOnly
from mlserve.api.inference import SERVICE as INFERENCE_SERVICE
from mlserve.api.inference import InferenceGateway
from mlserve.api.interceptor import (
    MANAGEMENT_MESSAGE_BYTES,
    UPLOAD_FRAMING_BYTES,
    CallGuard,
    MessageLimits,
)
from mlserve.api.models import ModelService
from mlserve.api.pipelines import PipelineService
from mlserve.api.servers import ServerService
from mlserve.api.users import UserService
from mlserve.api.workspaces import WorkspaceService
from mlserve.catalog.models import Catalog
from mlserve.catalog.pipelines import Pipelines
from mlserve.catalog.uploads import UploadLimits, Uploads
from mlserve.core.paging import PageTokens
from mlserve.deploy.fleet import Fleet
from mlserve.deploy.health import HealthLoop
from mlserve.deploy.model_deployments import DEFAULT_SERVER, Deployments
from mlserve.deploy.pipeline_deployments import PipelineDeployments
from mlserve.gateway.router import Router
from mlserve.gateway.stats import InferenceStats
from mlserve.settings import Settings
from mlserve.storage import db, tables
from mlserve.storage.blobs import Blobs
from mlserve.storage.db import in_thread
from mlserve.storage.repository import Repository
from mlserve.triton.launcher import EmbeddedTriton
from mlserve.triton.sandbox import Sandbox
from mlserve_api.v1 import (
    app_pb2,
    app_pb2_grpc,
    audit_pb2,
    audit_pb2_grpc,
    deployment_pb2,
    deployment_pb2_grpc,
    model_pb2,
    model_pb2_grpc,
    pipeline_pb2,
    pipeline_pb2_grpc,
    server_pb2,
    server_pb2_grpc,
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
)


@dataclass
class Domain:
    """The domain objects one process shares between its services."""

    repository: Repository
    catalog: Catalog
    uploads: Uploads
    fleet: Fleet
    deployments: Deployments
    access: Access
    router: Router
    stats: InferenceStats
    directory: Directory
    audit: AuditLog
    pipelines: Pipelines
    pipeline_deployments: PipelineDeployments


def build_domain(settings: Settings) -> Domain:
    tables.connect(settings.database_url)
    secret = db.run(tables.get_or_create_setting, "page_token_secret", _random_secret)
    tokens = PageTokens(secret)
    repository = Repository(settings.repository_dir, settings.staging_dir, settings.blobs_dir)
    blobs = Blobs(repository)
    db.run(blobs.sweep)
    catalog = Catalog(repository, tokens, blobs)
    uploads = Uploads(
        repository, catalog, blobs, UploadLimits(max_upload_bytes=settings.max_upload_bytes)
    )
    fleet = Fleet(tokens)
    deployments = Deployments(fleet, repository, tokens)
    fleet.on_change(deployments.server_changed)
    router = Router(fleet)
    deployments.on_change(router.reload)
    # After the model deployments' callback: members may be deployments too.
    pipeline_deployments = PipelineDeployments(fleet, deployments, repository)
    fleet.on_change(pipeline_deployments.server_changed)
    return Domain(
        repository,
        catalog,
        uploads,
        fleet,
        deployments,
        Access(),
        router,
        InferenceStats(),
        Directory(tokens),
        AuditLog(tokens),
        Pipelines(tokens),
        pipeline_deployments,
    )


def _random_secret() -> bytes:
    return secrets.token_bytes(32)


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

    async def start(self) -> None:
        settings = self.settings
        # Decided first: without a sandbox MLServe refuses to start at all
        # rather than serve with a Triton that can read its secrets.
        sandbox = (
            await in_thread(Sandbox.find)(unsafe_shared_user=settings.unsafe_shared_user)
            if settings.embedded_triton
            else None
        )
        settings.home.mkdir(parents=True, exist_ok=True)
        domain = self._domain = await in_thread(build_domain)(settings)
        key_file = await in_thread(domain.access.bootstrap_admin_key)(settings.home)
        if key_file is not None:
            log.info("wrote the first admin key to %s (mode 0600)", key_file)
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
        await self._server.start()
        await self._set_health(False)
        log.info("MLServe listening on %s (TLS %s)", self.address, self._tls_word)
        log.info("state in %s (%s)", settings.home, db.describe(db.database.obj))
        # First the reconciler, so that what the first checks ask for is done.
        self._loops.append(asyncio.create_task(domain.fleet.reconciler.run(), name="reconciler"))
        if sandbox is not None:
            await self._start_embedded_triton(domain, sandbox)
        await domain.router.reload()
        await domain.fleet.refresh_all()
        await self._update_health()
        if settings.metrics_listen:
            host, _, port = settings.metrics_listen.rpartition(":")
            start_http_server(int(port), host or "127.0.0.1", registry=domain.stats.registry)
            log.info("Prometheus metrics on http://%s/metrics", settings.metrics_listen)
        health_loop = HealthLoop(
            domain.fleet,
            settings.health_interval,
            # Routes: deployments changed through another replica on the same database.
            hooks=(self._update_health, domain.stats.flush, domain.router.reload),
        )
        self._loops.append(asyncio.create_task(health_loop.run(), name="health-loop"))
        log.info("%s", self.ready_line())

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
        if self._server is not None:
            await self._server.stop(self.settings.shutdown_grace)
        if self._domain is not None:
            await self._domain.stats.flush()
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
                    ("grpc.so_reuseport", 0),
                ],
            )
        )
        # First, so that inference calls find their handler at the first lookup.
        gateway = InferenceGateway(
            domain.router, domain.fleet, domain.deployments, domain.stats, domain.access
        )
        server.add_generic_rpc_handlers((gateway.handler(),))
        model_pb2_grpc.add_ModelServiceServicer_to_server(
            ModelService(domain.catalog, domain.uploads, domain.stats, domain.deployments), server
        )
        server_pb2_grpc.add_ServerServiceServicer_to_server(
            ServerService(domain.fleet, domain.deployments), server
        )
        deployment_pb2_grpc.add_DeploymentServiceServicer_to_server(
            DeploymentService(domain.deployments, domain.pipeline_deployments), server
        )
        pipeline_pb2_grpc.add_PipelineServiceServicer_to_server(
            PipelineService(domain.pipelines, lambda: self.address), server
        )
        user_pb2_grpc.add_UserServiceServicer_to_server(UserService(domain.directory), server)
        workspace_pb2_grpc.add_WorkspaceServiceServicer_to_server(
            WorkspaceService(domain.directory), server
        )
        app_pb2_grpc.add_AppServiceServicer_to_server(AppService(domain.directory), server)
        audit_pb2_grpc.add_AuditServiceServicer_to_server(AuditService(domain.audit), server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable(server, [*SERVICES, health.SERVICE_NAME])
        return server

    def _anonymous_gateway(self) -> bool:
        if not self.settings.bench_anonymous_gateway:
            return False
        host = self.settings.listen.rpartition(":")[0]
        if host not in ("127.0.0.1", "localhost", "[::1]"):
            raise RuntimeError("--bench-anonymous-gateway is allowed only on a loopback address")
        log.warning("BENCHMARK MODE: gateway calls without a key are served unauthenticated")
        return True

    async def _start_embedded_triton(self, domain: Domain, sandbox: Sandbox) -> None:
        settings = self.settings
        self._triton = EmbeddedTriton(
            settings.repository_dir,
            settings.home / "triton",
            log_path=settings.triton_log,
            sandbox=sandbox,
        )
        log.info("starting the embedded Triton (log: %s)", settings.triton_log)
        await self._triton.start()
        await domain.fleet.register_embedded(DEFAULT_SERVER, self._triton.address)
        log.info("embedded Triton ready at %s as server %r", self._triton.address, DEFAULT_SERVER)

    async def _update_health(self) -> None:
        assert self._domain is not None
        await self._set_health(self._domain.fleet.any_ready())

    async def _set_health(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", *SERVICES):
            await self._health.set(service, status)


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
