"""The inference log as a user meets it, with a real MLServe and a real Triton:
a deployment's policy records gateway calls, ListInferenceLogs reads them
back decoded, DuckDB reads the Parquet files, and every bad input gets its
exact code with nothing written."""

from __future__ import annotations

import datetime as dt
import queue
from collections.abc import Iterator

import duckdb
import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2

from mlserve_api.v1 import app_pb2, deployment_pb2, inference_log_pb2, user_pb2
from mlserve_client import Client
from tests.support.checks import delete_model_quietly, expect_error, wait_until
from tests.support.commands import grpcurl, mlserve_cli
from tests.support.mlserve import MLServeProcess, Stubs
from tests.support.models import upload_add
from tests.support.users import PID, make_user

ALL = inference_log_pb2.LoggingPolicy(mode=inference_log_pb2.LOGGING_MODE_ALL, sample_rate=1.0)


def _deploy(stubs: Stubs, model: str, policy: inference_log_pb2.LoggingPolicy | None) -> None:
    deployment = deployment_pb2.Deployment(model=model)
    if policy is not None:
        deployment.logging.CopyFrom(policy)
    stubs.deployments.CreateDeployment(
        deployment_pb2.CreateDeploymentRequest(wait=True, deployment=deployment),
        metadata=stubs.auth,
    )


def _infer(mlserve: MLServeProcess, stubs: Stubs, model: str, times: int = 1) -> None:
    client = triton.InferenceServerClient(mlserve.address)
    inputs = [triton.InferInput("INPUT0", [4], "FP32"), triton.InferInput("INPUT1", [4], "FP32")]
    inputs[0].set_data_from_numpy(np.array([1, 2, 3, 4], dtype=np.float32))
    inputs[1].set_data_from_numpy(np.array([10, 20, 30, 40], dtype=np.float32))
    for n in range(times):
        client.infer(
            model, inputs, request_id=f"r{n}", headers={"authorization": f"Bearer {stubs.key}"}
        )


def _records(stubs: Stubs, model: str, **fields: object) -> list[inference_log_pb2.InferenceRecord]:
    request = inference_log_pb2.ListInferenceLogsRequest(model=model, **fields)  # type: ignore[arg-type]
    return list(stubs.logs.ListInferenceLogs(request, metadata=stubs.auth).records)


@pytest.fixture(scope="module")
def logged(mlserve: MLServeProcess, stubs: Stubs) -> Iterator[str]:
    """A deployed model whose policy records everything, called three times."""
    model = f"t-logged-{PID}"
    upload_add(stubs, model)
    _deploy(stubs, model, ALL)
    _infer(mlserve, stubs, model, 3)
    wait_until(lambda: len(_records(stubs, model)) == 3)
    yield model
    stubs.deployments.DeleteDeployment(
        deployment_pb2.DeleteDeploymentRequest(name=model), metadata=stubs.auth
    )
    delete_model_quietly(stubs, model)


def test_gateway_calls_are_recorded_with_decoded_tensors(logged: str, stubs: Stubs) -> None:
    records = _records(stubs, logged)
    assert [r.request_id for r in records] == ["r2", "r1", "r0"]  # newest first
    record = records[0]
    assert (record.model, record.version, record.status, record.caller) == (
        logged,
        1,
        "OK",
        "admin",
    )
    assert (record.caller_kind, record.server, record.source) == ("user", "local", "gateway")
    inputs = {t.name: t for t in record.inputs}
    assert inputs["INPUT0"].datatype == "FP32"
    assert list(inputs["INPUT0"].shape) == [4]
    assert list(inputs["INPUT0"].fp_contents) == [1, 2, 3, 4]
    [output] = record.outputs
    assert list(output.fp_contents) == [11, 22, 33, 44]
    assert record.latency_ms > 0
    assert record.request_bytes > 0
    assert record.response_bytes > 0
    oldest = _records(stubs, logged, order=inference_log_pb2.LIST_ORDER_OLDEST_FIRST)
    assert [r.request_id for r in oldest] == ["r0", "r1", "r2"]


