"""Placement on GPUs, on a real MLServe with its embedded Triton (no GPU here)
and a second real Triton registered as a server with two GPUs.

No GPU is on this machine: the second server declares its GPUs through
RegisterServer's capacity fields, which is what placement reads. A model
whose config puts instances on GPUs (KIND_GPU) is FAILED_PRECONDITION where
no server records a GPU, or names a GPU the server lacks;
RESOURCE_EXHAUSTED when its GPU lacks room (naming the GPU need and the
largest free GPU space); nothing is written either way. On demand it is
refused for missing GPUs too. Where its GPU has
room it is placed there and ListServers counts it on that GPU only.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from mlserve.deploy.placement import DEFAULT_HEADROOM
from mlserve_api.v1 import deployment_pb2, model_pb2, server_pb2
from tests.support.checks import expect_error, nothing_written
from tests.support.mlserve import MLServeProcess, Stubs
from tests.support.models import add_model_config, add_model_files
from tests.support.tritons import (
    TritonProcess,
    assert_not_deployed,
    get_server,
    register,
    remove_model,
    update_server,
)
from tests.support.uploading import stream

pytestmark = pytest.mark.integration

Code = grpc.StatusCode
MiB = 1024**2
GiB = 1024**3
POOL = {"pool": "gpu-placement-test"}
GPU_BOX = "gpu-box"
# Less than any Python-backend version's estimate (64 MiB and up) fits in.
SMALL_GPU = 32 * MiB
SMALL_GPUS = server_pb2.Capacity(gpu_count=2, gpu_memory_bytes=SMALL_GPU, host_memory_bytes=8 * GiB)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gpu-placement")


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
def gpu_box(home: Path, stubs: Stubs) -> Iterator[str]:
    """A second real Triton, registered with two small GPUs and the pool label."""
    triton = TritonProcess(GPU_BOX, home / "tritons", POOL).start()
    try:
        register(stubs, GPU_BOX, triton.address, labels=POOL, capacity=SMALL_GPUS)
        yield GPU_BOX
    finally:
        try:
            stubs.servers.DeleteServer(
                server_pb2.DeleteServerRequest(name=GPU_BOX), metadata=stubs.auth, timeout=60
            )
        finally:
            triton.stop()


def upload_on_gpus(stubs: Stubs, name: str, gpus: Sequence[int] = ()) -> model_pb2.ModelVersion:
    """The "add" model as ``name``, its one instance group KIND_GPU on ``gpus``
    (empty: every GPU)."""
    files = add_model_files(name=name)
    files.pop("config.pbtxt")
    config = add_model_config(name)
    del config.instance_group[:]
    config.instance_group.add(kind=model_config_pb2.ModelInstanceGroup.KIND_GPU, gpus=gpus)
    version: model_pb2.ModelVersion = stubs.models.UploadModelVersion(
        stream(name, files, config=text_format.MessageToString(config)),
        metadata=stubs.auth,
        timeout=60,
    )
    return version


def refused(stubs: Stubs, code: grpc.StatusCode, model: str, **placement: object) -> str:
    """The details of CreateDeployment of ``model`` failing with ``code``."""
    error = expect_error(
        code,
        stubs.deployments.CreateDeployment,
        deployment_pb2.CreateDeploymentRequest(
            wait=True, deployment=deployment_pb2.Deployment(model=model, **placement)
        ),
        metadata=stubs.auth,
        timeout=60,
    )
    details: str = error.details()
    return details


def gpu_memory(server: server_pb2.Server) -> list[tuple[int, int, int]]:
    return [(g.index, g.used_memory_bytes, g.free_memory_bytes) for g in server.gpus]


def test_a_gpu_model_where_no_server_records_a_gpu_is_failed_precondition(
    stubs: Stubs, served: MLServeProcess, model_name: str
) -> None:
    upload_on_gpus(stubs, model_name)
    local = get_server(stubs, "local")
    cpu_only = {"pool": "no-gpus-here"}
    no_gpus = server_pb2.Capacity(host_memory_bytes=local.capacity.host_memory_bytes)
    try:
        # The embedded Triton records the host's GPUs; on a host with some, none here.
        update_server(
            stubs,
            server_pb2.Server(name="local", labels=cpu_only, capacity=no_gpus),
            "labels",
            "capacity",
        )
        assert not get_server(stubs, "local").gpus
        with nothing_written(stubs, served.home):
            on_demand = {"loading": deployment_pb2.LOADING_MODE_ON_DEMAND}
            for placement in ({}, {"servers": ["local"]}, on_demand):
                details = refused(stubs, Code.FAILED_PRECONDITION, model_name, **placement)
                assert "server 'local' cannot run this deployment" in details, details
                assert "records no GPU" in details, details
            details = refused(
                stubs, Code.FAILED_PRECONDITION, model_name, replicas=1, server_selector=cpu_only
            )
            assert "none of the 1 server(s) it may go on records a GPU" in details, details
            assert_not_deployed(stubs, model_name)
        assert get_server(stubs, "local").used_memory_bytes == local.used_memory_bytes
    finally:
        update_server(
            stubs,
            server_pb2.Server(name="local", labels=local.labels, capacity=local.capacity),
            "labels",
            "capacity",
        )
        remove_model(stubs, model_name)


def test_a_gpu_model_naming_a_gpu_the_server_lacks_is_failed_precondition(
    stubs: Stubs, served: MLServeProcess, gpu_box: str, model_name: str
) -> None:
    upload_on_gpus(stubs, model_name, gpus=[3])
    try:
        with nothing_written(stubs, served.home):
            for placement in ({"servers": [gpu_box]}, {"replicas": 1, "server_selector": POOL}):
                details = refused(stubs, Code.FAILED_PRECONDITION, model_name, **placement)
                assert "names GPU 3 but the server records 2 GPU(s)" in details, details
            assert_not_deployed(stubs, model_name)
    finally:
        remove_model(stubs, model_name)


def test_a_gpu_model_without_room_on_its_gpu_is_resource_exhausted(
    stubs: Stubs, served: MLServeProcess, gpu_box: str, model_name: str
) -> None:
    need = upload_on_gpus(stubs, model_name, gpus=[1]).memory.bytes
    usable = math.floor(SMALL_GPU * (1 - DEFAULT_HEADROOM))
    assert need > usable
    before = get_server(stubs, gpu_box)
    assert gpu_memory(before) == [(0, 0, usable), (1, 0, usable)]
    try:
        with nothing_written(stubs, served.home):
            details = refused(
                stubs, Code.RESOURCE_EXHAUSTED, model_name, replicas=1, server_selector=POOL
            )
            assert f"need {need} bytes of GPU memory" in details, details
            assert f"largest free GPU space is {usable} bytes" in details, details
            assert f"GPU 0 of server {gpu_box!r}" in details, details
            details = refused(stubs, Code.RESOURCE_EXHAUSTED, model_name, servers=[gpu_box])
            assert f"has {usable} bytes of memory on GPU 1 free" in details, details
            assert f"needs {need} bytes" in details, details
            assert_not_deployed(stubs, model_name)
        after = get_server(stubs, gpu_box)
        assert gpu_memory(after) == gpu_memory(before)
        assert after.used_memory_bytes == before.used_memory_bytes == 0
    finally:
        remove_model(stubs, model_name)


def test_a_gpu_model_is_placed_on_and_counted_on_the_gpu_it_names(
    stubs: Stubs, gpu_box: str, model_name: str
) -> None:
    roomy = server_pb2.Capacity(gpu_count=2, gpu_memory_bytes=4 * GiB, host_memory_bytes=8 * GiB)
    update_server(stubs, server_pb2.Server(name=gpu_box, capacity=roomy), "capacity")
    try:
        need = upload_on_gpus(stubs, model_name, gpus=[1]).memory.bytes
        # No wait: this Triton has no GPU to load it on; placement is what is tested.
        deployment = stubs.deployments.CreateDeployment(
            deployment_pb2.CreateDeploymentRequest(
                deployment=deployment_pb2.Deployment(
                    model=model_name, replicas=1, server_selector=POOL
                )
            ),
            metadata=stubs.auth,
            timeout=60,
        )
        assert list(deployment.servers) == [gpu_box]
        usable = math.floor(4 * GiB * (1 - DEFAULT_HEADROOM))
        server = get_server(stubs, gpu_box)
        assert gpu_memory(server) == [(0, 0, usable), (1, need, usable - need)]
        assert server.used_memory_bytes == 0  # all its instances are on GPU 1
    finally:
        remove_model(stubs, model_name)
        update_server(stubs, server_pb2.Server(name=gpu_box, capacity=SMALL_GPUS), "capacity")
