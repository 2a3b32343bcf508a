"""Pipeline specs in YAML: read with PyYAML, parsed into the Pipeline message
by protobuf's own JSON mapping, so every field the API has is accepted under
its proto name (``input_map``) or JSON name (``inputMap``).

    name: chain
    inputs: [A, B]            # names; {name: A} works too
    outputs: [OUT]
    steps:
      - {name: pre, model: pre, input_map: {INPUT: A}, output_map: {OUTPUT: P}}
      - name: model
        model: add
        model_version: 2      # omit: the deployed version, else the latest
        input_map: {INPUT0: P, INPUT1: B}
        output_map: {OUTPUT0: OUT}
        serving:
          max_batch_size: 8
          instance_count: 2
          dynamic_batching: {preferred_batch_sizes: [4, 8], max_queue_delay_microseconds: 500}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format

from mlserve_api.v1 import pipeline_pb2
from mlserve_client.errors import ClientError


class PipelineSpecError(ClientError):
    """A pipeline spec file that cannot be read as a Pipeline."""


def pipeline_from_spec(spec: Any) -> pipeline_pb2.Pipeline:
    """The Pipeline message a parsed spec (a mapping) describes."""
    if not isinstance(spec, dict):
        raise PipelineSpecError("a pipeline spec is a mapping with name, inputs, outputs, steps")
    spec = dict(spec)
    for kind in ("inputs", "outputs"):
        spec[kind] = [{"name": t} if isinstance(t, str) else t for t in spec.get(kind) or []]
    message = pipeline_pb2.Pipeline()
    try:
        json_format.ParseDict(spec, message)
    except json_format.ParseError as error:
        raise PipelineSpecError(f"the pipeline spec is not valid: {error}") from None
    return message


def read_pipeline_spec(path: Path) -> pipeline_pb2.Pipeline:
    """The Pipeline a YAML (or JSON) spec file describes."""
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise PipelineSpecError(f"{path} is not valid YAML: {error}") from None
    return pipeline_from_spec(spec)
