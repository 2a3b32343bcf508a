"""How much memory a model version needs once loaded, before it was ever loaded.

The estimate is a fixed cost per backend (its runtime, and for the Python
backend the stub process each instance runs) plus the version's size on disk
times a per-backend factor (weights unpacked and a runtime's working buffers).
It is replaced by a measurement after the version's first load
(``deploy/lifecycle.py``). The table is in README.md, "Placement by memory".
"""

from __future__ import annotations

from dataclasses import dataclass

from mlserve.core.errors import InvalidArgument
from mlserve.triton import modelconfig

MIB = 1024**2


@dataclass(frozen=True)
class BackendCost:
    fixed_bytes: int
    factor: float


# Backend (or platform) name -> its cost. Rough by design: a guess until measured.
BACKEND_COSTS: dict[str, BackendCost] = {
    "python": BackendCost(64 * MIB, 1.5),
    "onnxruntime": BackendCost(32 * MIB, 2.0),
    "pytorch": BackendCost(128 * MIB, 2.0),
    "tensorflow": BackendCost(256 * MIB, 2.5),
    "openvino": BackendCost(64 * MIB, 1.5),
    "fil": BackendCost(32 * MIB, 2.0),
    "ensemble": BackendCost(0, 0.0),  # an ensemble holds nothing of its own
}
UNKNOWN_BACKEND = BackendCost(64 * MIB, 2.0)
_PLATFORMS = {
    "onnxruntime_onnx": "onnxruntime",
    "pytorch_libtorch": "pytorch",
    "tensorflow_savedmodel": "tensorflow",
    "tensorflow_graphdef": "tensorflow",
}


def backend_of(config_text: str, model: str) -> str:
    """The backend a version's config names (its platform's backend if it names a
    platform); "" when the config cannot be read."""
    try:
        config = modelconfig.parse(config_text, model)
    except InvalidArgument:
        return ""
    backend: str = config.backend or _PLATFORMS.get(config.platform, config.platform)
    return backend


def instance_groups_of(config_text: str, model: str) -> tuple[modelconfig.InstanceGroup, ...]:
    """Where a version's config puts its instances (``modelconfig.instance_groups``);
    on the CPU when the config cannot be read."""
    try:
        config = modelconfig.parse(config_text, model)
    except InvalidArgument:
        return modelconfig.ON_CPU
    return modelconfig.instance_groups(config)


def estimate(size_bytes: int, backend: str) -> int:
    """The memory a version of ``size_bytes`` on disk is expected to need with ``backend``."""
    cost = BACKEND_COSTS.get(backend, UNKNOWN_BACKEND)
    return cost.fixed_bytes + round(size_bytes * cost.factor)
