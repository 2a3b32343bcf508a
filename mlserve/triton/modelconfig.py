"""Triton ``config.pbtxt``: parsed, checked and written with Triton's own proto.

Never parsed by hand: ``model_config_pb2.ModelConfig`` (from tritonclient)
and ``google.protobuf.text_format`` do it, so whatever Triton accepts the
parser accepts, and its messages reach the user unchanged.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
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


MAX_CONFIG_BYTES = 1024 * 1024
"""The largest config.pbtxt text an upload may carry (every version listing returns it)."""

# The backend a platform runs on, for the allow-list. "ensemble" is refused apart.
_BACKEND_BY_PLATFORM = {
    "tensorrt_plan": "tensorrt",
    "tensorflow_graphdef": "tensorflow",
    "tensorflow_savedmodel": "tensorflow",
    "onnxruntime_onnx": "onnxruntime",
    "pytorch_libtorch": "pytorch",
}
_MODEL_DIRECTORY = "$$TRITON_MODEL_DIRECTORY"
_HOW_TO_UPLOAD = (
    "send the config.pbtxt text in the upload header's config field, and the version's "
    "files with paths relative to the version directory (model.py, not 1/model.py); "
    "`mlserve models upload DIR` and Client.upload do this for a Triton model directory"
)


def parse_upload(
    text: str, model: str, files: Collection[str], allowed_backends: Collection[str]
) -> ModelConfig:
    """Parse an uploaded version's config and check that it stays inside its version.

    On top of :func:`parse`: the text is at most 1 MiB; ``files`` are not laid
    out as a Triton model directory; the config is no raw ensemble, names a
    backend in ``allowed_backends``, has no repository agents, and no file
    name or parameter that points outside the version directory; a Python
    model has its ``model.py`` (or ``default_model_filename``) among the files.
    Each refusal is InvalidArgument naming the field.
    """
    size = len(text.encode())
    if size > MAX_CONFIG_BYTES:
        raise InvalidArgument(
            f"config: the config.pbtxt text is {size} bytes; at most {MAX_CONFIG_BYTES} "
            "(1 MiB) is accepted"
        )
    _check_not_a_model_directory(files)
    config = parse(text, model, files)
    _check_not_an_ensemble(config)
    _check_backend(config, allowed_backends)
    _check_confined(config)
    _check_entry_file(config, files)
    return config


def _check_not_a_model_directory(files: Collection[str]) -> None:
    for path in sorted(files):
        first, _, rest = path.partition("/")
        if path == "config.pbtxt" or (rest and first.isascii() and first.isdigit()):
            raise InvalidArgument(
                f"files[{path!r}]: the upload is laid out like a Triton model directory; "
                + _HOW_TO_UPLOAD
            )


def _check_not_an_ensemble(config: ModelConfig) -> None:
    # Ensembles come from pipelines, which check that the caller may see
    # every step; a raw one could name another workspace's private model.
    if config.platform == "ensemble" or config.backend == "ensemble":
        field = "platform" if config.platform == "ensemble" else "backend"
        raise InvalidArgument(
            f"config.pbtxt {field}: an ensemble cannot be uploaded as a model; upload its "
            "steps as models and create a pipeline of them (PipelineService)"
        )
    if len(config.ensemble_scheduling.step):
        raise InvalidArgument(
            "config.pbtxt ensemble_scheduling: only pipelines make ensembles; create a "
            "pipeline of the models instead (PipelineService)"
        )


def _check_backend(config: ModelConfig, allowed: Collection[str]) -> None:
    if config.backend:
        field, backend = "backend", config.backend
    else:
        field = "platform"
        backend = _BACKEND_BY_PLATFORM.get(config.platform, "")
        if not backend:
            raise InvalidArgument(
                f"config.pbtxt platform: {config.platform!r} is not a platform Triton knows; "
                f"use one of {', '.join(sorted(_BACKEND_BY_PLATFORM))} or name a backend"
            )
    if backend not in allowed:
        raise InvalidArgument(
            f"config.pbtxt {field}: backend {backend!r} is not allowed on this server "
            f"(allowed: {', '.join(sorted(allowed)) or 'none'}; see --allowed-backends)"
        )


def _check_confined(config: ModelConfig) -> None:
    if config.default_model_filename:
        _check_file_name(config.default_model_filename, "default_model_filename")
    for key, filename in config.cc_model_filenames.items():
        _check_file_name(filename, f"cc_model_filenames[{key!r}]")
    if len(config.model_repository_agents.agents):
        raise InvalidArgument(
            "config.pbtxt model_repository_agents: repository agents run over the model's "
            "files outside MLServe's control and are not accepted; remove them"
        )
    for key, parameter in config.parameters.items():
        _check_parameter(parameter.string_value, f"parameters[{key!r}]")
    accelerators = config.optimization.execution_accelerators
    for kind, group in (
        ("gpu_execution_accelerator", accelerators.gpu_execution_accelerator),
        ("cpu_execution_accelerator", accelerators.cpu_execution_accelerator),
    ):
        for index, accelerator in enumerate(group):
            for key, value in accelerator.parameters.items():
                _check_parameter(
                    value, f"optimization.execution_accelerators.{kind}[{index}][{key!r}]"
                )
    for index, warmup in enumerate(config.model_warmup):
        for name, tensor in warmup.inputs.items():
            if tensor.input_data_file:
                _check_file_name(
                    tensor.input_data_file,
                    f"model_warmup[{index}].inputs[{name!r}].input_data_file",
                )


def _check_file_name(value: str, field: str) -> None:
    """One file name: no separator, no ``..``, nothing that leaves its directory."""
    if value in (".", "..") or any(c in value for c in "/\\\0") or value.startswith("$"):
        raise InvalidArgument(
            f"config.pbtxt {field}: {value!r} must be the name of a file in the version "
            "directory, with no path separator or '..'"
        )


def _check_parameter(value: str, field: str) -> None:
    """A parameter may name a file under the model's directory, never anything else."""
    path = value
    if value.startswith(_MODEL_DIRECTORY + "/"):
        path = value[len(_MODEL_DIRECTORY) + 1 :]
    parts = path.replace("\\", "/").split("/")
    if "$$" in path or path.startswith("/") or ".." in parts:
        raise InvalidArgument(
            f"config.pbtxt {field}: {value!r} points outside the model; name a file of the "
            f"version as {_MODEL_DIRECTORY}/<version>/<file>, or a relative path without '..'"
        )


