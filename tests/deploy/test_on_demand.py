"""On-demand deployments on a real MLServe with its embedded, real Triton.

100 concurrent inferences to a cold on-demand model are all answered after
exactly one load (counted in Triton's own log, and by MLServe's counter);
a load that lacks room evicts the least recently used on-demand model (its
target COLD saying why, an audit event, the Prometheus counter); a copy
unused for idle_unload_after_seconds is unloaded; a pinned set larger than a
server is FAILED_PRECONDITION; bad loading fields are INVALID_ARGUMENT; none
of the refused calls writes anything.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from google.protobuf import field_mask_pb2
from tritonclient.utils import InferenceServerException

from mlserve.deploy.placement import DEFAULT_HEADROOM
from mlserve_api.v1 import audit_pb2, deployment_pb2, model_pb2, server_pb2
from tests.support.checks import expect_error, nothing_written
from tests.support.commands import mlserve_cli
from tests.support.mlserve import MLServeProcess, Stubs, free_port, metric
from tests.support.models import add_model_files, upload_add, with_initialize
from tests.support.tritons import add_inputs, remove_model, wait_for
from tests.support.uploading import stream

pytestmark = pytest.mark.integration

Code = grpc.StatusCode
ON_DEMAND = deployment_pb2.LOADING_MODE_ON_DEMAND
COLD = deployment_pb2.DEPLOYMENT_STATE_COLD
READY = deployment_pb2.DEPLOYMENT_STATE_READY
CONCURRENT = 100


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, metrics_port: int) -> Iterator[MLServeProcess]:
    home = tmp_path_factory.mktemp("on-demand")
    process = MLServeProcess(home, "--metrics-listen", f"127.0.0.1:{metrics_port}").start()
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


@pytest.fixture
def restore_local(stubs: Stubs) -> Iterator[None]:
    """Put the embedded Triton's capacity back after a test that shrinks it."""
    local = get_server(stubs)
    yield
    set_capacity(stubs, local.capacity.host_memory_bytes)


def get_server(stubs: Stubs) -> server_pb2.Server:
    found: server_pb2.Server = stubs.servers.GetServer(
        server_pb2.GetServerRequest(name="local"), metadata=stubs.auth
    )
    return found


def set_capacity(stubs: Stubs, host_memory_bytes: int) -> None:
    stubs.servers.UpdateServer(
        server_pb2.UpdateServerRequest(
            server=server_pb2.Server(
                name="local", capacity=server_pb2.Capacity(host_memory_bytes=host_memory_bytes)
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["capacity"]),
        ),
        metadata=stubs.auth,
    )


def deploy_on_demand(stubs: Stubs, model: str, **fields: Any) -> deployment_pb2.Deployment:
    deployed: deployment_pb2.Deployment = stubs.deployments.CreateDeployment(
        deployment_pb2.CreateDeploymentRequest(
            wait=True,
            deployment=deployment_pb2.Deployment(
                model=model, servers=["local"], loading=ON_DEMAND, **fields
            ),
        ),
        metadata=stubs.auth,
        timeout=120,
    )
    return deployed


def target(stubs: Stubs, model: str) -> deployment_pb2.DeploymentTarget:
    deployment = stubs.deployments.GetDeployment(
        deployment_pb2.GetDeploymentRequest(name=model), metadata=stubs.auth
    )
    (found,) = deployment.targets
    return found


def triton_loads(served: MLServeProcess, model: str) -> int:
    """How many times Triton itself says it loaded ``model`` (its log)."""
    log = Path(served.home / "triton.log").read_text(errors="replace")
    return log.count(f"successfully loaded '{model}'")


def infer(served: MLServeProcess, stubs: Stubs, model: str) -> np.ndarray:
    client = triton.InferenceServerClient(served.address)
    result = client.infer(
        model, add_inputs(), headers={"authorization": f"Bearer {stubs.key}"}, client_timeout=120
    )
    output: np.ndarray = result.as_numpy("OUTPUT0")
    return output


def test_a_hundred_concurrent_calls_to_a_cold_model_load_it_once(
    served: MLServeProcess, stubs: Stubs, metrics_port: int, model_name: str
) -> None:
    upload_add(stubs, model_name)
    try:
        deployed = deploy_on_demand(stubs, model_name)
        assert deployed.loading == ON_DEMAND
        assert deployed.state == COLD
        assert "on demand" in target(stubs, model_name).message
        assert triton_loads(served, model_name) == 0
        loads_before = metric(metrics_port, "mlserve_on_demand_loads_total")

        async def calls() -> list[np.ndarray]:
            client = triton_aio.InferenceServerClient(served.address)
            headers = {"authorization": f"Bearer {stubs.key}"}
            try:
                results = await asyncio.gather(
                    *(
                        client.infer(model_name, add_inputs(), headers=headers, client_timeout=120)
                        for _ in range(CONCURRENT)
                    )
                )
            finally:
                await client.close()
            return [result.as_numpy("OUTPUT0") for result in results]

        outputs = asyncio.run(calls())
        assert len(outputs) == CONCURRENT
        for output in outputs:
            np.testing.assert_array_equal(output, np.array([11, 22, 33, 44], dtype=np.float32))
        assert triton_loads(served, model_name) == 1
        assert metric(metrics_port, "mlserve_on_demand_loads_total") - loads_before == 1
        assert target(stubs, model_name).state == READY
        # Once warm, calls are routed without another load.
        infer(served, stubs, model_name)
        assert triton_loads(served, model_name) == 1
    finally:
        remove_model(stubs, model_name)