def test_stream_calls_are_recorded_too(
    mlserve: MLServeProcess, stubs: Stubs, model_name: str
) -> None:
    upload_add(stubs, model_name)
    _deploy(stubs, model_name, ALL)
    try:
        answers: queue.Queue[object] = queue.Queue()
        client = triton.InferenceServerClient(mlserve.address)
        client.start_stream(
            callback=lambda result, error: answers.put(error or result),
            headers={"authorization": f"Bearer {stubs.key}"},
        )
        inputs = [
            triton.InferInput("INPUT0", [4], "FP32"),
            triton.InferInput("INPUT1", [4], "FP32"),
        ]
        for tensor in inputs:
            tensor.set_data_from_numpy(np.full(4, 2, dtype=np.float32))
        client.async_stream_infer(model_name, inputs, request_id="streamed")
        assert answers.get(timeout=30) is not None
        client.stop_stream()
        wait_until(lambda: len(_records(stubs, model_name)) == 1)
        [record] = _records(stubs, model_name)
        assert (record.request_id, record.status, record.server) == ("streamed", "OK", "local")
        assert list(record.outputs[0].fp_contents) == [4, 4, 4, 4]
    finally:
        stubs.deployments.DeleteDeployment(
            deployment_pb2.DeleteDeploymentRequest(name=model_name), metadata=stubs.auth
        )
        delete_model_quietly(stubs, model_name)


def test_sampling_by_a_header_keeps_each_key_in_or_out(
    mlserve: MLServeProcess, stubs: Stubs, model_name: str
) -> None:
    upload_add(stubs, model_name)
    policy = inference_log_pb2.LoggingPolicy(sample_rate=0.5, sampling_key="header:x-user")
    _deploy(stubs, model_name, policy)
    try:
        client = triton.InferenceServerClient(mlserve.address)
        inputs = [
            triton.InferInput("INPUT0", [4], "FP32"),
            triton.InferInput("INPUT1", [4], "FP32"),
        ]
        for tensor in inputs:
            tensor.set_data_from_numpy(np.ones(4, dtype=np.float32))
        users = [f"user-{n}" for n in range(12)]
        for round_ in range(2):
            for user in users:
                headers = {"authorization": f"Bearer {stubs.key}", "x-user": user}
                client.infer(model_name, inputs, request_id=f"{user}/{round_}", headers=headers)
        # A marker call last: once it is listed, everything before it was written.
        stubs.logs.UpdateLoggingPolicy(
            inference_log_pb2.UpdateLoggingPolicyRequest(
                policy=inference_log_pb2.LoggingPolicy(deployment=model_name)
            ),
            metadata=stubs.auth,
        )
        client.infer(model_name, inputs, request_id="marker",
                     headers={"authorization": f"Bearer {stubs.key}"})  # fmt: skip
        wait_until(lambda: any(r.request_id == "marker" for r in _records(stubs, model_name)))
        seen = [r.request_id.split("/")[0] for r in _records(stubs, model_name, page_size=100)]
        kept = {user for user in seen if user != "marker"}
        assert 0 < len(kept) < len(users)
        assert all(seen.count(user) == 2 for user in kept)  # in both rounds, or in neither
    finally:
        stubs.deployments.DeleteDeployment(
            deployment_pb2.DeleteDeploymentRequest(name=model_name), metadata=stubs.auth
        )
        delete_model_quietly(stubs, model_name)


def test_pages_follow_each_other(logged: str, stubs: Stubs) -> None:
    first = stubs.logs.ListInferenceLogs(
        inference_log_pb2.ListInferenceLogsRequest(model=logged, page_size=2), metadata=stubs.auth
    )
    assert len(first.records) == 2
    assert first.next_page_token
    second = stubs.logs.ListInferenceLogs(
        inference_log_pb2.ListInferenceLogsRequest(
            model=logged, page_size=2, page_token=first.next_page_token
        ),
        metadata=stubs.auth,
    )
    assert [r.request_id for r in second.records] == ["r0"]
    assert second.next_page_token == ""


