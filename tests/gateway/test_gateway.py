"""Triton's own protocol on MLServe's port, as a tritonclient user meets it.

Every routed call is made twice, once through MLServe and once straight to
the embedded Triton that serves the model, and the answers must be the same.
Against the session's real MLServe and real Triton (plus, for the limits and
metrics, one more real MLServe with its own Triton); no mocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import subprocess
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from mlserve_api.v1 import deployment_pb2, model_pb2
from tests.support.checks import wait_until
from tests.support.commands import GRPCURL
from tests.support.mlserve import MLServeProcess, Stubs, free_port
from tests.support.models import local_triton, upload_add
from tests.support.tritons import add_inputs, deploy, remove_model, wait_for

MiB = 1024 * 1024
Code = grpc.StatusCode
READY = deployment_pb2.DEPLOYMENT_STATE_READY
Headers = dict[str, str]


# --- fixtures ---------------------------------------------------------------


@pytest.fixture(scope="module")
def added(stubs: Stubs) -> Iterator[str]:
    """The "add" model with versions 1 (offset 0) and 2 (offset 100); version 2 deployed."""
    name = f"t-gateway-add-{os.getpid() % 1000}"
    upload_add(stubs, name, offset=0.0)
    upload_add(stubs, name, offset=100.0)
    deployment = deploy(stubs, name)
    assert (deployment.version, deployment.state) == (2, READY), deployment
    yield name
    remove_model(stubs, name)


@pytest.fixture(scope="module")
def headers(mlserve: MLServeProcess) -> Headers:
    return {"authorization": f"Bearer {mlserve.key}"}


@pytest.fixture(scope="module")
def gateway(mlserve: MLServeProcess) -> Iterator[triton.InferenceServerClient]:
    """tritonclient pointed at MLServe instead of at a Triton."""
    client = triton.InferenceServerClient(mlserve.address)
    yield client
    client.close()


@pytest.fixture(scope="module")
def direct(stubs: Stubs) -> Iterator[triton.InferenceServerClient]:
    """tritonclient pointed at the embedded Triton itself."""
    client = local_triton(stubs)
    yield client
    client.close()


def triton_error(call: Callable[..., Any], *args: Any, **kwargs: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as failure:
        call(*args, **kwargs)
    return failure.value


def code_of(error: InferenceServerException) -> str:
    """tritonclient's status text, e.g. "StatusCode.NOT_FOUND"."""
    return str(error.status())


# --- the same answers as Triton ---------------------------------------------


def test_infer_is_identical_to_direct(
    gateway: triton.InferenceServerClient,
    direct: triton.InferenceServerClient,
    headers: Headers,
    added: str,
) -> None:
    through = gateway.infer(added, add_inputs(), headers=headers)
    straight = direct.infer(added, add_inputs())
    np.testing.assert_allclose(through.as_numpy("OUTPUT0"), [111, 122, 133, 144])
    # The response bytes are forwarded, not rebuilt: the whole message matches.
    assert through.get_response() == straight.get_response()


def test_async_infer_with_callback(
    gateway: triton.InferenceServerClient,
    direct: triton.InferenceServerClient,
    headers: Headers,
    added: str,
) -> None:
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    a = np.arange(8, dtype=np.float32)
    gateway.async_infer(
        added,
        add_inputs(a, a),
        callback=lambda result, error: answers.put((result, error)),
        request_id="via-mlserve",
        headers=headers,
    )
    result, error = answers.get(timeout=30)
    assert error is None, error
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), a + a + 100)
    straight = direct.infer(added, add_inputs(a, a), request_id="via-mlserve")
    assert result.get_response() == straight.get_response()