def test_a_load_without_room_evicts_the_least_recently_used(
    served: MLServeProcess, stubs: Stubs, metrics_port: int, model_name: str, restore_local: None
) -> None:
    older, newer, third = (f"{model_name}-{n}" for n in ("a", "b", "c"))
    try:
        for name in (older, newer, third):
            upload_add(stubs, name)
            deploy_on_demand(stubs, name)
        infer(served, stubs, older)
        infer(served, stubs, newer)
        infer(served, stubs, older)  # older is now the more recently used
        needs = {
            name: stubs.models.GetModelVersion(
                model_pb2.GetModelVersionRequest(model=name), metadata=stubs.auth
            ).memory.bytes
            for name in (older, newer, third)
        }
        # Room for the two loaded but not a third: loading it must evict one.
        usable = needs[older] + needs[newer] + needs[third] - 1
        set_capacity(stubs, math.floor(usable / (1 - DEFAULT_HEADROOM)))
        assert get_server(stubs).free_memory_bytes < needs[third]
        evictions_before = metric(metrics_port, "mlserve_evictions_total")
        infer(served, stubs, third)
        evicted = target(stubs, newer)
        assert evicted.state == COLD
        assert f"to make room for '{third}'" in evicted.message
        assert target(stubs, older).state == READY  # used more recently: kept
        assert target(stubs, third).state == READY
        assert metric(metrics_port, "mlserve_evictions_total") - evictions_before == 1
        events = stubs.audit.ListAuditEvents(
            audit_pb2.ListAuditEventsRequest(resource=newer), metadata=stubs.auth
        ).events
        assert any(e.method.endswith("/Evict") and third in e.outcome for e in events)
        assert not triton.InferenceServerClient(get_server(stubs).address).is_model_ready(newer)
        # Used again, the evicted model is loaded again (and evicts the LRU one).
        infer(served, stubs, newer)
        assert target(stubs, newer).state == READY
    finally:
        for name in (older, newer, third):
            remove_model(stubs, name)


def test_an_idle_copy_is_unloaded(served: MLServeProcess, stubs: Stubs, model_name: str) -> None:
    upload_add(stubs, model_name)
    try:
        deploy_on_demand(stubs, model_name, idle_unload_after_seconds=1)
        infer(served, stubs, model_name)
        wait_for(
            lambda: target(stubs, model_name).state == COLD, 60, "the idle copy to be unloaded"
        )
        assert "after 1 s unused" in target(stubs, model_name).message
        infer(served, stubs, model_name)  # and it comes back on demand
        assert triton_loads(served, model_name) == 2
    finally:
        remove_model(stubs, model_name)


def test_min_copies_are_loaded_at_create(
    served: MLServeProcess, stubs: Stubs, model_name: str
) -> None:
    upload_add(stubs, model_name)
    try:
        deployed = deploy_on_demand(stubs, model_name, min_copies=1)
        assert deployed.state == READY
        assert triton_loads(served, model_name) == 1
    finally:
        remove_model(stubs, model_name)