def test_duckdb_reads_the_files_it_did_not_write(logged: str, mlserve: MLServeProcess) -> None:
    rows = duckdb.sql(
        f"""SELECT request_id, "input.INPUT0", "output.OUTPUT0", status
            FROM read_parquet('{mlserve.home}/logs/**/*.parquet', hive_partitioning = true,
                              union_by_name = true)
            WHERE model = '{logged}' ORDER BY request_id"""
    ).fetchall()
    assert rows == [(f"r{n}", [1, 2, 3, 4], [11, 22, 33, 44], "OK") for n in range(3)]


def test_the_policy_changes_without_redeploying(
    mlserve: MLServeProcess, stubs: Stubs, model_name: str
) -> None:
    upload_add(stubs, model_name)
    _deploy(
        stubs, model_name, inference_log_pb2.LoggingPolicy(mode=inference_log_pb2.LOGGING_MODE_OFF)
    )
    try:
        _infer(mlserve, stubs, model_name)
        stubs.logs.UpdateLoggingPolicy(
            inference_log_pb2.UpdateLoggingPolicyRequest(
                policy=inference_log_pb2.LoggingPolicy(deployment=model_name)
            ),
            metadata=stubs.auth,
        )
        _infer(mlserve, stubs, model_name)
        wait_until(lambda: len(_records(stubs, model_name)) == 1)
        [record] = _records(stubs, model_name)
        assert list(record.inputs) == []  # the default: metadata only
        got = stubs.deployments.GetDeployment(
            deployment_pb2.GetDeploymentRequest(name=model_name), metadata=stubs.auth
        )
        assert got.logging.mode == inference_log_pb2.LOGGING_MODE_METADATA
        assert got.logging.dropped == 0
        # Both calls, logged or not, count in the recent latency.
        assert got.latency.calls == 2
        assert 0 < got.latency.p50_ms <= got.latency.p99_ms
        assert got.latency.window_seconds == 300
    finally:
        stubs.deployments.DeleteDeployment(
            deployment_pb2.DeleteDeploymentRequest(name=model_name), metadata=stubs.auth
        )
        delete_model_quietly(stubs, model_name)


def test_record_inference_adds_an_operation_from_outside(logged: str, stubs: Stubs) -> None:
    tensor = inference_log_pb2.Tensor(name="x", datatype="INT64", shape=[2], int_contents=[7, -8])
    answer = stubs.logs.RecordInference(
        inference_log_pb2.RecordInferenceRequest(
            model=logged, inputs=[tensor], output_json='{"score": 0.5}', owner="scorer"
        ),
        metadata=stubs.auth,
    )
    wait_until(lambda: any(r.id == answer.id for r in _records(stubs, logged, caller="scorer")))
    [record] = _records(stubs, logged, caller="scorer")
    assert record.source == "recorded"
    assert list(record.inputs[0].int_contents) == [7, -8]
    assert record.output_json == '{"score": 0.5}'


def test_the_log_service_has_its_own_health(stubs: Stubs) -> None:
    answer = stubs.health.Check(
        health_pb2.HealthCheckRequest(service="mlserve.v1.InferenceLogService")
    )
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


# --- bad input -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "field"),
    [
        (inference_log_pb2.LoggingPolicy(sample_rate=1.5), "logging.sample_rate"),
        (inference_log_pb2.LoggingPolicy(sample_rate=-0.5), "logging.sample_rate"),
        (inference_log_pb2.LoggingPolicy(mode=99), "logging.mode"),  # type: ignore[arg-type]
        (inference_log_pb2.LoggingPolicy(max_payload_bytes=-1), "logging.max_payload_bytes"),
    ],
)
def test_a_bad_policy_at_deploy_time_deploys_nothing(
    stubs: Stubs, model_name: str, policy: inference_log_pb2.LoggingPolicy, field: str
) -> None:
    upload_add(stubs, model_name)
    try:
        error = expect_error(grpc.StatusCode.INVALID_ARGUMENT, _deploy, stubs, model_name, policy)
        assert field in (error.details() or "")
        expect_error(
            grpc.StatusCode.NOT_FOUND,
            stubs.deployments.GetDeployment,
            deployment_pb2.GetDeploymentRequest(name=model_name),
            metadata=stubs.auth,
        )
        expect_error(
            grpc.StatusCode.INVALID_ARGUMENT,
            stubs.logs.UpdateLoggingPolicy,
            inference_log_pb2.UpdateLoggingPolicyRequest(
                policy=inference_log_pb2.LoggingPolicy(deployment=model_name, **_fields(policy))
            ),
            metadata=stubs.auth,
        )
        got = stubs.logs.GetLoggingPolicy(
            inference_log_pb2.GetLoggingPolicyRequest(deployment=model_name), metadata=stubs.auth
        )
        assert got.mode == inference_log_pb2.LOGGING_MODE_METADATA  # nothing stored
    finally:
        delete_model_quietly(stubs, model_name)


