"""Triton ``config.pbtxt``: parsed, checked and written with Triton's own proto.

Never parsed by hand: ``model_config_pb2.ModelConfig`` (from tritonclient)
and ``google.protobuf.text_format`` do it, so whatever Triton accepts the
parser accepts, and its messages reach the user unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeAlias

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from mlserve.core.errors import InvalidArgument
from mlserve.core.names import check_name

# tritonclient ships no type stubs; the alias keeps signatures readable.
ModelConfig: TypeAlias = Any

# What a file in a version tells about the backend that runs it, for
# uploads that come without a config.pbtxt.
_BACKEND_BY_FILE = {
    "model.py": "python",
    "model.onnx": "onnxruntime",
    "model.pt": "pytorch",
    "model.plan": "tensorrt",
    "model.graphdef": "tensorflow",
}


def parse(text: str, model: str, files: Iterable[str] = ()) -> ModelConfig:
    """Parse and check ``config.pbtxt`` text for ``model``.

    The config's name is set to the model's. An empty text yields a minimal
    config naming the backend recognised from ``files``.
    """
    config = model_config_pb2.ModelConfig()
    if text.strip():
        try:
            text_format.Parse(text, config)
        except text_format.ParseError as error:
            raise InvalidArgument(f"config.pbtxt is not valid: {error}") from None
    config.name = model
    if not config.backend and not config.platform:
        backend = _recognise_backend(files)
        if backend is None:
            raise InvalidArgument(
                "config.pbtxt names no backend or platform and none is recognisable from "
                "the files (model.py, model.onnx, model.pt, model.plan): add a config.pbtxt"
            )
        config.backend = backend
    _check_tensors(config)
    check_ensemble_steps(config)
    return config


def render(config: ModelConfig) -> str:
    """The config as config.pbtxt text."""
    return str(text_format.MessageToString(config))


def for_version(config: ModelConfig, version: int) -> ModelConfig:
    """A copy of ``config`` that makes Triton serve exactly ``version``."""
    pinned = model_config_pb2.ModelConfig()
    pinned.CopyFrom(config)
    pinned.version_policy.Clear()
    pinned.version_policy.specific.versions.append(version)
    return pinned


def to_json(config: ModelConfig) -> str:
    """The config as the JSON Triton's RepositoryModelLoad takes in ``config``."""
    return str(json_format.MessageToJson(config, preserving_proto_field_name=True, indent=None))


def _recognise_backend(files: Iterable[str]) -> str | None:
    for path in files:
        backend = _BACKEND_BY_FILE.get(path.rsplit("/", 1)[-1])
        if backend is not None:
            return backend
    return None


def _check_tensors(config: ModelConfig) -> None:
    for kind, tensors in (("input", config.input), ("output", config.output)):
        seen: set[str] = set()
        for tensor in tensors:
            if not tensor.name:
                raise InvalidArgument(f"config.pbtxt: every {kind} needs a name")
            if tensor.name in seen:
                raise InvalidArgument(f"config.pbtxt: {kind} {tensor.name!r} is declared twice")
            seen.add(tensor.name)


def check_ensemble_steps(config: ModelConfig) -> None:
    # Triton validates only top-level model names, not the models an ensemble
    # step names; a step such as "../secret" must never reach a Triton.
    for step in config.ensemble_scheduling.step:
        check_name(step.model_name, "ensemble step model_name")
