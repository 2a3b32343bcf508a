"""The models Triton's Python gRPC examples expect, as Python-backend models.

Triton's examples run against its QA model repository (custom C++ backends
and TensorFlow/ONNX models). The bundled Triton has the Python backend only,
so each model here is written to the interface and behaviour the examples
check: names, datatypes, shapes, and what the outputs must be.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

_ADD_SUB = """\
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            a = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            b = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("OUTPUT0", (a + b).astype(a.dtype)),
                pb_utils.Tensor("OUTPUT1", (a - b).astype(a.dtype)),
            ]))
        return responses
"""

# simple_string: numbers written as strings, added and subtracted.
_STRING_ADD_SUB = """\
import numpy as np
import triton_python_backend_utils as pb_utils


def numbers(tensor):
    return np.array([int(x) for x in tensor.flatten()], dtype=np.int64).reshape(tensor.shape)


def strings(values):
    flat = [str(v).encode() for v in values.flatten()]
    return np.array(flat, dtype=np.object_).reshape(values.shape)


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            a = numbers(pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy())
            b = numbers(pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy())
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("OUTPUT0", strings(a + b)),
                pb_utils.Tensor("OUTPUT1", strings(a - b)),
            ]))
        return responses
"""

_IDENTITY = """\
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            value = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            out = pb_utils.Tensor("OUTPUT0", value)
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses
"""

# simple_sequence: the examples expect the first request of a sequence to
# answer its input + 1 and every later one its input.
_SEQUENCE = """\
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            value = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy()
            start = pb_utils.get_input_tensor_by_name(request, "START").as_numpy()
            out = pb_utils.Tensor("OUTPUT", (value + start).astype(np.int32))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses
"""

# repeat_int32 (decoupled): one response per element of IN, in order.
_REPEAT = """\
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            values = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            for index, value in enumerate(values):
                sender.send(pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor("OUT", np.array([value], dtype=np.int32)),
                    pb_utils.Tensor("IDX", np.array([index], dtype=np.uint32)),
                ]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
"""


def _add_sub_config(name: str, datatype: str) -> str:
    return f"""
name: "{name}"
backend: "python"
max_batch_size: 8
input [
  {{ name: "INPUT0" data_type: {datatype} dims: [ 16 ] }},
  {{ name: "INPUT1" data_type: {datatype} dims: [ 16 ] }}
]
output [
  {{ name: "OUTPUT0" data_type: {datatype} dims: [ 16 ] }},
  {{ name: "OUTPUT1" data_type: {datatype} dims: [ 16 ] }}
]
"""


_CONFIGS = {
    "simple": _add_sub_config("simple", "TYPE_INT32"),
    "simple_int8": _add_sub_config("simple_int8", "TYPE_INT8"),
    "simple_string": _add_sub_config("simple_string", "TYPE_STRING"),
    "simple_identity": """
name: "simple_identity"
backend: "python"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_STRING dims: [ -1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_STRING dims: [ -1 ] } ]
""",
    "simple_sequence": """
name: "simple_sequence"
backend: "python"
max_batch_size: 8
input [ { name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
sequence_batching {
  max_sequence_idle_microseconds: 5000000
  control_input [
    { name: "START" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] },
    { name: "READY" control [ { kind: CONTROL_SEQUENCE_READY int32_false_true: [ 0, 1 ] } ] }
  ]
}
instance_group [ { kind: KIND_CPU count: 1 } ]
""",
    "repeat_int32": """
name: "repeat_int32"
backend: "python"
max_batch_size: 0
model_transaction_policy { decoupled: true }
input [
  { name: "IN" data_type: TYPE_INT32 dims: [ -1 ] },
  { name: "DELAY" data_type: TYPE_UINT32 dims: [ -1 ] },
  { name: "WAIT" data_type: TYPE_UINT32 dims: [ 1 ] }
]
output [
  { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] },
  { name: "IDX" data_type: TYPE_UINT32 dims: [ 1 ] }
]
""",
}

_SOURCES = {
    "simple": _ADD_SUB,
    "simple_int8": _ADD_SUB,
    "simple_string": _STRING_ADD_SUB,
    "simple_identity": _IDENTITY,
    "simple_sequence": _SEQUENCE,
    "repeat_int32": _REPEAT,
}


@dataclass(frozen=True)
class ExampleModel:
    name: str
    config: str
    """config.pbtxt text, checked by parsing it as a ModelConfig."""
    model_py: bytes


def example_models() -> list[ExampleModel]:
    """Every model the examples run here use, in upload order."""
    models = []
    for name, text in _CONFIGS.items():
        config = text_format.Parse(text, model_config_pb2.ModelConfig())
        models.append(
            ExampleModel(name, text_format.MessageToString(config), _SOURCES[name].encode())
        )
    return models