def test_a_pinned_set_larger_than_the_server_is_refused(
    served: MLServeProcess, stubs: Stubs, model_name: str, restore_local: None
) -> None:
    upload_add(stubs, model_name)
    try:
        set_capacity(stubs, 1024**2)
        with nothing_written(stubs, served.home):
            error = expect_error(
                Code.FAILED_PRECONDITION,
                stubs.deployments.CreateDeployment,
                deployment_pb2.CreateDeploymentRequest(
                    deployment=deployment_pb2.Deployment(
                        model=model_name, servers=["local"], pinned=True
                    )
                ),
                metadata=stubs.auth,
            )
            assert "pinned" in error.details()
            assert "'local'" in error.details()
            expect_error(
                Code.NOT_FOUND,
                stubs.deployments.GetDeployment,
                deployment_pb2.GetDeploymentRequest(name=model_name),
                metadata=stubs.auth,
            )
    finally:
        remove_model(stubs, model_name)


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"loading": 7}, "loading"),
        ({"loading": ON_DEMAND, "min_copies": -1}, "min_copies"),
        ({"loading": ON_DEMAND, "max_copies": -2}, "max_copies"),
        ({"loading": ON_DEMAND, "min_copies": 2, "max_copies": 1}, "max_copies"),
        ({"loading": ON_DEMAND, "idle_unload_after_seconds": -1}, "idle_unload_after"),
        ({"loading": ON_DEMAND, "idle_unload_after_seconds": math.nan}, "idle_unload_after"),
        ({"min_copies": 1}, "on_demand"),
        ({"loading": ON_DEMAND, "min_copies": 2}, "min_copies"),  # one server only
    ],
)
def test_bad_loading_fields_are_invalid_and_write_nothing(
    served: MLServeProcess, stubs: Stubs, model_name: str, fields: dict[str, Any], words: str
) -> None:
    upload_add(stubs, model_name)
    try:
        with nothing_written(stubs, served.home):
            error = expect_error(
                Code.INVALID_ARGUMENT,
                stubs.deployments.CreateDeployment,
                deployment_pb2.CreateDeploymentRequest(
                    deployment=deployment_pb2.Deployment(
                        model=model_name, servers=["local"], **fields
                    )
                ),
                metadata=stubs.auth,
            )
            assert words in error.details()
            expect_error(
                Code.NOT_FOUND,
                stubs.deployments.GetDeployment,
                deployment_pb2.GetDeploymentRequest(name=model_name),
                metadata=stubs.auth,
            )
    finally:
        remove_model(stubs, model_name)


def test_a_cold_start_without_room_anywhere_is_resource_exhausted(
    served: MLServeProcess, stubs: Stubs, model_name: str, restore_local: None
) -> None:
    upload_add(stubs, model_name)
    try:
        deploy_on_demand(stubs, model_name)
        set_capacity(stubs, 1024**2)
        need = stubs.models.GetModelVersion(
            model_pb2.GetModelVersionRequest(model=model_name), metadata=stubs.auth
        ).memory.bytes
        client = triton.InferenceServerClient(served.address)
        with pytest.raises(InferenceServerException) as raised:
            client.infer(model_name, add_inputs(), headers={"authorization": f"Bearer {stubs.key}"})
        assert raised.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        assert f"needs {need} bytes" in raised.value.message()
        assert target(stubs, model_name).state == COLD
        assert triton_loads(served, model_name) == 0
    finally:
        remove_model(stubs, model_name)


def test_mlserve_deploy_on_demand_from_the_cli(
    served: MLServeProcess, stubs: Stubs, model_name: str
) -> None:
    upload_add(stubs, model_name)
    try:
        deployed = mlserve_cli(
            served, "deploy", model_name, "--on-demand", "--idle-unload-after", "600"
        )
        assert deployed.returncode == 0, deployed.stderr
        assert "COLD" in deployed.stdout
        shown = stubs.deployments.GetDeployment(
            deployment_pb2.GetDeploymentRequest(name=model_name), metadata=stubs.auth
        )
        assert shown.loading == ON_DEMAND
        assert shown.idle_unload_after_seconds == 600
        infer(served, stubs, model_name)
        assert target(stubs, model_name).state == READY
        # A new version keeps the deployment's loading; asking for another is refused.
        again = mlserve_cli(served, "deploy", model_name, "--pinned")
        assert again.returncode != 0
        assert "cannot change" in again.stderr
        assert not stubs.deployments.GetDeployment(
            deployment_pb2.GetDeploymentRequest(name=model_name), metadata=stubs.auth
        ).pinned
    finally:
        remove_model(stubs, model_name)


def test_a_failed_cold_load_tells_the_caller_no_triton_text_and_no_server(
    served: MLServeProcess, stubs: Stubs, model_name: str
) -> None:
    secret = "triton-side-detail-of-the-failed-initialize"
    files = with_initialize(
        add_model_files(name=model_name), f"        raise RuntimeError({secret!r})\n"
    )
    config = files.pop("config.pbtxt").decode()
    stubs.models.UploadModelVersion(
        stream(model_name, files, config=config), metadata=stubs.auth, timeout=60
    )
    try:
        deploy_on_demand(stubs, model_name)
        with pytest.raises(InferenceServerException) as raised:
            infer(served, stubs, model_name)
        assert raised.value.status() == str(Code.UNAVAILABLE)
        assert raised.value.message() == (
            f"on-demand model {model_name!r} could not be loaded: retry later, or ask its "
            "owner to check the deployment's targets (GetDeployment)"
        )
        # The details are for those who may see the deployment, and for MLServe's log.
        failed = target(stubs, model_name)
        assert failed.server == "local"
        assert secret in failed.message
        assert secret in served.log.read_text(errors="replace")
    finally:
        remove_model(stubs, model_name)