def _check_entry_file(config: ModelConfig, files: Collection[str]) -> None:
    if config.backend != "python":
        return
    entry = config.default_model_filename or "model.py"
    if entry not in files:
        raise InvalidArgument(
            f"files: a Python-backend version needs its {entry!r} at the top of the version "
            "(the file Triton's Python backend runs); add it to the upload"
        )


@dataclass(frozen=True)
class InstanceGroup:
    """Where one of a config's instance groups puts its instances: ``kind`` is
    Triton's without the prefix (``CPU``, ``GPU``, ``AUTO``, ``MODEL``) and
    ``gpus`` the GPU indices it names (empty: every GPU of the server)."""

    kind: str
    gpus: tuple[int, ...] = ()


# Triton's default when a config has no instance_group: one group of KIND_AUTO,
# which runs on every GPU of a server that has GPUs, else on the CPU.
DEFAULT_INSTANCE_GROUPS = (InstanceGroup("AUTO"),)
ON_CPU = (InstanceGroup("CPU"),)
_KIND_PREFIX = "KIND_"


def instance_groups(config: ModelConfig) -> tuple[InstanceGroup, ...]:
    """Where ``config``'s instances run, group by group, as Triton reads it (no
    instance_group: ``DEFAULT_INSTANCE_GROUPS``)."""
    if not config.instance_group:
        return DEFAULT_INSTANCE_GROUPS
    kinds = model_config_pb2.ModelInstanceGroup.Kind
    return tuple(
        InstanceGroup(kinds.Name(group.kind).removeprefix(_KIND_PREFIX), tuple(group.gpus))
        for group in config.instance_group
    )


def render(config: ModelConfig) -> str:
    """The config as config.pbtxt text."""
    return str(text_format.MessageToString(config))


def for_version(config: ModelConfig, version: int) -> ModelConfig:
    """A copy of ``config`` that makes Triton serve exactly ``version``."""
    return for_versions(config, [version])


def for_versions(config: ModelConfig, versions: Iterable[int]) -> ModelConfig:
    """A copy of ``config`` that makes Triton serve exactly ``versions``, side by side."""
    pinned = model_config_pb2.ModelConfig()
    pinned.CopyFrom(config)
    pinned.version_policy.Clear()
    pinned.version_policy.specific.versions.extend(sorted(set(versions)))
    return pinned


def same_but_versions(first: ModelConfig, second: ModelConfig) -> bool:
    """Whether two configs differ at most in the versions they make Triton serve."""
    return bool(for_versions(first, []) == for_versions(second, []))


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