def test_model_and_server_queries_are_identical(
    gateway: triton.InferenceServerClient,
    direct: triton.InferenceServerClient,
    headers: Headers,
    added: str,
) -> None:
    assert gateway.get_model_metadata(added, headers=headers) == direct.get_model_metadata(added)
    assert gateway.get_model_config(added, headers=headers) == direct.get_model_config(added)
    assert gateway.is_model_ready(added, headers=headers) is direct.is_model_ready(added) is True
    assert gateway.is_server_live(headers=headers) is direct.is_server_live() is True
    assert gateway.is_server_ready(headers=headers) is direct.is_server_ready() is True

    def counted() -> int:
        return int(direct.get_inference_statistics(added).model_stats[0].inference_count)

    # The module's earlier tests called the model too: wait for this call's count.
    before = counted()
    gateway.infer(added, add_inputs(), headers=headers)  # so the statistics are not all zero
    # Triton counts a call just after sending its answer: wait for the count
    # (bounded), so the two reads below see the same, settled statistics.
    wait_for(lambda: counted() >= before + 1, timeout=30, what="Triton to count the inference")
    through = gateway.get_inference_statistics(added, headers=headers)
    assert through == direct.get_inference_statistics(added)
    assert through.model_stats[0].inference_count >= 1


def _stream(client: triton.InferenceServerClient, model: str, **kwargs: Any) -> list[Any]:
    """Three requests over one ModelStreamInfer stream; the answers by request id."""
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)), **kwargs)
    try:
        for index in range(3):
            a = np.full(4, index, dtype=np.float32)
            client.async_stream_infer(model, add_inputs(a, a), request_id=f"r{index}")
        received = [answers.get(timeout=30) for _ in range(3)]
    finally:
        client.stop_stream()
    for _, error in received:
        assert error is None, error
    return sorted((result for result, _ in received), key=lambda r: r.get_response().id)


def test_stream_infer_is_identical_to_direct(
    gateway: triton.InferenceServerClient,
    direct: triton.InferenceServerClient,
    headers: Headers,
    added: str,
) -> None:
    through = _stream(gateway, added, headers=headers)
    straight = _stream(direct, added)
    assert [r.get_response().id for r in through] == ["r0", "r1", "r2"]
    for index, result in enumerate(through):
        np.testing.assert_allclose(result.as_numpy("OUTPUT0"), [2 * index + 100] * 4)
    assert [r.get_response() for r in through] == [r.get_response() for r in straight]


def test_aio_client(mlserve: MLServeProcess, headers: Headers, added: str) -> None:
    async def use() -> tuple[Any, Any]:
        client = triton_aio.InferenceServerClient(mlserve.address)
        try:
            result = await client.infer(added, add_inputs(), headers=headers)
            metadata = await client.get_model_metadata(added, headers=headers)
        finally:
            await client.close()
        return result, metadata

    result, metadata = asyncio.run(use())
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), [111, 122, 133, 144])
    assert (metadata.name, list(metadata.versions)) == (added, ["2"])


def test_model_version_selects_the_deployed_one(
    gateway: triton.InferenceServerClient,
    direct: triton.InferenceServerClient,
    headers: Headers,
    added: str,
) -> None:
    for version in ("", "2"):
        result = gateway.infer(added, add_inputs(), model_version=version, headers=headers)
        assert result.get_response().model_version == "2"
        np.testing.assert_allclose(result.as_numpy("OUTPUT0"), [111, 122, 133, 144])
    for version in ("1", "7"):
        error = triton_error(
            gateway.infer, added, add_inputs(), model_version=version, headers=headers
        )
        assert code_of(error) == str(Code.FAILED_PRECONDITION), error
        assert f"version {version} of model '{added}' is not deployed" in error.message()
        assert "version 2 is" in error.message()
        # Like Triton: a version that cannot serve is "not ready", not an error.
        ready = gateway.is_model_ready(added, version, headers=headers)
        assert ready is direct.is_model_ready(added, version) is False


