"""InstanceService/GetInstance: name, version, sign-in methods and the features
that are on, for any signed-in caller (a key or a token), against a real MLServe."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

import mlserve
from mlserve_api.v1 import instance_pb2, instance_pb2_grpc
from tests.support.issuer import AUDIENCE, Issuer, trusting
from tests.support.mlserve import MLServeProcess, started_without_triton

FEATURES = {
    "tls", "postgresql", "s3_storage", "inference_log", "assays", "training", "explain",
    "oidc", "metrics", "embedded_triton", "pipelines", "datasets",
}  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, issuer: Issuer) -> Iterator[MLServeProcess]:
    home = tmp_path_factory.mktemp("instance")
    with started_without_triton(
        home, "--instance-name", "test-instance", *trusting(issuer)
    ) as process:
        yield process


def get_instance(server: MLServeProcess, bearer: str | None) -> instance_pb2.Instance:
    metadata = None if bearer is None else [("authorization", f"Bearer {bearer}")]
    with server.channel() as channel:
        stub = instance_pb2_grpc.InstanceServiceStub(channel)
        answer: instance_pb2.Instance = stub.GetInstance(
            instance_pb2.GetInstanceRequest(), metadata=metadata, timeout=30
        )
        return answer


def test_the_instance_says_what_it_is_and_what_is_on(
    server: MLServeProcess, issuer: Issuer
) -> None:
    instance = get_instance(server, server.key)
    assert instance.name == "test-instance"
    assert instance.version == mlserve.__version__
    assert instance.authentication.required
    assert list(instance.authentication.methods) == ["api_key", "oidc"]
    assert list(instance.authentication.oidc_issuers) == [issuer.url]
    assert instance.authentication.oidc_audience == AUDIENCE
    assert set(instance.features) == FEATURES
    on = {name for name, enabled in instance.features.items() if enabled}
    # started with --no-embedded-triton, SQLite, plaintext, no metrics, local storage
    assert on <= {
        "oidc", "pipelines", "inference_log", "datasets", "assays", "explain", "training",
    }  # fmt: skip
    assert {"oidc", "pipelines", "inference_log", "datasets", "assays", "explain"} <= on


def test_a_viewer_signed_in_by_token_may_read_it(server: MLServeProcess, issuer: Issuer) -> None:
    instance = get_instance(server, issuer.token("instance-reader"))
    assert instance.name == "test-instance"


def test_it_needs_a_signed_in_caller(server: MLServeProcess) -> None:
    with pytest.raises(grpc.RpcError) as error:
        get_instance(server, None)
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
