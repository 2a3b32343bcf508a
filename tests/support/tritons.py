"""Separate, real Triton servers for fleet tests: each its own process, its
own empty model repository and its own fixed loopback port, so that one
restarted after a SIGKILL comes back on the address MLServe knows."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc as triton
from google.protobuf import field_mask_pb2
from tritonclient.utils import InferenceServerException

from mlserve.triton.launcher import EmbeddedTriton
from mlserve_api.v1 import deployment_pb2, model_pb2, server_pb2
from tests.support.checks import expect_error
from tests.support.mlserve import Stubs, free_port


class TritonProcess:
    """A ``tritonserver`` the test starts, kills and restarts synchronously.

    Start and restart it from the test's main thread: the launcher asks Linux
    to stop Triton when the thread that spawned it ends.
    """

    def __init__(
        self,
        name: str,
        root: Path,
        labels: dict[str, str],
        *,
        repository_url: str = "",
        environment: dict[str, str] | None = None,
    ) -> None:
        """``repository_url``/``environment``: a Triton reading a bucket (s3://…).

        ``environment`` (variables Triton and its model code see) is read at each
        start, so a test may change it for a restart.
        """
        self.repository_url = repository_url
        self.environment = environment
        self.name = name
        self.labels = labels
        self.port = free_port()
        self.repository = root / name / "repository"
        self.workdir = root / name / "work"
        self.log = root / name / "triton.log"
        self.repository.mkdir(parents=True, exist_ok=True)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._triton: EmbeddedTriton | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._triton is not None and self._triton.running

    def start(self) -> TritonProcess:
        """Start (or restart) Triton on this server's port and repository."""
        start_all([self])
        return self

    def _fresh(self) -> EmbeddedTriton:
        self._triton = EmbeddedTriton(
            self.repository,
            self.workdir,
            log_path=self.log,
            grpc_port=self.port,
            repository_url=self.repository_url,
            environment=self.environment,
        )
        return self._triton

    def stop(self) -> None:
        if self._triton is not None:
            asyncio.run(self._triton.stop())

    def kill(self) -> None:
        """SIGKILL, no warning; returns once the process is gone."""
        assert self._triton is not None
        pid = self._triton.pid
        assert pid is not None, f"Triton {self.name} is not running"
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while self._triton.running and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not self._triton.running, f"Triton {self.name} survived SIGKILL"
        self.stop()  # reaps it

    def client(self) -> triton.InferenceServerClient:
        """A tritonclient talking to this Triton directly, not through MLServe."""
        return triton.InferenceServerClient(self.address)


def start_all(tritons: Sequence[TritonProcess]) -> None:
    """Start several Tritons at once (from the calling, long-lived thread)."""

    async def start() -> None:
        await asyncio.gather(*(t._fresh().start(timeout=60) for t in tritons))

    asyncio.run(start())


# --- helpers shared by the gateway and fleet tests --------------------------


def add_inputs(a: np.ndarray | None = None, b: np.ndarray | None = None) -> list[triton.InferInput]:
    """INPUT0 and INPUT1 of the "add" model (defaults: [1,2,3,4] and [10,20,30,40])."""
    a = np.array([1, 2, 3, 4], dtype=np.float32) if a is None else a
    b = np.array([10, 20, 30, 40], dtype=np.float32) if b is None else b
    inputs = []
    for name, data in (("INPUT0", a), ("INPUT1", b)):
        tensor = triton.InferInput(name, list(data.shape), "FP32")
        tensor.set_data_from_numpy(data)
        inputs.append(tensor)
    return inputs


def deploy(
    stubs: Stubs, model: str, *, timeout: float = 120, **placement: Any
) -> deployment_pb2.Deployment:
    """CreateDeployment of ``model`` (servers=, replicas=, server_selector=, version=)."""
    deployment: deployment_pb2.Deployment = stubs.deployments.CreateDeployment(
        deployment_pb2.CreateDeploymentRequest(
            wait=True, deployment=deployment_pb2.Deployment(model=model, **placement)
        ),
        metadata=stubs.auth,
        timeout=timeout,
    )
    return deployment


def remove_model(stubs: Stubs, model: str) -> None:
    """Undeploy and delete ``model``, whatever state a failed test left it in."""
    with contextlib.suppress(grpc.RpcError):
        stubs.deployments.DeleteDeployment(
            deployment_pb2.DeleteDeploymentRequest(name=model), metadata=stubs.auth, timeout=60
        )
    with contextlib.suppress(grpc.RpcError):
        stubs.models.DeleteModel(
            model_pb2.DeleteModelRequest(name=model), metadata=stubs.auth, timeout=60
        )


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        time.sleep(step)


def register(stubs: Stubs, name: str, address: str, **fields: Any) -> server_pb2.Server:
    server: server_pb2.Server = stubs.servers.RegisterServer(
        server_pb2.RegisterServerRequest(
            server=server_pb2.Server(name=name, address=address, **fields)
        ),
        metadata=stubs.auth,
        timeout=30,
    )
    return server


def ready_on(tritonserver: TritonProcess, model: str) -> bool:
    client = tritonserver.client()
    try:
        return bool(client.is_model_ready(model))
    except InferenceServerException:
        return False
    finally:
        client.close()


def get_server(stubs: Stubs, name: str) -> server_pb2.Server:
    """GetServer ``name``."""
    server: server_pb2.Server = stubs.servers.GetServer(
        server_pb2.GetServerRequest(name=name), metadata=stubs.auth
    )
    return server


def update_server(stubs: Stubs, server: server_pb2.Server, *paths: str) -> server_pb2.Server:
    """UpdateServer of ``server``'s fields named in ``paths`` (the update mask)."""
    updated: server_pb2.Server = stubs.servers.UpdateServer(
        server_pb2.UpdateServerRequest(
            server=server, update_mask=field_mask_pb2.FieldMask(paths=list(paths))
        ),
        metadata=stubs.auth,
    )
    return updated


def assert_not_deployed(stubs: Stubs, name: str) -> None:
    """GetDeployment ``name`` is NOT_FOUND."""
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        stubs.deployments.GetDeployment,
        deployment_pb2.GetDeploymentRequest(name=name),
        metadata=stubs.auth,
    )