def test_grpcurl_model_ready_through_reflection(mlserve: MLServeProcess, added: str) -> None:
    def model_ready(name: str) -> dict[str, Any]:
        result = subprocess.run(
            [
                GRPCURL, "-plaintext", "-H", f"authorization: Bearer {mlserve.key}",
                "-d", json.dumps({"name": name}), mlserve.address,
                "inference.GRPCInferenceService/ModelReady",
            ],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        answer: dict[str, Any] = json.loads(result.stdout)
        return answer

    assert model_ready(added) == {"ready": True}
    assert model_ready("t-gateway-no-such-model") == {}  # proto3 JSON omits ready: false


# --- bad input ----------------------------------------------------------------


def test_unknown_model_is_not_found(
    gateway: triton.InferenceServerClient, headers: Headers
) -> None:
    name = "t-gateway-no-such-model"
    for call in (
        lambda: gateway.infer(name, add_inputs(), headers=headers),
        lambda: gateway.get_model_metadata(name, headers=headers),
        lambda: gateway.get_model_config(name, headers=headers),
    ):
        error = triton_error(call)
        assert code_of(error) == str(Code.NOT_FOUND), error
        assert error.message() == f"Request for unknown model: '{name}' is not found"


def test_uploaded_but_not_deployed_is_failed_precondition(
    stubs: Stubs, gateway: triton.InferenceServerClient, headers: Headers, model_name: str
) -> None:
    upload_add(stubs, model_name)
    try:
        for call in (
            lambda: gateway.infer(model_name, add_inputs(), headers=headers),
            lambda: gateway.get_model_metadata(model_name, headers=headers),
        ):
            error = triton_error(call)
            assert code_of(error) == str(Code.FAILED_PRECONDITION), error
            assert f"model '{model_name}' is not deployed" in error.message()
        assert gateway.is_model_ready(model_name, headers=headers) is False
    finally:
        remove_model(stubs, model_name)


def _bad_inputs(kind: str) -> list[triton.InferInput]:
    good = add_inputs()
    if kind == "wrong-input-name":
        renamed = triton.InferInput("INPUT9", [4], "FP32")
        renamed.set_data_from_numpy(np.ones(4, dtype=np.float32))
        return [good[0], renamed]
    if kind == "bad-shape":
        return add_inputs(np.ones(4, dtype=np.float32), np.ones((2, 2), dtype=np.float32))
    assert kind == "wrong-datatype"
    wrong = triton.InferInput("INPUT1", [4], "INT32")
    wrong.set_data_from_numpy(np.ones(4, dtype=np.int32))
    return [good[0], wrong]


@pytest.mark.parametrize("kind", ["wrong-input-name", "bad-shape", "wrong-datatype"])
def test_triton_errors_pass_through_unchanged(
    gateway: triton.InferenceServerClient,
    direct: triton.InferenceServerClient,
    headers: Headers,
    added: str,
    kind: str,
) -> None:
    through = triton_error(gateway.infer, added, _bad_inputs(kind), headers=headers)
    straight = triton_error(direct.infer, added, _bad_inputs(kind))
    assert code_of(straight) == str(Code.INVALID_ARGUMENT)
    assert (code_of(through), through.message()) == (code_of(straight), straight.message())


@pytest.mark.parametrize("credential", ["none", "wrong"])
def test_unauthenticated_on_every_kind_of_gateway_call(
    mlserve: MLServeProcess, gateway: triton.InferenceServerClient, added: str, credential: str
) -> None:
    bad: Headers | None = (
        None if credential == "none" else {"authorization": "Bearer mls_000000000000_" + "x" * 43}
    )
    calls: dict[str, Callable[[], Any]] = {
        "ModelInfer": lambda: gateway.infer(added, add_inputs(), headers=bad),
        "ModelReady": lambda: gateway.is_model_ready(added, headers=bad),
        "ServerLive": lambda: gateway.is_server_live(headers=bad),
        "RepositoryIndex": lambda: gateway.get_model_repository_index(headers=bad),
    }
    for method, call in calls.items():
        error = triton_error(call)
        assert code_of(error) == str(Code.UNAUTHENTICATED), (method, error)
        assert mlserve.key not in error.message()

    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    gateway.start_stream(callback=lambda result, error: answers.put((result, error)), headers=bad)
    try:
        # MLServe refuses the stream before reading a request, so sending may
        # already fail; the status comes through the callback either way.
        with contextlib.suppress(InferenceServerException):
            gateway.async_stream_infer(added, add_inputs())
        result, error = answers.get(timeout=30)
    finally:
        gateway.stop_stream()
    assert result is None
    assert code_of(error) == str(Code.UNAUTHENTICATED), error


def test_shared_memory_is_refused_with_a_reason(
    gateway: triton.InferenceServerClient, direct: triton.InferenceServerClient, headers: Headers
) -> None:
    for call in (
        lambda: gateway.register_system_shared_memory(
            "t-gateway-region", "/t-gateway-region", 1024, headers=headers
        ),
        lambda: gateway.get_system_shared_memory_status(headers=headers),
        lambda: gateway.unregister_system_shared_memory(headers=headers),
        lambda: gateway.get_cuda_shared_memory_status(headers=headers),
    ):
        error = triton_error(call)
        assert code_of(error) == str(Code.UNIMPLEMENTED), error
        assert "shared memory needs the client and Triton on one host" in error.message()
    assert not direct.get_system_shared_memory_status().regions


def test_log_and_trace_settings_never_reach_triton(
    gateway: triton.InferenceServerClient,
    direct: triton.InferenceServerClient,
    headers: Headers,
    added: str,
    tmp_path: Path,
) -> None:
    logs_before = direct.get_log_settings()
    traces_before = direct.get_trace_settings()
    target = tmp_path / "written-by-a-client.log"
    error = triton_error(
        gateway.update_log_settings,
        {"log_file": str(target), "log_verbose_level": 3},
        headers=headers,
    )
    assert code_of(error) == str(Code.UNIMPLEMENTED), error
    assert "LogSettings" in error.message()
    assert "CVE-2024-0087" in error.message()
    for model in ("", added):
        error = triton_error(
            gateway.update_trace_settings,
            model_name=model,
            settings={"trace_file": str(target), "trace_level": ["TIMESTAMPS"]},
            headers=headers,
        )
        assert code_of(error) == str(Code.UNIMPLEMENTED), error
        assert "TraceSetting" in error.message()
    error = triton_error(gateway.get_log_settings, headers=headers)
    assert code_of(error) == str(Code.UNIMPLEMENTED), error
    assert direct.get_log_settings() == logs_before
    assert direct.get_trace_settings() == traces_before
    assert not target.exists()


# --- the repository RPCs act on MLServe's registry ----------------------------


def test_repository_index_lists_deployed_models(
    gateway: triton.InferenceServerClient, headers: Headers, added: str
) -> None:
    index = gateway.get_model_repository_index(headers=headers)
    rows = {model.name: (model.version, model.state) for model in index.models}
    assert rows[added] == ("2", "READY")


def test_repository_load_deploys_and_unload_undeploys(
    stubs: Stubs,
    gateway: triton.InferenceServerClient,
    direct: triton.InferenceServerClient,
    headers: Headers,
    model_name: str,
) -> None:
    upload_add(stubs, model_name, offset=5.0)
    try:
        listed = gateway.get_model_repository_index(headers=headers).models
        assert model_name not in {model.name for model in listed}

        error = triton_error(
            gateway.load_model, model_name, config='{"backend": "python"}', headers=headers
        )
        assert code_of(error) == str(Code.INVALID_ARGUMENT), error
        assert "UploadModelVersion" in error.message()
        assert not direct.is_model_ready(model_name)

        gateway.load_model(model_name, headers=headers)
        deployment = stubs.deployments.GetDeployment(
            deployment_pb2.GetDeploymentRequest(name=model_name), metadata=stubs.auth
        )
        assert (deployment.state, list(deployment.servers)) == (READY, ["local"])
        assert direct.is_model_ready(model_name)
        result = gateway.infer(model_name, add_inputs(), headers=headers)
        np.testing.assert_allclose(result.as_numpy("OUTPUT0"), [16, 27, 38, 49])
        listed = gateway.get_model_repository_index(headers=headers).models
        assert model_name in {model.name for model in listed}

        gateway.unload_model(model_name, headers=headers)
        with pytest.raises(grpc.RpcError) as gone:
            stubs.deployments.GetDeployment(
                deployment_pb2.GetDeploymentRequest(name=model_name), metadata=stubs.auth
            )
        assert gone.value.code() == Code.NOT_FOUND
        assert not direct.is_model_ready(model_name)
        error = triton_error(gateway.infer, model_name, add_inputs(), headers=headers)
        assert code_of(error) == str(Code.FAILED_PRECONDITION), error
    finally:
        remove_model(stubs, model_name)


# --- counting -------------------------------------------------------------------


def _usage(stubs: Stubs, model: str) -> tuple[Any, Any]:
    return (
        stubs.models.GetModel(model_pb2.GetModelRequest(name=model), metadata=stubs.auth),
        stubs.models.GetModelVersion(
            model_pb2.GetModelVersionRequest(model=model, version=1), metadata=stubs.auth
        ),
    )


def test_inferences_are_counted_per_model_and_version(
    stubs: Stubs, gateway: triton.InferenceServerClient, headers: Headers, model_name: str
) -> None:
    upload_add(stubs, model_name)
    try:
        deploy(stubs, model_name)
        model, version = _usage(stubs, model_name)
        assert (model.inference_count, version.inference_count) == (0, 0)
        started = time.time()
        for _ in range(5):
            gateway.infer(model_name, add_inputs(), headers=headers)
        for _ in range(2):
            triton_error(gateway.infer, model_name, _bad_inputs("wrong-datatype"), headers=headers)

        # Counts reach the store at the next health round (0.5 s here).
        def counted() -> bool:
            model, version = _usage(stubs, model_name)
            return (model.inference_count, version.inference_count) == (7, 7)

        wait_for(counted, timeout=30, what="7 inferences counted")
        model, version = _usage(stubs, model_name)
        assert (model.inference_failures, version.inference_failures) == (2, 2)
        for counted_at in (model.last_inference_time, version.last_inference_time):
            assert started - 2 <= counted_at.ToSeconds() <= time.time() + 2
    finally:
        remove_model(stubs, model_name)


def test_stream_refusals_are_counted_as_failures(
    stubs: Stubs, gateway: triton.InferenceServerClient, headers: Headers, model_name: str
) -> None:
    upload_add(stubs, model_name)
    try:
        deploy(stubs, model_name)
        answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
        gateway.start_stream(
            callback=lambda result, error: answers.put((result, error)), headers=headers
        )
        try:
            gateway.async_stream_infer(model_name, _bad_inputs("wrong-datatype"))
            _, error = answers.get(timeout=30)
        finally:
            gateway.stop_stream()
        assert error is not None
        assert "data-type is 'INT32'" in error.message()

        def counted() -> bool:
            return _usage(stubs, model_name)[0].inference_count == 1

        wait_for(counted, timeout=30, what="the stream inference counted")
        assert _usage(stubs, model_name)[0].inference_failures == 1
    finally:
        remove_model(stubs, model_name)


# --- a second MLServe with a small message limit and a metrics port ----------


class Tuned:
    def __init__(self, process: MLServeProcess, metrics_port: int) -> None:
        self.process = process
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        self.stubs = process.stubs()
        self.headers = {"authorization": f"Bearer {process.key}"}
        self.client = triton.InferenceServerClient(process.address)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tuned]:
    """MLServe (embedded Triton) started with --max-message-bytes 1M and --metrics-listen."""
    metrics_port = free_port()
    process = MLServeProcess(
        tmp_path_factory.mktemp("tuned-mlserve"),
        "--max-message-bytes", "1M",
        "--metrics-listen", f"127.0.0.1:{metrics_port}",
    )  # fmt: skip
    try:
        process.start()
        tuned = Tuned(process, metrics_port)
        upload_add(tuned.stubs, "add")
        assert deploy(tuned.stubs, "add").state == READY
        yield tuned
        tuned.client.close()
        tuned.stubs.channel.close()
    finally:
        process.stop()


