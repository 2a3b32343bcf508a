"""Serving settings: batching and instance counts written into the config
MLServe gives Triton, set at deploy time without touching the stored version."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from tritonclient.grpc import model_config_pb2

from mlserve.core.errors import InvalidArgument
from mlserve.triton.modelconfig import ModelConfig


@dataclass(frozen=True)
class ServingSettings:
    """Zero or empty fields keep the model's own config."""

    max_batch_size: int = 0
    instance_count: int = 0
    dynamic_batching: bool = False
    preferred_batch_sizes: tuple[int, ...] = field(default=())
    max_queue_delay_microseconds: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> ServingSettings:
        return cls.from_dict(json.loads(text or "{}"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServingSettings:
        data = dict(data)
        data["preferred_batch_sizes"] = tuple(data.get("preferred_batch_sizes", ()))
        return cls(**data)


NO_SETTINGS = ServingSettings()


def apply(config: ModelConfig, settings: ServingSettings, what: str) -> ModelConfig:
    """A copy of ``config`` with ``settings`` written in; ``what`` names it in errors."""
    check(settings, what)
    if settings == NO_SETTINGS:
        return config
    result = model_config_pb2.ModelConfig()
    result.CopyFrom(config)
    if settings.max_batch_size:
        if not config.max_batch_size:
            raise InvalidArgument(
                f"{what}: max_batch_size {settings.max_batch_size} cannot be set because the "
                "model's config has max_batch_size 0 (its tensors have no batch dimension)"
            )
        result.max_batch_size = settings.max_batch_size
    if settings.instance_count:
        if not result.instance_group:
            result.instance_group.add(kind=model_config_pb2.ModelInstanceGroup.KIND_CPU)
        for group in result.instance_group:
            group.count = settings.instance_count
    if settings.dynamic_batching:
        if not result.max_batch_size:
            raise InvalidArgument(
                f"{what}: dynamic batching needs max_batch_size > 0, and the model's is 0"
            )
        too_big = [size for size in settings.preferred_batch_sizes if size > result.max_batch_size]
        if too_big:
            raise InvalidArgument(
                f"{what}: preferred batch size {too_big[0]} is above max_batch_size "
                f"{result.max_batch_size}"
            )
        batching = result.dynamic_batching
        batching.Clear()
        batching.preferred_batch_size.extend(settings.preferred_batch_sizes)
        batching.max_queue_delay_microseconds = settings.max_queue_delay_microseconds
    return result


def check(settings: ServingSettings, what: str) -> None:
    numbers = {
        "max_batch_size": settings.max_batch_size,
        "instance_count": settings.instance_count,
        "max_queue_delay_microseconds": settings.max_queue_delay_microseconds,
    }
    for name, value in numbers.items():
        if value < 0:
            raise InvalidArgument(f"{what}: {name} must not be negative, got {value}")
    if any(size <= 0 for size in settings.preferred_batch_sizes):
        raise InvalidArgument(f"{what}: preferred batch sizes must be positive")
    if settings.instance_count > 64:
        raise InvalidArgument(f"{what}: instance_count {settings.instance_count} is above 64")
