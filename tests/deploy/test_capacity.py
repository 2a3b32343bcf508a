"""Capacity and placement by memory, on a real MLServe with its embedded Triton
and a second real Triton.

The embedded Triton registers the host's memory; a version's memory need is
estimated at upload and measured on its first load; ListServers shows used
and free memory; CreateDeployment with replicas skips a server without room
and, when none has room, is RESOURCE_EXHAUSTED naming the need and the
largest free space (a named server without room: its free space), with
nothing written. Bad capacities are INVALID_ARGUMENT
naming the field, and nothing is registered or changed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import field_mask_pb2

from mlserve.catalog import sizing
from mlserve.deploy.placement import DEFAULT_HEADROOM
from mlserve_api.v1 import deployment_pb2, model_pb2, server_pb2
from tests.support.checks import expect_error, nothing_written
from tests.support.mlserve import MLServeProcess, Stubs
from tests.support.models import upload_add
from tests.support.tritons import (
    TritonProcess,
    assert_not_deployed,
    deploy,
    get_server,
    register,
    remove_model,
    update_server,
)

pytestmark = pytest.mark.integration

Code = grpc.StatusCode
MiB = 1024**2
GiB = 1024**3
POOL = {"pool": "capacity-test"}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("capacity")


@pytest.fixture(scope="module")
def served(home: Path) -> Iterator[MLServeProcess]:
    process = MLServeProcess(home).start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def stubs(served: MLServeProcess) -> Iterator[Stubs]:
    stubs = served.stubs()
    try:
        yield stubs
    finally:
        stubs.channel.close()


@pytest.fixture(scope="module")
def second(home: Path, stubs: Stubs) -> Iterator[str]:
    """A second real Triton, registered with 8 GiB for models and the pool label."""
    triton = TritonProcess("roomy", home / "tritons", POOL).start()
    register(
        stubs,
        "roomy",
        triton.address,
        labels=POOL,
        capacity=server_pb2.Capacity(host_memory_bytes=8 * GiB),
    )
    try:
        yield "roomy"
    finally:
        stubs.servers.DeleteServer(
            server_pb2.DeleteServerRequest(name="roomy"), metadata=stubs.auth
        )
        triton.stop()


def get_version(stubs: Stubs, model: str) -> model_pb2.ModelVersion:
    version: model_pb2.ModelVersion = stubs.models.GetModelVersion(
        model_pb2.GetModelVersionRequest(model=model, version=0), metadata=stubs.auth
    )
    return version


def exhausted(stubs: Stubs, deployment: deployment_pb2.Deployment) -> grpc.RpcError:
    """The RESOURCE_EXHAUSTED error of creating ``deployment``."""
    error: grpc.RpcError = expect_error(
        Code.RESOURCE_EXHAUSTED,
        stubs.deployments.CreateDeployment,
        deployment_pb2.CreateDeploymentRequest(wait=True, deployment=deployment),
        metadata=stubs.auth,
        timeout=60,
    )
    return error


def server_names(stubs: Stubs) -> list[str]:
    response = stubs.servers.ListServers(
        server_pb2.ListServersRequest(page_size=1000), metadata=stubs.auth
    )
    return [server.name for server in response.servers]


def test_the_embedded_triton_registers_the_hosts_memory(stubs: Stubs) -> None:
    local = get_server(stubs, "local")
    available = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            available = int(line.split()[1]) * 1024
    assert local.capacity.host_memory_bytes > 0
    # MemAvailable at MLServe's start; the machine is shared, so only its order.
    assert local.capacity.host_memory_bytes < 4 * max(available, GiB)
    if not any(
        os.access(os.path.join(d, "nvidia-smi"), os.X_OK)
        for d in os.environ.get("PATH", "").split(":")
    ):
        assert local.capacity.gpu_count == 0
        assert local.capacity.gpu_memory_bytes == 0
    usable = int(local.capacity.host_memory_bytes * (1 - DEFAULT_HEADROOM))
    assert local.free_memory_bytes == usable - local.used_memory_bytes


def test_a_version_is_estimated_then_measured_on_its_first_load(
    stubs: Stubs, model_name: str
) -> None:
    committed = upload_add(stubs, model_name)
    try:
        version = get_version(stubs, model_name)
        expected = sizing.estimate(committed.size_bytes, "python")
        assert version.memory.estimated_bytes == expected
        assert version.memory.measured_bytes == 0
        assert version.memory.bytes == expected
        before = get_server(stubs, "local").used_memory_bytes
        deployed = deploy(stubs, model_name, servers=["local"])
        assert deployed.state == deployment_pb2.DEPLOYMENT_STATE_READY
        measured = get_version(stubs, model_name).memory
        # The Python backend reports no memory usage: the Triton tree's RSS grew
        # by its stub process (tens of MiB).
        assert measured.measurement == "rss", measured
        assert measured.measured_on == "local"
        assert MiB < measured.measured_bytes < 2 * GiB
        assert measured.bytes == measured.measured_bytes
        assert measured.estimated_bytes == expected
        assert measured.measure_time.seconds > 0
        local = get_server(stubs, "local")
        assert local.used_memory_bytes - before == measured.measured_bytes
    finally:
        remove_model(stubs, model_name)


@pytest.mark.parametrize(
    ("capacity", "field"),
    [
        (server_pb2.Capacity(gpu_count=-1), "server.capacity.gpu_count"),
        (server_pb2.Capacity(gpu_count=100_000), "server.capacity.gpu_count"),
        (
            server_pb2.Capacity(gpu_count=1, gpu_memory_bytes=-1),
            "server.capacity.gpu_memory_bytes",
        ),
        (server_pb2.Capacity(gpu_memory_bytes=GiB), "server.capacity.gpu_memory_bytes"),
        (server_pb2.Capacity(host_memory_bytes=-GiB), "server.capacity.host_memory_bytes"),
        (server_pb2.Capacity(host_memory_bytes=2**62), "server.capacity.host_memory_bytes"),
    ],
)
def test_bad_capacities_are_invalid_and_change_nothing(
    stubs: Stubs, capacity: server_pb2.Capacity, field: str
) -> None:
    before = server_names(stubs)
    name = f"bad-capacity-{os.getpid()}"
    error = expect_error(
        Code.INVALID_ARGUMENT,
        stubs.servers.RegisterServer,
        server_pb2.RegisterServerRequest(
            server=server_pb2.Server(name=name, address="127.0.0.1:1", capacity=capacity)
        ),
        metadata=stubs.auth,
    )
    assert field in error.details()
    assert server_names(stubs) == before
    local = get_server(stubs, "local")
    error = expect_error(
        Code.INVALID_ARGUMENT,
        stubs.servers.UpdateServer,
        server_pb2.UpdateServerRequest(
            server=server_pb2.Server(name="local", capacity=capacity),
            update_mask=field_mask_pb2.FieldMask(paths=["capacity"]),
        ),
        metadata=stubs.auth,
    )
    assert field in error.details()
    assert get_server(stubs, "local").capacity == local.capacity


def test_replicas_go_where_there_is_room_else_resource_exhausted(
    stubs: Stubs, served: MLServeProcess, second: str, model_name: str
) -> None:
    upload_add(stubs, model_name)
    local = get_server(stubs, "local")
    try:
        # The embedded Triton joins the pool with room for nothing.
        tiny = server_pb2.Capacity(host_memory_bytes=MiB)
        update_server(
            stubs, server_pb2.Server(name="local", labels=POOL, capacity=tiny), "labels", "capacity"
        )
        need = get_version(stubs, model_name).memory.bytes
        with nothing_written(stubs, served.home):
            error = exhausted(
                stubs,
                deployment_pb2.Deployment(model=model_name, replicas=2, server_selector=POOL),
            )
            roomy = get_server(stubs, second)
            assert f"need {need} bytes" in error.details()
            assert f"largest free space is {roomy.free_memory_bytes} bytes" in error.details()
            assert repr(second) in error.details()
            assert_not_deployed(stubs, model_name)
        deployed = deploy(stubs, model_name, replicas=1, server_selector=POOL)
        assert list(deployed.servers) == [second]
        assert deployed.state == deployment_pb2.DEPLOYMENT_STATE_READY
        roomy = get_server(stubs, second)
        assert roomy.used_memory_bytes == get_version(stubs, model_name).memory.bytes
        assert roomy.free_memory_bytes == int(8 * GiB * (1 - DEFAULT_HEADROOM)) - (
            roomy.used_memory_bytes
        )
    finally:
        remove_model(stubs, model_name)
        update_server(
            stubs,
            server_pb2.Server(name="local", labels=local.labels, capacity=local.capacity),
            "labels",
            "capacity",
        )


def test_a_named_server_without_room_is_resource_exhausted_and_nothing_written(
    stubs: Stubs, served: MLServeProcess, second: str, model_name: str
) -> None:
    upload_add(stubs, model_name)
    local = get_server(stubs, "local")
    try:
        tiny = server_pb2.Capacity(host_memory_bytes=MiB)
        update_server(stubs, server_pb2.Server(name="local", capacity=tiny), "capacity")
        need = get_version(stubs, model_name).memory.bytes
        free = get_server(stubs, "local").free_memory_bytes
        with nothing_written(stubs, served.home):
            # The roomy server first: every named server is checked.
            error = exhausted(
                stubs, deployment_pb2.Deployment(model=model_name, servers=[second, "local"])
            )
            assert "server 'local'" in error.details()
            assert f"has {free} bytes of model memory free" in error.details()
            assert f"needs {need} bytes" in error.details()
            assert_not_deployed(stubs, model_name)
        assert not get_server(stubs, second).used_memory_bytes
        deployed = deploy(stubs, model_name, servers=[second])
        assert deployed.state == deployment_pb2.DEPLOYMENT_STATE_READY
    finally:
        remove_model(stubs, model_name)
        update_server(stubs, server_pb2.Server(name="local", capacity=local.capacity), "capacity")
