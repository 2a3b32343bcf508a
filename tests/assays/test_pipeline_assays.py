"""Assays of a pipeline, end to end: calls through the gateway (tritonclient
against MLServe) to a deployed three-step pipeline that logs everything; an
assay names the pipeline and a path into its own inputs and outputs, and
RunAssay scores the logged calls. A private pipeline another workspace cannot
see answers NOT_FOUND exactly as a missing one."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from google.protobuf.timestamp_pb2 import Timestamp

from mlserve_api.v1 import assay_pb2, assay_pb2_grpc, deployment_pb2, inference_log_pb2
from tests.support.checks import delete_model_quietly, expect_error, wait_until
from tests.support.commands import mlserve_cli
from tests.support.mlserve import MLServeProcess, Stubs
from tests.support.models import add_model_files, scale_model_files
from tests.support.pipelines import Members, chain, cleanup, create, upload
from tests.support.users import PID, make_user

VALUES = [i / 20 for i in range(20)]
B = 10.0


def _stamp(moment: dt.datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


@pytest.fixture(scope="module")
def assays(stubs: Stubs) -> assay_pb2_grpc.AssayServiceStub:
    return assay_pb2_grpc.AssayServiceStub(stubs.channel)


@pytest.fixture(scope="module")
def members(stubs: Stubs) -> Iterator[Members]:
    names = Members(f"t-apl-{PID}")
    upload(stubs, scale_model_files(names.pre, factor=2.0), names.pre)
    upload(stubs, add_model_files(name=names.add), names.add)
    upload(stubs, scale_model_files(names.post, offset=100.0), names.post)
    yield names
    for member in names.all:
        delete_model_quietly(stubs, member)


@pytest.fixture(scope="module")
def pipeline(stubs: Stubs, members: Members) -> Iterator[str]:
    """Pipeline OUT = 2·A + B + 100, deployed with every call logged."""
    name = f"t-apl-chain-{PID}"
    create(stubs, chain(name, members.all))
    policy = inference_log_pb2.LoggingPolicy(
        mode=inference_log_pb2.LOGGING_MODE_ALL, sample_rate=1.0
    )
    stubs.deployments.CreateDeployment(
        deployment_pb2.CreateDeploymentRequest(
            wait=True, deployment=deployment_pb2.Deployment(pipeline=name, logging=policy)
        ),
        metadata=stubs.auth,
        timeout=180,
    )
    yield name
    cleanup(stubs, name)


@pytest.fixture(scope="module")
def traffic(mlserve: MLServeProcess, stubs: Stubs, pipeline: str) -> dt.datetime:
    """Calls with A[0] = VALUES through the gateway; when they began (whole second)."""
    began = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    client = triton.InferenceServerClient(mlserve.address)
    headers = {"authorization": f"Bearer {stubs.key}"}
    for value in VALUES:
        a = triton.InferInput("A", [4], "FP32")
        a.set_data_from_numpy(np.array([value, 0, 0, 0], dtype=np.float32))
        b = triton.InferInput("B", [4], "FP32")
        b.set_data_from_numpy(np.full(4, B, dtype=np.float32))
        client.infer(pipeline, [a, b], headers=headers)

    def logged() -> int:
        answer = stubs.logs.ListInferenceLogs(
            inference_log_pb2.ListInferenceLogsRequest(model=pipeline, page_size=1000),
            metadata=stubs.auth,
        )
        return len(answer.records)

    wait_until(lambda: logged() == len(VALUES), timeout=60)
    return began


def _assay(pipeline: str, name: str, path: str, began: dt.datetime) -> assay_pb2.Assay:
    return assay_pb2.Assay(
        name=name,
        pipeline=pipeline,
        path=assay_pb2.AssayPath(tensor=path),
        baseline=assay_pb2.AssayBaseline(values=assay_pb2.AssayInlineValues(values=VALUES)),
        window=assay_pb2.AssayWindow(width_seconds=3600, start_time=_stamp(began)),
        summarizer=assay_pb2.AssaySummarizer(num_bins=5),
    )


def _run(
    assays: assay_pb2_grpc.AssayServiceStub, stubs: Stubs, began: dt.datetime, **which: object
) -> assay_pb2.AssayResult:
    answer = assays.RunAssay(
        assay_pb2.RunAssayRequest(
            range=assay_pb2.AssayTimeRange(
                start_time=_stamp(began), end_time=_stamp(began + dt.timedelta(seconds=1))
            ),
            **which,  # type: ignore[arg-type]
        ),
        metadata=stubs.auth,
    )
    (result,) = answer.results
    return result


def test_an_assay_of_a_pipeline_scores_its_logged_inputs_and_outputs(
    mlserve: MLServeProcess,
    assays: assay_pb2_grpc.AssayServiceStub,
    stubs: Stubs,
    pipeline: str,
    traffic: dt.datetime,
) -> None:
    name = f"{pipeline}-a"
    created = assays.CreateAssay(
        assay_pb2.CreateAssayRequest(assay=_assay(pipeline, name, "input A 0", traffic)),
        metadata=stubs.auth,
    )
    try:
        assert (created.pipeline, created.model, created.path.tensor) == (pipeline, "", "A")
        assert created.workspace
        listed = assays.ListAssays(
            assay_pb2.ListAssaysRequest(pipeline=pipeline), metadata=stubs.auth
        )
        assert [a.name for a in listed.assays] == [name]
        everything = assays.ListAssays(
            assay_pb2.ListAssaysRequest(page_size=1000), metadata=stubs.auth
        )
        assert name in [a.name for a in everything.assays]
        listed_by_cli = mlserve_cli(mlserve, "assays", "list", "--pipeline", pipeline)
        assert listed_by_cli.returncode == 0, listed_by_cli.stderr
        assert f"pipeline {pipeline}" in listed_by_cli.stdout
        shown = mlserve_cli(mlserve, "assays", "get", name)
        assert f"pipeline {pipeline}" in shown.stdout
        assert "baseline 20 values" in shown.stdout
        same = _run(assays, stubs, traffic, name=name)
        assert (same.count, same.score, same.status) == (
            len(VALUES),
            0.0,
            assay_pb2.ASSAY_STATUS_OK,
        )
        # The pipeline's output, 2·A + B + 100, against A's values: all in the right outlier bin.
        shifted = _run(assays, stubs, traffic, assay=_assay(pipeline, "", "output 0 0", traffic))
        assert shifted.count == len(VALUES)
        assert shifted.status == assay_pb2.ASSAY_STATUS_ALERT
        assert list(shifted.window_densities) == [0, 0, 0, 0, 0, 0, 1]
        # The log records the deployed pipeline version: version 1 holds every call.
        pinned = _assay(pipeline, "", "input A 0", traffic)
        pinned.version = 1
        assert _run(assays, stubs, traffic, assay=pinned).count == len(VALUES)
    finally:
        assays.DeleteAssay(assay_pb2.DeleteAssayRequest(name=name), metadata=stubs.auth)


@pytest.mark.parametrize(
    ("path", "named"),
    [
        ("input NOPE 0", "pipeline 't-apl-chain-"),
        ("input NOPE 0", "(its inputs: A, B)"),
        ("output 1 0", "(its outputs: OUT)"),
        ("output OUT -1", "path.index -1"),
    ],
)
def test_a_path_the_pipeline_lacks_is_invalid_and_stores_nothing(
    assays: assay_pb2_grpc.AssayServiceStub,
    stubs: Stubs,
    pipeline: str,
    traffic: dt.datetime,
    path: str,
    named: str,
) -> None:
    name = f"{pipeline}-bad"
    error = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        assays.CreateAssay,
        assay_pb2.CreateAssayRequest(assay=_assay(pipeline, name, path, traffic)),
        metadata=stubs.auth,
    )
    assert named in (error.details() or "")
    listed = assays.ListAssays(assay_pb2.ListAssaysRequest(pipeline=pipeline), metadata=stubs.auth)
    assert name not in [a.name for a in listed.assays]


def test_naming_both_a_model_and_a_pipeline_is_invalid(
    assays: assay_pb2_grpc.AssayServiceStub, stubs: Stubs, pipeline: str, traffic: dt.datetime
) -> None:
    assay = _assay(pipeline, f"{pipeline}-both", "input A 0", traffic)
    assay.model = f"t-apl-{PID}-pre"
    error = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        assays.CreateAssay,
        assay_pb2.CreateAssayRequest(assay=assay),
        metadata=stubs.auth,
    )
    assert "model or pipeline" in (error.details() or "")
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        assays.GetAssay,
        assay_pb2.GetAssayRequest(name=assay.name),
        metadata=stubs.auth,
    )


def test_a_private_pipeline_answers_like_a_missing_one(
    assays: assay_pb2_grpc.AssayServiceStub, stubs: Stubs, pipeline: str, traffic: dt.datetime
) -> None:
    name = f"{pipeline}-private"
    assays.CreateAssay(
        assay_pb2.CreateAssayRequest(assay=_assay(pipeline, name, "input A 0", traffic)),
        metadata=stubs.auth,
    )
    try:
        outsider = make_user(stubs, f"t-apl-outsider-{PID}", "editor")
        theirs = assay_pb2_grpc.AssayServiceStub(outsider.channel)
        missing = f"{pipeline}-nope"
        answers = {}
        for target in (pipeline, missing):
            assay = _assay(target, f"{name}-2", "input A 0", traffic)
            for call, request in (
                (theirs.CreateAssay, assay_pb2.CreateAssayRequest(assay=assay)),
                (theirs.PreviewBaseline, assay_pb2.PreviewBaselineRequest(assay=assay)),
                (theirs.ListAssays, assay_pb2.ListAssaysRequest(pipeline=target)),
            ):
                error = expect_error(
                    grpc.StatusCode.NOT_FOUND, call, request, metadata=outsider.auth
                )
                answers.setdefault(target, []).append((error.details() or "").replace(target, "P"))
        assert answers[pipeline] == answers[missing]
        hidden = expect_error(
            grpc.StatusCode.NOT_FOUND,
            theirs.GetAssay,
            assay_pb2.GetAssayRequest(name=name),
            metadata=outsider.auth,
        )
        assert "does not exist" in (hidden.details() or "")
        expect_error(
            grpc.StatusCode.NOT_FOUND,
            theirs.RunAssay,
            assay_pb2.RunAssayRequest(
                name=name,
                range=assay_pb2.AssayTimeRange(
                    start_time=_stamp(traffic), end_time=_stamp(traffic + dt.timedelta(seconds=1))
                ),
            ),
            metadata=outsider.auth,
        )
        listed = theirs.ListAssays(assay_pb2.ListAssaysRequest(), metadata=outsider.auth)
        assert name not in [a.name for a in listed.assays]
    finally:
        assays.DeleteAssay(assay_pb2.DeleteAssayRequest(name=name), metadata=stubs.auth)


def test_deleting_a_pipeline_deletes_its_assays(
    assays: assay_pb2_grpc.AssayServiceStub, stubs: Stubs, members: Members
) -> None:
    name = f"t-apl-gone-{PID}"
    create(stubs, chain(name, members.all))
    try:
        began = dt.datetime.now(dt.timezone.utc)
        assays.CreateAssay(
            assay_pb2.CreateAssayRequest(assay=_assay(name, f"{name}-a", "input A 0", began)),
            metadata=stubs.auth,
        )
    finally:
        cleanup(stubs, name)
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        assays.GetAssay,
        assay_pb2.GetAssayRequest(name=f"{name}-a"),
        metadata=stubs.auth,
    )
    listed = assays.ListAssays(assay_pb2.ListAssaysRequest(page_size=1000), metadata=stubs.auth)
    assert f"{name}-a" not in [a.name for a in listed.assays]


def test_a_pipeline_version_that_does_not_exist_is_invalid(
    assays: assay_pb2_grpc.AssayServiceStub, stubs: Stubs, pipeline: str, traffic: dt.datetime
) -> None:
    assay = _assay(pipeline, f"{pipeline}-v9", "input A 0", traffic)
    assay.version = 9
    error = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        assays.CreateAssay,
        assay_pb2.CreateAssayRequest(assay=assay),
        metadata=stubs.auth,
    )
    assert f"version: pipeline {pipeline!r} has no version 9" in (error.details() or "")
    listed = assays.ListAssays(assay_pb2.ListAssaysRequest(pipeline=pipeline), metadata=stubs.auth)
    assert assay.name not in [a.name for a in listed.assays]
