"""MLServe as a child process on free loopback ports, and gRPC stubs talking to it."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mlserve_api.v1 import (
    app_pb2_grpc,
    audit_pb2_grpc,
    dataset_pb2_grpc,
    deployment_pb2_grpc,
    explain_pb2_grpc,
    inference_log_pb2_grpc,
    model_pb2_grpc,
    pipeline_pb2_grpc,
    server_pb2_grpc,
    training_pb2_grpc,
    user_pb2_grpc,
    workspace_pb2_grpc,
)
from tests.support.ports import free_port

STARTUP_TIMEOUT = 90.0
# What ``mlserve serve`` logs once its start-up is over (loops, sweeps, runner all
# started). Health answers earlier, while it still starts.
READY_LINE = "ready: serving on "


@dataclass
class Stubs:
    channel: grpc.Channel
    key: str
    models: model_pb2_grpc.ModelServiceStub = field(init=False)
    servers: server_pb2_grpc.ServerServiceStub = field(init=False)
    deployments: deployment_pb2_grpc.DeploymentServiceStub = field(init=False)
    health: health_pb2_grpc.HealthStub = field(init=False)
    users: user_pb2_grpc.UserServiceStub = field(init=False)
    workspaces: workspace_pb2_grpc.WorkspaceServiceStub = field(init=False)
    apps: app_pb2_grpc.AppServiceStub = field(init=False)
    audit: audit_pb2_grpc.AuditServiceStub = field(init=False)
    pipelines: pipeline_pb2_grpc.PipelineServiceStub = field(init=False)
    logs: inference_log_pb2_grpc.InferenceLogServiceStub = field(init=False)
    datasets: dataset_pb2_grpc.DatasetServiceStub = field(init=False)
    training: training_pb2_grpc.TrainingServiceStub = field(init=False)
    explain: explain_pb2_grpc.ExplainServiceStub = field(init=False)

    def __post_init__(self) -> None:
        self.models = model_pb2_grpc.ModelServiceStub(self.channel)
        self.servers = server_pb2_grpc.ServerServiceStub(self.channel)
        self.deployments = deployment_pb2_grpc.DeploymentServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.users = user_pb2_grpc.UserServiceStub(self.channel)
        self.workspaces = workspace_pb2_grpc.WorkspaceServiceStub(self.channel)
        self.apps = app_pb2_grpc.AppServiceStub(self.channel)
        self.audit = audit_pb2_grpc.AuditServiceStub(self.channel)
        self.pipelines = pipeline_pb2_grpc.PipelineServiceStub(self.channel)
        self.logs = inference_log_pb2_grpc.InferenceLogServiceStub(self.channel)
        self.datasets = dataset_pb2_grpc.DatasetServiceStub(self.channel)
        self.training = training_pb2_grpc.TrainingServiceStub(self.channel)
        self.explain = explain_pb2_grpc.ExplainServiceStub(self.channel)

    @property
    def auth(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.key}")]


class MLServeProcess:
    """``mlserve serve`` as a child process on a free port, with its own home."""

    def __init__(
        self,
        home: Path,
        *extra: str,
        port: int | None = None,
        ca: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.home = home
        self.env = {**os.environ, **(env or {})}  # variables for mlserve serve to read
        self.ca = ca  # when MLServe serves TLS: the CA that signed its certificate
        self.port = port or free_port()
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None
        self.log = home / "mlserve.log"
        self._log_start = 0  # where this run's lines begin in the log

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def key(self) -> str:
        return (self.home / "admin.key").read_text().strip()

    def start(self, *, wait_for_triton: bool = True) -> MLServeProcess:
        self.home.mkdir(parents=True, exist_ok=True)
        self._log_start = self.log.stat().st_size if self.log.exists() else 0
        command = [
            sys.executable, "-m", "mlserve", "--home", str(self.home),
            "serve", "--listen", self.address, "--health-interval", "0.5", *self.extra,
        ]  # fmt: skip
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=self.env
            )
        self._wait(serving=wait_for_triton)
        return self

    def _wait(self, serving: bool) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        with self.channel() as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise RuntimeError(f"mlserve exited early:\n{self.log.read_text()[-3000:]}")
                try:
                    status = health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                except grpc.RpcError:
                    time.sleep(0.2)
                    continue
                # Health answers before start-up is over: also wait for the ready line,
                # so a test never races what the process does last (its log included).
                if (
                    not serving or status == health_pb2.HealthCheckResponse.SERVING
                ) and READY_LINE in self._log_since_start():
                    return
                time.sleep(0.2)
        raise RuntimeError(f"mlserve did not become ready:\n{self.log.read_text()[-3000:]}")

    def _log_since_start(self) -> str:
        """This run's part of the log (a restarted process appends to the same file)."""
        with self.log.open("rb") as log:
            log.seek(self._log_start)
            return log.read().decode(errors="replace")

    def channel(self) -> grpc.Channel:
        options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        if self.ca is None:
            return grpc.insecure_channel(self.address, options=options)
        credentials = grpc.ssl_channel_credentials(root_certificates=self.ca.read_bytes())
        return grpc.secure_channel(self.address, credentials, options=options)

    def stubs(self) -> Stubs:
        return Stubs(self.channel(), self.key)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(30)

    def stop(self) -> int:
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return int(self.process.returncode)


@contextlib.contextmanager
def stubs_of(replica: MLServeProcess) -> Iterator[Stubs]:
    """Stubs on a channel of their own to ``replica``, closed when the block ends."""
    stubs = replica.stubs()
    try:
        yield stubs
    finally:
        stubs.channel.close()


def hand_on_admin_key(first: MLServeProcess, replica: MLServeProcess) -> None:
    """Give ``replica`` (not started yet, its own home) the admin key of ``first``, as
    the operator of replicas without a shared disk does."""
    replica.home.mkdir(parents=True, exist_ok=True)
    shutil.copy(first.home / "admin.key", replica.home / "admin.key")


@contextlib.contextmanager
def started_without_triton(home: Path, *options: str) -> Iterator[MLServeProcess]:
    """A Triton-less MLServe with ``options``, running until the block ends."""
    process = MLServeProcess(home, "--no-embedded-triton", *options)
    try:
        yield process.start(wait_for_triton=False)
    finally:
        process.stop()


def metric(port: int, name: str) -> float:
    """The sum of every sample of Prometheus metric ``name`` (all labels) that
    MLServe serves on ``--metrics-listen 127.0.0.1:port``."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith((name + "{", name + " "))
    )
