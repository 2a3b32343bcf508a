"""Triton's own Python gRPC examples, unchanged, through MLServe's port.

The scripts in tests/data/triton_examples/ are copies of triton-inference-
server/client's src/python/examples/ (see the README there); each runs in a
child process as ``python SCRIPT -u MLSERVE_ADDRESS``, with the bearer header
added to every channel it opens by ``tests.support.bearer_runner``: nothing
else is changed. The models they expect are uploaded and deployed through
MLServe's API first (``tests.support.triton_example_models``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from mlserve_api.v1 import model_pb2, user_pb2
from tests.support.mlserve import MLServeProcess, Stubs
from tests.support.triton_example_models import example_models
from tests.support.tritons import deploy
from tests.support.uploading import stream

EXAMPLES = Path(__file__).resolve().parents[1] / "data" / "triton_examples"
REPOSITORY = Path(__file__).resolve().parents[2]

# Over ~20 s each (or a slow module start): `pytest -m "not slow"` leaves them out.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLServeProcess]:
    """A fresh MLServe, its embedded Triton serving every model the examples use."""
    process = MLServeProcess(tmp_path_factory.mktemp("examples-home"))
    process.start()
    stubs = process.stubs()
    try:
        for model in example_models():
            stubs.models.UploadModelVersion(
                stream(model.name, {"model.py": model.model_py}, config=model.config),
                metadata=stubs.auth,
                timeout=120,
            )
            deploy(stubs, model.name)
        yield process
    finally:
        stubs.channel.close()
        process.stop()


def run_example(
    server: MLServeProcess, script: str, *args: str
) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable, "-m", "tests.support.bearer_runner",
        str(EXAMPLES / script), "-u", server.address, *args,
    ]  # fmt: skip
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=REPOSITORY,
        env={**os.environ, "MLSERVE_KEY": server.key},
    )


# (script, extra arguments, a line its success prints, or "" when it prints none)
PASSING = [
    ("simple_grpc_health_metadata.py", (), ""),
    ("simple_grpc_infer_client.py", (), "PASS: infer"),
    ("simple_grpc_aio_infer_client.py", (), "PASS: grpc aio infer"),
    ("simple_grpc_async_infer_client.py", (), "PASS: Async infer"),
    ("simple_grpc_custom_args_client.py", (), "PASS: CustomArgs"),
    ("simple_grpc_keepalive_client.py", (), "PASS: KeepAlive"),
    ("simple_grpc_string_infer_client.py", (), "PASS: string"),
    ("simple_grpc_sequence_sync_infer_client.py", (), "PASS: Sequence"),
    ("simple_grpc_sequence_stream_infer_client.py", (), "PASS: Sequence"),
    ("simple_grpc_aio_sequence_stream_infer_client.py", (), "PASS: grpc aio sequence stream"),
    ("simple_grpc_custom_repeat.py", (), "PASS: Decoupled API"),
    ("grpc_explicit_int_content_client.py", (), "PASS: explicit int"),
    ("grpc_explicit_int8_content_client.py", (), "PASS: explicit int8"),
    ("grpc_explicit_byte_content_client.py", (), "PASS: explicit string"),
]


@pytest.mark.parametrize(
    ("script", "args", "passed"), PASSING, ids=[" ".join((p[0], *p[1])) for p in PASSING]
)
def test_example_passes_unchanged(
    served: MLServeProcess, script: str, args: tuple[str, ...], passed: str
) -> None:
    result = run_example(served, script, *args)
    assert result.returncode == 0, f"{script} failed:\n{result.stdout}\n{result.stderr}"
    assert passed in result.stdout, result.stdout
    assert "FAILED" not in result.stdout


@pytest.mark.xfail(
    strict=True,
    reason="Triton's model-control example expects Triton's QA repository (exactly 8 models in "
    "the index) and loads with config overrides; MLServe's gateway loads uploaded versions only",
)
def test_model_control_example(served: MLServeProcess) -> None:
    result = run_example(served, "simple_grpc_model_control.py")
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"


def test_server_metadata_names_triton_and_its_version(served: MLServeProcess) -> None:
    gateway = triton.InferenceServerClient(served.address)
    headers = {"authorization": f"Bearer {served.key}"}
    try:
        metadata = gateway.get_server_metadata(headers=headers)
    finally:
        gateway.close()
    assert metadata.name == "triton"
    assert metadata.version  # the embedded Triton's, e.g. "2.59.0"
    assert "model_repository" in metadata.extensions


def test_an_unknown_and_a_private_model_answer_in_the_same_words(served: MLServeProcess) -> None:
    stubs: Stubs = served.stubs()
    try:
        stubs.users.CreateUser(
            user_pb2.CreateUserRequest(
                user=user_pb2.User(name="outsider", role=user_pb2.ROLE_EDITOR)
            ),
            metadata=stubs.auth,
        )
        key = stubs.users.CreateApiKey(
            user_pb2.CreateApiKeyRequest(user="outsider"), metadata=stubs.auth
        ).secret
        model = stubs.models.GetModel(model_pb2.GetModelRequest(name="simple"), metadata=stubs.auth)
        assert model.visibility == model_pb2.VISIBILITY_PRIVATE
    finally:
        stubs.channel.close()
    gateway = triton.InferenceServerClient(served.address)
    headers = {"authorization": f"Bearer {key}"}
    answers = {}
    try:
        for name in ("simple", "no_such_model"):
            with pytest.raises(InferenceServerException) as failure:
                gateway.get_model_metadata(name, headers=headers)
            answers[name] = (failure.value.status(), failure.value.message())
    finally:
        gateway.close()
    assert answers["simple"] == (
        "StatusCode.NOT_FOUND",
        "Request for unknown model: 'simple' is not found",
    )
    assert answers["no_such_model"] == (
        "StatusCode.NOT_FOUND",
        "Request for unknown model: 'no_such_model' is not found",
    )


def test_model_control_calls_of_the_example_work(served: MLServeProcess) -> None:
    # What simple_grpc_model_control.py does besides its QA-repository checks.
    gateway = triton.InferenceServerClient(served.address)
    headers = {"authorization": f"Bearer {served.key}"}
    try:
        gateway.unload_model("simple", headers=headers)
        assert not gateway.is_model_ready("simple", headers=headers)
        gateway.load_model("simple", headers=headers)
        assert gateway.is_model_ready("simple", headers=headers)
        index = gateway.get_model_repository_index(headers=headers)
        assert {model.name for model in index.models} == {m.name for m in example_models()}
        with pytest.raises(InferenceServerException) as failure:
            gateway.load_model("wrong_model_name", headers=headers)
        assert failure.value.status() == "StatusCode.NOT_FOUND"
        assert failure.value.message() == (
            "failed to load 'wrong_model_name': model 'wrong_model_name' does not exist"
        )
        with pytest.raises(InferenceServerException) as failure:
            gateway.load_model("simple", config='{"max_batch_size":"16"}', headers=headers)
        assert failure.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert failure.value.message().startswith(
            "failed to load 'simple': the gateway does not take model files or configs"
        )
        assert gateway.is_model_ready("simple", headers=headers)
    finally:
        gateway.close()