def test_prometheus_metrics(tuned: Tuned) -> None:
    for _ in range(3):
        tuned.client.infer("add", add_inputs(), headers=tuned.headers)
    triton_error(tuned.client.infer, "add", _bad_inputs("bad-shape"), headers=tuned.headers)
    with urllib.request.urlopen(tuned.metrics_url, timeout=10) as response:
        text = response.read().decode()
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }

    def requests(outcome: str) -> float:
        labels = (("model", "add"), ("outcome", outcome), ("version", "1"))
        return samples[("mlserve_inference_requests_total", labels)]

    assert requests("ok") == 3.0
    assert requests("error") == 1.0
    latency = (("model", "add"), ("version", "1"))
    assert samples[("mlserve_gateway_latency_seconds_count", latency)] == 3.0
    assert samples[("mlserve_gateway_latency_seconds_sum", latency)] > 0


def test_triton_share_of_latency_from_its_statistics(tuned: Tuned) -> None:
    def triton_samples() -> dict[str, float]:
        with urllib.request.urlopen(tuned.metrics_url, timeout=10) as response:
            text = response.read().decode()
        found: dict[str, float] = defaultdict(float)
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.labels.get("model") == "add" and "le" not in sample.labels:
                    found[sample.name] += sample.value
        return found

    before = triton_samples()["mlserve_triton_inference_requests_total"]
    # Counted from the first health round on; a round with calls observes both histograms.
    wait_until(
        lambda: (
            (
                triton_samples()["mlserve_triton_inference_requests_total"] > before
                and triton_samples()["mlserve_triton_share_ratio_count"] > 0
            )
            or _infer_once(tuned)
        )
    )
    samples = triton_samples()
    rounds = samples["mlserve_triton_interval_mean_seconds_count"]
    assert rounds > 0
    # Triton's mean time per inference of the add model: well under a second, above zero.
    assert 0 < samples["mlserve_triton_interval_mean_seconds_sum"] / rounds < 1.0
    # Triton's part of the gateway's time: a share, above zero.
    share = samples["mlserve_triton_share_ratio_sum"] / samples["mlserve_triton_share_ratio_count"]
    assert 0 < share < 1.5


