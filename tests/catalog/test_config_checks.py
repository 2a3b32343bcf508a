"""An uploaded config.pbtxt cannot point outside its version, nor at other tenants.

Each refused upload is INVALID_ARGUMENT naming the field, and leaves nothing
behind: no model or version, no upload record, nothing in staging, no blob.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from mlserve.triton.launcher import bundled_backends
from mlserve.triton.modelconfig import MAX_CONFIG_BYTES
from mlserve_api.v1 import model_pb2
from tests.support.checks import expect_error, nothing_written, tree
from tests.support.mlserve import MLServeProcess, Stubs
from tests.support.models import add_model_files
from tests.support.uploading import stream

pytestmark = pytest.mark.integration

Code = grpc.StatusCode
ADD = add_model_files()
ADD_CONFIG = ADD["config.pbtxt"].decode()
MODEL_PY = {"model.py": ADD["model.py"]}
# A valid config, made over the limit by comments.
OVERSIZED = ADD_CONFIG + "# padding\n" * (MAX_CONFIG_BYTES // 10)


def with_config(extra: str) -> str:
    return ADD_CONFIG + "\n" + extra


# (case, config, files, what the message must name)
BAD_UPLOADS = [
    (
        "raw-ensemble",
        'platform: "ensemble"\ninput [ { name: "A" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
        'output [ { name: "B" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
        'ensemble_scheduling { step [ { model_name: "someone-elses-private-model" '
        'model_version: -1 input_map { key: "INPUT0" value: "A" } '
        'output_map { key: "OUTPUT0" value: "B" } } ] }',
        MODEL_PY,
        "config.pbtxt platform: an ensemble cannot be uploaded",
    ),
    (
        "ensemble-steps",
        with_config('ensemble_scheduling { step [ { model_name: "other" model_version: -1 } ] }'),
        MODEL_PY,
        "config.pbtxt ensemble_scheduling",
    ),
    (
        "default-filename-escapes",
        with_config('default_model_filename: "../../victim/1/model.py"'),
        MODEL_PY,
        "config.pbtxt default_model_filename",
    ),
    (
        "default-filename-separator",
        with_config('default_model_filename: "sub/model.py"'),
        {"sub/model.py": ADD["model.py"]},
        "config.pbtxt default_model_filename",
    ),
    (
        "parameter-absolute",
        with_config(
            'parameters { key: "EXECUTION_ENV_PATH" value { string_value: "/etc/passwd" } }'
        ),
        MODEL_PY,
        "config.pbtxt parameters['EXECUTION_ENV_PATH']",
    ),
    (
        "parameter-dotdot",
        with_config(
            'parameters { key: "EXECUTION_ENV_PATH" '
            'value { string_value: "$$TRITON_MODEL_DIRECTORY/../../x.tar.gz" } }'
        ),
        MODEL_PY,
        "config.pbtxt parameters['EXECUTION_ENV_PATH']",
    ),
    (
        "repository-agents",
        with_config('model_repository_agents { agents [ { name: "checksum" } ] }'),
        MODEL_PY,
        "config.pbtxt model_repository_agents",
    ),
    (
        "warmup-file-escapes",
        with_config(
            'model_warmup [ { name: "w" batch_size: 1 inputs { key: "INPUT0" value { '
            'data_type: TYPE_FP32 dims: [ 4 ] input_data_file: "../../../etc/passwd" } } } ]'
        ),
        MODEL_PY,
        "config.pbtxt model_warmup[0].inputs['INPUT0'].input_data_file",
    ),
    (
        "over-1-MiB",
        OVERSIZED,
        MODEL_PY,
        f"config: the config.pbtxt text is {len(OVERSIZED)} bytes; at most 1048576 (1 MiB)",
    ),
    (
        "backend-not-allowed",
        ADD_CONFIG.replace('backend: "python"', 'backend: "onnxruntime"'),
        {"model.onnx": b"onnx"},
        "config.pbtxt backend: backend 'onnxruntime' is not allowed",
    ),
    (
        "backend-path",
        ADD_CONFIG.replace('backend: "python"', 'backend: "../../../tmp/evil"'),
        MODEL_PY,
        "config.pbtxt backend: backend '../../../tmp/evil' is not allowed",
    ),
    (
        "platform-not-allowed",
        ADD_CONFIG.replace('backend: "python"', 'platform: "onnxruntime_onnx"'),
        {"model.onnx": b"onnx"},
        "config.pbtxt platform: backend 'onnxruntime' is not allowed",
    ),
    (
        "config-as-a-file",
        ADD_CONFIG,
        {"config.pbtxt": ADD["config.pbtxt"], **MODEL_PY},
        "files['config.pbtxt']: the upload is laid out like a Triton model directory",
    ),
    (
        "version-folder-in-files",
        ADD_CONFIG,
        {"1/model.py": ADD["model.py"]},
        "files['1/model.py']: the upload is laid out like a Triton model directory",
    ),
    (
        "python-without-model-py",
        ADD_CONFIG,
        {"weights.bin": b"\0" * 64},
        "files: a Python-backend version needs its 'model.py'",
    ),
]


def everything_stored(home: Path) -> dict[str, object]:
    return {"staging": tree(home / "staging"), "blobs": tree(home / "blobs")}


@pytest.mark.parametrize(
    ("config", "files", "named"),
    [case[1:] for case in BAD_UPLOADS],
    ids=[case[0] for case in BAD_UPLOADS],
)
def test_bad_config_is_invalid_and_stores_nothing(
    stubs: Stubs,
    mlserve: MLServeProcess,
    model_name: str,
    config: str,
    files: dict[str, bytes],
    named: str,
) -> None:
    upload_id = f"{model_name}-upload"
    stored = everything_stored(mlserve.home)
    with nothing_written(stubs, mlserve.home, absent=[mlserve.home / "staging" / upload_id]):
        error = expect_error(
            Code.INVALID_ARGUMENT,
            stubs.models.UploadModelVersion,
            stream(model_name, files, config=config, upload_id=upload_id),
            metadata=stubs.auth,
            timeout=120,
        )
    assert named in error.details()
    if "laid out like" in named:
        assert "config field" in error.details()  # says how to send it instead
    assert everything_stored(mlserve.home) == stored
    expect_error(
        Code.NOT_FOUND,
        stubs.models.GetUpload,
        model_pb2.GetUploadRequest(upload_id=upload_id),
        metadata=stubs.auth,
    )
    expect_error(
        Code.NOT_FOUND,
        stubs.models.GetModel,
        model_pb2.GetModelRequest(name=model_name),
        metadata=stubs.auth,
    )


def test_parameters_inside_the_model_directory_are_accepted(stubs: Stubs, model_name: str) -> None:
    config = with_config(
        'parameters { key: "EXECUTION_ENV_PATH" '
        'value { string_value: "$$TRITON_MODEL_DIRECTORY/1/env.tar.gz" } }\n'
        'parameters { key: "note" value { string_value: "relative/name.txt" } }'
    )
    version = stubs.models.UploadModelVersion(
        stream(model_name, MODEL_PY, config=config), metadata=stubs.auth, timeout=120
    )
    try:
        assert version.version == 1
    finally:
        stubs.models.DeleteModel(model_pb2.DeleteModelRequest(name=model_name), metadata=stubs.auth)


def test_the_default_backends_are_the_bundled_tritons() -> None:
    assert bundled_backends() == ["python"]


@pytest.fixture(scope="module")
def onnx_allowed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stubs]:
    home = tmp_path_factory.mktemp("allowed-backends")
    process = MLServeProcess(
        home, "--no-embedded-triton", "--allowed-backends", "python,onnxruntime"
    ).start(wait_for_triton=False)
    stubs = process.stubs()
    try:
        yield stubs
    finally:
        stubs.channel.close()
        process.stop()


def test_allowed_backends_is_configurable(onnx_allowed: Stubs) -> None:
    stubs = onnx_allowed
    onnx = stubs.models.UploadModelVersion(
        stream("onnx-model", {"model.onnx": b"onnx"}, config='backend: "onnxruntime"'),
        metadata=stubs.auth,
        timeout=120,
    )
    assert onnx.version == 1
    error = expect_error(
        Code.INVALID_ARGUMENT,
        stubs.models.UploadModelVersion,
        stream("torch-model", {"model.pt": b"pt"}, config='backend: "pytorch"'),
        metadata=stubs.auth,
        timeout=120,
    )
    assert "backend 'pytorch' is not allowed" in error.details()
    assert "allowed: onnxruntime, python" in error.details()
