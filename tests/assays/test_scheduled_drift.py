"""End to end: traffic through the gateway (tritonclient against MLServe) to a
deployed model that logs everything; an active assay with 2-second windows
sees the inputs shift and its scheduled results turn from OK to ALERT."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.grpc as triton
from google.protobuf.timestamp_pb2 import Timestamp

from mlserve_api.v1 import assay_pb2, assay_pb2_grpc, deployment_pb2, inference_log_pb2
from tests.support.checks import delete_model_quietly, wait_until
from tests.support.mlserve import MLServeProcess, Stubs
from tests.support.models import scale_model_files
from tests.support.pipelines import upload
from tests.support.users import PID

BASELINE = [i / 50 for i in range(50)]


@pytest.fixture(scope="module")
def deployed(stubs: Stubs) -> Iterator[str]:
    name = f"t-drift-{PID}"
    upload(stubs, scale_model_files(name, dims=(4,)), name)
    policy = inference_log_pb2.LoggingPolicy(
        mode=inference_log_pb2.LOGGING_MODE_ALL, sample_rate=1.0
    )
    stubs.deployments.CreateDeployment(
        deployment_pb2.CreateDeploymentRequest(
            wait=True, deployment=deployment_pb2.Deployment(model=name, logging=policy)
        ),
        metadata=stubs.auth,
    )
    yield name
    stubs.deployments.DeleteDeployment(
        deployment_pb2.DeleteDeploymentRequest(name=name), metadata=stubs.auth
    )
    delete_model_quietly(stubs, name)


def test_a_shifted_input_turns_scheduled_results_from_ok_to_alert(
    mlserve: MLServeProcess, stubs: Stubs, deployed: str
) -> None:
    assays = assay_pb2_grpc.AssayServiceStub(stubs.channel)
    start = Timestamp()
    start.FromDatetime(dt.datetime.now(dt.timezone.utc).replace(microsecond=0))
    name = f"{deployed}-drift"
    assays.CreateAssay(
        assay_pb2.CreateAssayRequest(
            assay=assay_pb2.Assay(
                name=name,
                model=deployed,
                path=assay_pb2.AssayPath(tensor="input INPUT 0"),
                baseline=assay_pb2.AssayBaseline(
                    values=assay_pb2.AssayInlineValues(values=BASELINE)
                ),
                window=assay_pb2.AssayWindow(width_seconds=2, start_time=start),
            )
        ),
        metadata=stubs.auth,
    )
    client = triton.InferenceServerClient(mlserve.address)
    headers = {"authorization": f"Bearer {stubs.key}"}

    def send(shift: float) -> None:
        for value in BASELINE[::2]:
            tensor = triton.InferInput("INPUT", [4], "FP32")
            tensor.set_data_from_numpy(np.array([value + shift, 0, 0, 0], dtype=np.float32))
            client.infer(deployed, [tensor], headers=headers)

    def results() -> list[assay_pb2.AssayResult]:
        answer = assays.ListAssayResults(
            assay_pb2.ListAssayResultsRequest(name=name, page_size=1000), metadata=stubs.auth
        )
        return list(answer.results)

    def first(status: int, shift: float) -> assay_pb2.AssayResult:
        found: list[assay_pb2.AssayResult] = []

        def seen() -> bool:
            send(shift)
            found[:] = [r for r in results() if r.status == status]
            return bool(found)

        wait_until(seen, timeout=120)
        return found[0]

    try:
        ok = first(assay_pb2.ASSAY_STATUS_OK, 0.0)
        alert = first(assay_pb2.ASSAY_STATUS_ALERT, 5.0)
        assert ok.count > 0
        assert alert.window_start.ToDatetime() > ok.window_start.ToDatetime()
        assert alert.score > 0.25
        assert alert.window_densities[-1] > 0  # the shifted values land in the right outlier bin
        assert len(alert.edges) == 6
        assert len(alert.baseline_densities) == len(alert.bin_scores) == 7
        starts = [r.window_start.ToDatetime() for r in results()]
        assert starts == sorted(set(starts))  # each window once, oldest first
    finally:
        assays.DeleteAssay(assay_pb2.DeleteAssayRequest(name=name), metadata=stubs.auth)