def _fields(policy: inference_log_pb2.LoggingPolicy) -> dict[str, object]:
    return {f.name: v for f, v in policy.ListFields()}


def _stamp(moment: dt.datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def test_a_time_range_backwards_is_invalid(logged: str, stubs: Stubs) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    request = inference_log_pb2.ListInferenceLogsRequest(
        model=logged, start_time=_stamp(now), end_time=_stamp(now - dt.timedelta(hours=1))
    )
    error = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT, stubs.logs.ListInferenceLogs, request, metadata=stubs.auth
    )
    assert "start_time is after end_time" in (error.details() or "")


def test_a_tampered_token_is_invalid(logged: str, stubs: Stubs) -> None:
    first = stubs.logs.ListInferenceLogs(
        inference_log_pb2.ListInferenceLogsRequest(model=logged, page_size=1), metadata=stubs.auth
    )
    token = first.next_page_token
    tampered = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    for bad in (tampered, "not a token"):
        expect_error(
            grpc.StatusCode.INVALID_ARGUMENT,
            stubs.logs.ListInferenceLogs,
            inference_log_pb2.ListInferenceLogsRequest(model=logged, page_size=1, page_token=bad),
            metadata=stubs.auth,
        )
    # A token from another query is refused too.
    expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        stubs.logs.ListInferenceLogs,
        inference_log_pb2.ListInferenceLogsRequest(
            model=logged, page_size=1, page_token=token, status="OK"
        ),
        metadata=stubs.auth,
    )


def test_a_private_models_log_answers_like_a_missing_one(logged: str, stubs: Stubs) -> None:
    outsider = make_user(stubs, f"t-log-outsider-{PID}", "editor")
    hidden = expect_error(
        grpc.StatusCode.NOT_FOUND,
        outsider.logs.ListInferenceLogs,
        inference_log_pb2.ListInferenceLogsRequest(model=logged),
        metadata=outsider.auth,
    )
    missing = expect_error(
        grpc.StatusCode.NOT_FOUND,
        outsider.logs.ListInferenceLogs,
        inference_log_pb2.ListInferenceLogsRequest(model=f"{logged}-nope"),
        metadata=outsider.auth,
    )
    assert hidden.details() == missing.details().replace(f"{logged}-nope", logged)
    everything = outsider.logs.ListInferenceLogs(
        inference_log_pb2.ListInferenceLogsRequest(), metadata=outsider.auth
    )
    assert all(r.model != logged for r in everything.records)
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        outsider.logs.RecordInference,
        inference_log_pb2.RecordInferenceRequest(model=logged),
        metadata=outsider.auth,
    )
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        outsider.logs.UpdateLoggingPolicy,
        inference_log_pb2.UpdateLoggingPolicyRequest(
            policy=inference_log_pb2.LoggingPolicy(deployment=logged)
        ),
        metadata=outsider.auth,
    )


