"""A pipeline on a Triton that shares no storage with MLServe (push
placement): members pushed with their files, the ensemble with its config,
inference through the gateway, and the reconciler reloading all of it after
the Triton is SIGKILLed and restarted. A real MLServe and a real Triton."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton

from mlserve_api.v1 import deployment_pb2, server_pb2
from tests.support.mlserve import MLServeProcess, Stubs
from tests.support.models import add_model_files, scale_model_files
from tests.support.pipelines import Members, chain, cleanup, create, infer, upload
from tests.support.tritons import TritonProcess, ready_on, register, wait_for

READY = deployment_pb2.DEPLOYMENT_STATE_READY


@pytest.fixture(scope="module")
def pushed(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[MLServeProcess, Stubs, TritonProcess]]:
    root = tmp_path_factory.mktemp("pipeline-fleet")
    process = MLServeProcess(root / "home", "--no-embedded-triton")
    tritonserver = TritonProcess("p1", root, {})
    try:
        process.start(wait_for_triton=False)
        tritonserver.start()
        stubs = process.stubs()
        assert not register(stubs, "p1", tritonserver.address).shares_repository
        yield process, stubs, tritonserver
        stubs.channel.close()
    finally:
        tritonserver.stop()
        process.stop()


def test_a_pushed_pipeline_serves_and_comes_back_after_a_triton_restart(
    pushed: tuple[MLServeProcess, Stubs, TritonProcess],
) -> None:
    process, stubs, tritonserver = pushed
    names = Members("push")
    upload(stubs, scale_model_files(names.pre, factor=2.0), names.pre)
    upload(stubs, add_model_files(name=names.add), names.add)
    upload(stubs, scale_model_files(names.post, offset=100.0), names.post)
    create(stubs, chain("pushed", names.all))
    deployment = stubs.deployments.CreateDeployment(
        deployment_pb2.CreateDeploymentRequest(
            wait=True, deployment=deployment_pb2.Deployment(pipeline="pushed", servers=["p1"])
        ),
        metadata=stubs.auth,
        timeout=180,
    )
    assert deployment.state == READY, deployment
    assert [m.state for m in deployment.targets[0].members] == [READY] * 3
    headers = {"authorization": f"Bearer {process.key}"}
    expected = np.array([112, 124, 136, 148], np.float32)
    np.testing.assert_array_equal(infer(process.address, "pushed", headers), expected)

    tritonserver.kill()
    tritonserver.start()

    def answers() -> bool:
        try:
            return bool((infer(process.address, "pushed", headers) == expected).all())
        except triton.InferenceServerException:
            return False

    wait_for(answers, 120, "the reconciler to reload the pipeline", step=0.5)

    with pytest.raises(grpc.RpcError) as in_use:
        stubs.servers.DeleteServer(server_pb2.DeleteServerRequest(name="p1"), metadata=stubs.auth)
    assert in_use.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "pipeline 'pushed'" in (in_use.value.details() or "")

    cleanup(stubs, "pushed")
    for model in ("pushed", *names.all):
        assert not ready_on(tritonserver, model), model