def _infer_once(tuned: Tuned) -> bool:
    tuned.client.infer("add", add_inputs(), headers=tuned.headers)
    return False


def test_message_over_the_limit_is_resource_exhausted(tuned: Tuned) -> None:
    big = np.ones(2 * MiB // 4, dtype=np.float32)  # 2 MiB per input; the limit is 1 MiB
    error = triton_error(tuned.client.infer, "add", add_inputs(big, big), headers=tuned.headers)
    assert code_of(error) == str(Code.RESOURCE_EXHAUSTED), error
    small = np.ones(MiB // 16, dtype=np.float32)  # 2 x 256 KiB fits
    result = tuned.client.infer("add", add_inputs(small, small), headers=tuned.headers)
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), small + small)


@pytest.mark.slow  # over ~20 s
def test_64_mib_tensor_by_default(
    gateway: triton.InferenceServerClient, headers: Headers, added: str
) -> None:
    a = (np.arange(64 * MiB // 4) % 1000).astype(np.float32)
    b = np.ones_like(a)
    result = gateway.infer(added, add_inputs(a, b), headers=headers, client_timeout=120)
    output = result.as_numpy("OUTPUT0")
    assert output.nbytes == 64 * MiB
    np.testing.assert_array_equal(output[:1000], a[:1000] + 101)
    np.testing.assert_array_equal(output[-1000:], a[-1000:] + 101)
