"""The call guard before any handler: keyless callers are refused before their
message is read, every message is held to its method's limit, credentials come
in exactly one header, and an undecodable message is INVALID_ARGUMENT.

Each test runs against a real MLServe over real sockets and checks the exact
code, that nothing was written, and that the server still answers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2
from tritonclient.grpc import service_pb2, service_pb2_grpc

from mlserve_api.v1 import model_pb2
from tests.support.mlserve import MLServeProcess, Stubs, started_without_triton
from tests.support.uploading import chunk, header

MiB = 1024 * 1024
Code = grpc.StatusCode
# More than any limit here; what an attacker would send.
HUGE = 256 * MiB
# The server's peak RSS may grow by at most this much while refusing HUGE
# keyless messages (before the guard refused at the metadata: ~770 MiB).
ALLOWED_PEAK_GROWTH = 64 * MiB
NO_LIMIT = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLServeProcess]:
    """MLServe without a Triton, with the default (Triton's) message limit."""
    home = tmp_path_factory.mktemp("guard-home")
    with started_without_triton(home) as process:
        yield process


@pytest.fixture(scope="module")
def channel(bare: MLServeProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(bare.address, options=NO_LIMIT) as channel:
        yield channel


@pytest.fixture(scope="module")
def root(bare: MLServeProcess, channel: grpc.Channel) -> Stubs:
    return Stubs(channel, bare.key)


def peak_rss(process: MLServeProcess) -> int:
    assert process.process is not None
    status = Path(f"/proc/{process.process.pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def refused(code: grpc.StatusCode, call: Any, *args: Any, **kwargs: Any) -> str:
    """Make the call, which must fail with ``code``; its details."""

    def complete() -> None:
        result = call(*args, **kwargs)
        if isinstance(result, Iterator):
            list(result)

    with pytest.raises(grpc.RpcError) as failure:
        complete()
    error = failure.value
    assert error.code() == code, f"expected {code}, got {error.code()}: {error.details()}"
    details = error.details() or ""
    assert "Traceback" not in details, details
    assert "Exception" not in details, details
    return details


def still_answers(root: Stubs) -> None:
    assert root.health.Check(health_pb2.HealthCheckRequest(), timeout=30).status in (
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,  # no Triton here
    )
    root.models.ListModels(model_pb2.ListModelsRequest(), metadata=root.auth, timeout=30)


def model_names(root: Stubs) -> list[str]:
    listing = root.models.ListModels(
        model_pb2.ListModelsRequest(page_size=1000), metadata=root.auth, timeout=30
    )
    return sorted(model.name for model in listing.models)


def staged(process: MLServeProcess) -> list[str]:
    staging = process.home / "staging"
    return sorted(os.listdir(staging)) if staging.exists() else []


KEYLESS = {
    "no key": None,
    "wrong key": [("authorization", "Bearer mls_000000000000_" + "x" * 43)],
    "not a bearer": [("authorization", "Basic abc")],
}


@pytest.mark.parametrize("credential", list(KEYLESS))
def test_a_huge_keyless_infer_is_refused_before_it_is_read(
    bare: MLServeProcess, channel: grpc.Channel, root: Stubs, credential: str
) -> None:
    request = service_pb2.ModelInferRequest(model_name="add")
    request.raw_input_contents.append(bytes(HUGE))
    gateway = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    before = peak_rss(bare)
    details = refused(
        Code.UNAUTHENTICATED,
        gateway.ModelInfer,
        request,
        metadata=KEYLESS[credential],
        timeout=300,
    )
    assert "API key" in details or "Bearer" in details
    assert peak_rss(bare) - before < ALLOWED_PEAK_GROWTH
    still_answers(root)


def test_a_huge_keyless_upload_is_refused_before_it_is_read(
    bare: MLServeProcess, root: Stubs
) -> None:
    files = {"model.py": bytes(HUGE)}
    models, staging, before = model_names(root), staged(bare), peak_rss(bare)
    messages = iter([header("keyless-huge", files), chunk("model.py", 0, files["model.py"])])
    refused(Code.UNAUTHENTICATED, root.models.UploadModelVersion, messages, timeout=300)
    assert peak_rss(bare) - before < ALLOWED_PEAK_GROWTH
    assert (model_names(root), staged(bare)) == (models, staging)
    still_answers(root)


def test_a_management_message_over_4_mib_is_resource_exhausted(root: Stubs) -> None:
    models = model_names(root)
    big = model_pb2.CreateModelRequest(
        model=model_pb2.Model(name="too-big", description="x" * (4 * MiB + 1))
    )
    details = refused(
        Code.RESOURCE_EXHAUSTED, root.models.CreateModel, big, metadata=root.auth, timeout=60
    )
    assert "CreateModel takes messages of at most 4194304 bytes" in details
    assert model_names(root) == models
    still_answers(root)


def test_an_upload_chunk_over_the_chunk_size_and_framing_is_resource_exhausted(
    root: Stubs,
) -> None:
    data = bytes(6 * MiB)
    files = {"model.py": data}
    models = model_names(root)
    details = refused(
        Code.RESOURCE_EXHAUSTED,
        root.models.UploadModelVersion,
        iter([header("big-chunk", files), chunk("model.py", 0, data)]),
        metadata=root.auth,
        timeout=60,
    )
    # 4 MiB of chunk and 1 MiB of framing.
    assert "UploadModelVersion takes messages of at most 5242880 bytes" in details
    assert "smaller chunks" in details
    assert model_names(root) == models
    still_answers(root)


def test_a_full_chunk_with_its_framing_is_within_the_limit(root: Stubs) -> None:
    # The largest chunk the upload accepts still fits: the limit is not the chunk size.
    data = bytes(4 * MiB)
    version = root.models.UploadModelVersion(
        iter([header("full-chunk", {"model.py": data}), chunk("model.py", 0, data)]),
        metadata=root.auth,
        timeout=120,
    )
    assert version.size_bytes == 4 * MiB


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLServeProcess]:
    """MLServe whose Tritons take messages of at most 16 MiB."""
    home = tmp_path_factory.mktemp("guard-small-home")
    with started_without_triton(home, "--max-message-bytes", "16M") as process:
        yield process


def test_inference_messages_are_held_to_the_triton_limit(small: MLServeProcess) -> None:
    with grpc.insecure_channel(small.address, options=NO_LIMIT) as channel:
        gateway = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        auth = [("authorization", f"Bearer {small.key}")]
        request = service_pb2.ModelInferRequest(model_name="add")
        request.raw_input_contents.append(bytes(16 * MiB + 1))
        details = refused(
            Code.RESOURCE_EXHAUSTED, gateway.ModelInfer, request, metadata=auth, timeout=60
        )
        assert str(16 * MiB) in details
        # Under the limit the message is read and routed (no such model here).
        request.raw_input_contents[0] = bytes(8 * MiB)
        refused(Code.NOT_FOUND, gateway.ModelInfer, request, metadata=auth, timeout=60)
        still_answers(Stubs(channel, small.key))


# --- the authorization header -----------------------------------------------


def test_two_authorization_headers_are_unauthenticated(root: Stubs) -> None:
    good = ("authorization", f"Bearer {root.key}")
    bad = ("authorization", "Bearer mls_000000000000_" + "x" * 43)
    listing = model_pb2.ListModelsRequest()
    for metadata in ([good, good], [good, bad], [bad, good]):
        details = refused(
            Code.UNAUTHENTICATED, root.models.ListModels, listing, metadata=metadata, timeout=30
        )
        assert "2 'authorization' headers: send exactly one" in details
        assert root.key not in details
    models = model_names(root)
    create = model_pb2.CreateModelRequest(model=model_pb2.Model(name="two-headers"))
    refused(Code.UNAUTHENTICATED, root.models.CreateModel, create, metadata=[good, good])
    assert model_names(root) == models
    still_answers(root)


def test_a_value_with_a_leading_space_is_accepted(root: Stubs, channel: grpc.Channel) -> None:
    # perf_analyzer's -H 'authorization: Bearer KEY' sends " Bearer KEY".
    metadata = [("authorization", f" Bearer {root.key}")]
    root.models.ListModels(model_pb2.ListModelsRequest(), metadata=metadata, timeout=30)
    gateway = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    live = gateway.ServerLive(service_pb2.ServerLiveRequest(), metadata=metadata, timeout=30)
    assert live.live


# --- undecodable messages -----------------------------------------------------


def raw_unary(channel: grpc.Channel, method: str) -> Any:
    return channel.unary_unary(method, request_serializer=None, response_deserializer=None)


# Not a protobuf message: field 15, wire type 7 (no such wire type).
GARBAGE = b"\x7f\xff\xff\xff"


@pytest.mark.parametrize(
    ("method", "kind"),
    [
        ("/mlserve.v1.ModelService/CreateModel", "mlserve.v1.CreateModelRequest"),
        ("/mlserve.v1.ModelService/GetModel", "mlserve.v1.GetModelRequest"),
        ("/mlserve.v1.UserService/CreateUser", "mlserve.v1.CreateUserRequest"),
    ],
)
def test_an_undecodable_management_message_is_invalid_argument(
    root: Stubs, channel: grpc.Channel, method: str, kind: str
) -> None:
    models = model_names(root)
    details = refused(
        Code.INVALID_ARGUMENT, raw_unary(channel, method), GARBAGE, metadata=root.auth, timeout=30
    )
    assert details == f"the {method} request could not be decoded: send a valid {kind} message"
    assert model_names(root) == models
    still_answers(root)


def test_an_undecodable_upload_message_is_invalid_argument(
    bare: MLServeProcess, root: Stubs, channel: grpc.Channel
) -> None:
    method = "/mlserve.v1.ModelService/UploadModelVersion"
    upload = channel.stream_unary(method, request_serializer=None, response_deserializer=None)
    first = header("undecodable", {"model.py": b"x"}).SerializeToString()
    models, staging = model_names(root), staged(bare)
    details = refused(
        Code.INVALID_ARGUMENT, upload, iter([GARBAGE, first]), metadata=root.auth, timeout=30
    )
    assert "could not be decoded: send a valid mlserve.v1.UploadModelVersionRequest" in details
    assert (model_names(root), staged(bare)) == (models, staging)
    # After a good header the upload is resumable, as any interrupted one; nothing is committed.
    details = refused(
        Code.INVALID_ARGUMENT, upload, iter([first, GARBAGE]), metadata=root.auth, timeout=30
    )
    assert "could not be decoded" in details
    assert model_names(root) == models
    still_answers(root)


@pytest.mark.parametrize(
    "method", ["ModelStatistics", "RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload"]
)
def test_an_undecodable_gateway_message_is_invalid_argument(
    root: Stubs, channel: grpc.Channel, method: str
) -> None:
    full = f"/inference.GRPCInferenceService/{method}"
    details = refused(
        Code.INVALID_ARGUMENT, raw_unary(channel, full), GARBAGE, metadata=root.auth, timeout=30
    )
    assert details.startswith(f"the {full} request ")
    still_answers(root)
