"""Small real Triton models for tests, written the way a user would write them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as triton
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from mlserve_api.v1 import model_pb2, server_pb2
from tests.support.mlserve import Stubs
from tests.support.uploading import stream

_ADD_CONFIG = """
backend: "python"
max_batch_size: 0
input [
  { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] },
  { name: "INPUT1" data_type: TYPE_FP32 dims: [ -1 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] }
]
instance_group [ { kind: KIND_CPU count: 1 } ]
"""

# The offset is baked into the source so two versions of "add" are told apart
# by their answers, which is how tests prove which version served a request.
_ADD_MODEL_PY = """\
import numpy as np
import triton_python_backend_utils as pb_utils

OFFSET = np.float32({offset!r})


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            a = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            b = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
            out = pb_utils.Tensor("OUTPUT0", (a + b + OFFSET).astype(np.float32))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses
"""


def add_model_config(name: str = "add") -> model_config_pb2.ModelConfig:
    """The parsed config of the "add" model, named ``name``."""
    config = text_format.Parse(_ADD_CONFIG, model_config_pb2.ModelConfig())
    config.name = name
    return config


def add_model_files(offset: float = 0.0, *, name: str = "add") -> dict[str, bytes]:
    """Contents of "add"'s ``config.pbtxt`` and ``model.py``.

    The model computes OUTPUT0 = INPUT0 + INPUT1 + offset.
    """
    config = text_format.MessageToString(add_model_config(name))
    return {
        "config.pbtxt": config.encode(),
        "model.py": _ADD_MODEL_PY.format(offset=float(offset)).encode(),
    }


def write_add_model(
    directory: Path, *, name: str = "add", offset: float = 0.0, version: int = 1
) -> Path:
    """Write ``<directory>/<name>/config.pbtxt`` and ``<name>/<version>/model.py``.

    Returns the model directory. Calling it again with another ``version``
    adds that version beside the existing ones.
    """
    files = add_model_files(offset, name=name)
    model_dir = directory / name
    version_dir = model_dir / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_bytes(files["config.pbtxt"])
    (version_dir / "model.py").write_bytes(files["model.py"])
    return model_dir


# --- one-input models for pipelines -------------------------------------------

_SCALE_MODEL_PY = """\
import time

import numpy as np
import triton_python_backend_utils as pb_utils

FACTOR = np.float32({factor!r})
OFFSET = np.float32({offset!r})
SLEEP = {sleep!r}


class TritonPythonModel:
    def execute(self, requests):
        # A fixed cost per call, whatever the batch size: batching pays it once.
        if SLEEP:
            time.sleep(SLEEP)
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy()
            out = pb_utils.Tensor("OUTPUT", (x * FACTOR + OFFSET).astype(x.dtype))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses
"""

_BROKEN_MODEL_PY = """\
class TritonPythonModel:
    def initialize(self, args):
        raise RuntimeError("this model refuses to load")

    def execute(self, requests):
        return []
"""


def scale_model_config(
    name: str,
    *,
    datatype: str = "TYPE_FP32",
    dims: tuple[int, ...] = (-1,),
    max_batch_size: int = 0,
) -> model_config_pb2.ModelConfig:
    """A one-input model: OUTPUT = INPUT * factor + offset."""
    config = model_config_pb2.ModelConfig(name=name, backend="python")
    config.max_batch_size = max_batch_size
    data_type = model_config_pb2.DataType.Value(datatype)
    config.input.add(name="INPUT", data_type=data_type, dims=list(dims))
    config.output.add(name="OUTPUT", data_type=data_type, dims=list(dims))
    config.instance_group.add(kind=model_config_pb2.ModelInstanceGroup.KIND_CPU, count=1)
    return config


def scale_model_files(
    name: str,
    factor: float = 1.0,
    offset: float = 0.0,
    *,
    sleep: float = 0.0,
    broken: bool = False,
    **config: Any,
) -> dict[str, bytes]:
    """``config.pbtxt`` and ``model.py`` of a scale model (``broken``: fails to load).

    ``sleep`` adds a fixed cost to every execute call, as a model with a
    per-call overhead has; ``config`` goes to ``scale_model_config``.
    """
    source = _BROKEN_MODEL_PY if broken else _SCALE_MODEL_PY
    text = text_format.MessageToString(scale_model_config(name, **config))
    return {
        "config.pbtxt": text.encode(),
        "model.py": source.format(factor=float(factor), offset=float(offset), sleep=sleep).encode(),
    }


def with_initialize(files: dict[str, bytes], body: str) -> dict[str, bytes]:
    """``files`` of the "add" model whose model.py gains ``initialize(self, args)``
    running ``body`` (Python lines, indented by 8 spaces)."""
    source = files["model.py"].decode()
    method = "\n    def initialize(self, args):\n" + body
    files["model.py"] = source.replace(
        "class TritonPythonModel:\n", "class TritonPythonModel:" + method + "\n"
    ).encode()
    return files


def upload_add(stubs: Stubs, name: str, offset: float = 0.0) -> model_pb2.ModelVersion:
    files = add_model_files(offset, name=name)
    config = files.pop("config.pbtxt").decode()
    response: model_pb2.ModelVersion = stubs.models.UploadModelVersion(
        stream(name, files, config=config), metadata=stubs.auth
    )
    return response


def local_triton(stubs: Stubs) -> triton.InferenceServerClient:
    local = stubs.servers.GetServer(server_pb2.GetServerRequest(name="local"), metadata=stubs.auth)
    return triton.InferenceServerClient(local.address)


def infer_add(client: triton.InferenceServerClient, model: str) -> np.ndarray:
    a = np.array([1, 2, 3, 4], dtype=np.float32)
    b = np.array([10, 20, 30, 40], dtype=np.float32)
    inputs = [triton.InferInput("INPUT0", [4], "FP32"), triton.InferInput("INPUT1", [4], "FP32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    result = client.infer(model, inputs)
    output: np.ndarray = result.as_numpy("OUTPUT0")
    return output


# --- a linear model of one feature vector, for explanations -------------------

_LINEAR_MODEL_PY = """\
import numpy as np
import triton_python_backend_utils as pb_utils

WEIGHTS = np.array({weights!r}, dtype=np.float64)
BIAS = np.float64({bias!r})


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "FEATURES").as_numpy()
            y = x.astype(np.float64) @ WEIGHTS + BIAS
            out = pb_utils.Tensor("PREDICTION", y.reshape(-1, 1).astype(np.float64))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses
"""


def linear_model_files(
    name: str,
    weights: Sequence[float],
    bias: float = 0.0,
    *,
    datatype: str = "TYPE_FP64",
    max_batch_size: int = 1024,
) -> dict[str, bytes]:
    """``config.pbtxt`` and ``model.py`` of PREDICTION = FEATURES · weights + bias.

    FEATURES is one row of ``len(weights)`` values of ``datatype``; PREDICTION is FP64.
    """
    config = model_config_pb2.ModelConfig(name=name, backend="python")
    config.max_batch_size = max_batch_size
    config.input.add(
        name="FEATURES", data_type=model_config_pb2.DataType.Value(datatype), dims=[len(weights)]
    )
    config.output.add(name="PREDICTION", data_type=model_config_pb2.TYPE_FP64, dims=[1])
    config.instance_group.add(kind=model_config_pb2.ModelInstanceGroup.KIND_CPU, count=1)
    source = _LINEAR_MODEL_PY.format(weights=[float(w) for w in weights], bias=float(bias))
    return {
        "config.pbtxt": text_format.MessageToString(config).encode(),
        "model.py": source.encode(),
    }