def test_a_consumer_may_not_list_logs(logged: str, stubs: Stubs) -> None:
    app = f"t-log-app-{PID}"
    stubs.apps.CreateApp(app_pb2.CreateAppRequest(app=app_pb2.App(name=app)), metadata=stubs.auth)
    stubs.apps.AddRoute(app_pb2.AddRouteRequest(app=app, model=logged), metadata=stubs.auth)
    stubs.apps.AddConsumer(app_pb2.AddConsumerRequest(app=app, name="svc"), metadata=stubs.auth)
    key = stubs.users.CreateApiKey(
        user_pb2.CreateApiKeyRequest(app=app, consumer="svc"), metadata=stubs.auth
    ).secret
    expect_error(
        grpc.StatusCode.PERMISSION_DENIED,
        stubs.logs.ListInferenceLogs,
        inference_log_pb2.ListInferenceLogsRequest(model=logged),
        metadata=[("authorization", f"Bearer {key}")],
    )


def test_record_inference_refuses_bad_tensors_and_writes_nothing(logged: str, stubs: Stubs) -> None:
    before = len(_records(stubs, logged, page_size=1000))
    for tensor in (
        inference_log_pb2.Tensor(name="x", datatype="FP99", shape=[1], fp_contents=[1]),
        inference_log_pb2.Tensor(name="x", datatype="FP32", shape=[3], fp_contents=[1]),
        inference_log_pb2.Tensor(name="x", datatype="INT8", shape=[-1], int_contents=[1]),
    ):
        expect_error(
            grpc.StatusCode.INVALID_ARGUMENT,
            stubs.logs.RecordInference,
            inference_log_pb2.RecordInferenceRequest(model=logged, inputs=[tensor]),
            metadata=stubs.auth,
        )
    expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        stubs.logs.RecordInference,
        inference_log_pb2.RecordInferenceRequest(model=logged, input_json="{not json"),
        metadata=stubs.auth,
    )
    assert len(_records(stubs, logged, page_size=1000)) == before


# --- the Python client, the CLI and grpcurl ----------------------------------------


def test_the_python_client_reads_the_log_as_records_or_a_table(
    logged: str, mlserve: MLServeProcess
) -> None:
    with Client(mlserve.address, mlserve.key) as client:
        records = list(client.inference_logs(logged, since=dt.timedelta(hours=1), caller="admin"))
        assert [r.request_id for r in records] == ["r2", "r1", "r0"]
        table = client.inference_logs(logged, table=True, oldest_first=True, caller="admin")
    frame = table.to_pandas()
    assert list(frame["request_id"]) == ["r0", "r1", "r2"]
    assert [list(v) for v in frame["input.INPUT0"]] == [[1, 2, 3, 4]] * 3


def test_the_cli_lists_the_log_and_sets_a_policy_at_deploy_time(
    logged: str, mlserve: MLServeProcess, stubs: Stubs, model_name: str
) -> None:
    listed = mlserve_cli(mlserve, "logs", "list", logged, "--since", "1h", "--caller", "admin")
    assert listed.returncode == 0, listed.stderr
    assert all(f"r{n}" in listed.stdout for n in range(3))
    upload_add(stubs, model_name)
    try:
        deployed = mlserve_cli(mlserve, "deploy", model_name, "--log", "all", "--sample", "0.1")
        assert deployed.returncode == 0, deployed.stderr
        shown = mlserve_cli(mlserve, "logs", "policy", model_name)
        assert "log all  sample 0.1" in shown.stdout, shown.stdout
        refused = mlserve_cli(mlserve, "logs", "policy", model_name, "--sample", "2")
        assert refused.returncode == 1
        assert "INVALID_ARGUMENT" in refused.stderr
        assert "logging.sample_rate" in refused.stderr
    finally:
        stubs.deployments.DeleteDeployment(
            deployment_pb2.DeleteDeploymentRequest(name=model_name), metadata=stubs.auth
        )
        delete_model_quietly(stubs, model_name)


def test_grpcurl_lists_the_log(logged: str, mlserve: MLServeProcess) -> None:
    answer = grpcurl(
        mlserve,
        "-d",
        f'{{"model": "{logged}", "caller": "admin", "page_size": 1}}',
        mlserve.address,
        "mlserve.v1.InferenceLogService/ListInferenceLogs",
    )
    assert answer.returncode == 0, answer.stderr
    assert '"requestId": "r2"' in answer.stdout
    assert '"fpContents"' in answer.stdout
