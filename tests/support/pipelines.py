"""A three-step pipeline of Python-backend models, its members, and calls to it."""

from __future__ import annotations

import contextlib
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc as triton

from mlserve_api.v1 import deployment_pb2, model_pb2, pipeline_pb2
from mlserve_client import Client
from tests.support.mlserve import Stubs
from tests.support.uploading import stream


def upload(stubs: Stubs, files: dict[str, bytes], name: str) -> model_pb2.ModelVersion:
    files = dict(files)
    config = files.pop("config.pbtxt").decode()
    version: model_pb2.ModelVersion = stubs.models.UploadModelVersion(
        stream(name, files, config=config), metadata=stubs.auth
    )
    return version


def step(name: str, model: str, inputs: dict[str, str], outputs: dict[str, str], **kw: Any) -> Any:
    return pipeline_pb2.PipelineStep(
        name=name, model=model, input_map=inputs, output_map=outputs, **kw
    )


def chain(
    name: str, models: tuple[str, str, str], **changes: pipeline_pb2.PipelineStep
) -> pipeline_pb2.Pipeline:
    """A -> pre (x2) -> P; (P, B) -> model (add) -> S; S -> post (+100) -> OUT."""
    pre, add, post = models
    steps = {
        "pre": step("pre", pre, {"INPUT": "A"}, {"OUTPUT": "P"}),
        "model": step("model", add, {"INPUT0": "P", "INPUT1": "B"}, {"OUTPUT0": "S"}),
        "post": step("post", post, {"INPUT": "S"}, {"OUTPUT": "OUT"}),
    }
    steps.update(changes)
    return pipeline_pb2.Pipeline(
        name=name,
        inputs=[pipeline_pb2.PipelineTensor(name="A"), pipeline_pb2.PipelineTensor(name="B")],
        outputs=[pipeline_pb2.PipelineTensor(name="OUT")],
        steps=list(steps.values()),
    )


class Members:
    def __init__(self, prefix: str) -> None:
        self.pre, self.add, self.post = f"{prefix}-pre", f"{prefix}-add", f"{prefix}-post"

    @property
    def all(self) -> tuple[str, str, str]:
        return (self.pre, self.add, self.post)


def create(stubs: Stubs, pipeline: pipeline_pb2.Pipeline) -> pipeline_pb2.Pipeline:
    created: pipeline_pb2.Pipeline = stubs.pipelines.CreatePipeline(
        pipeline_pb2.CreatePipelineRequest(pipeline=pipeline), metadata=stubs.auth
    )
    return created


def cleanup(stubs: Stubs | Client, name: str) -> None:
    """Undeploy and delete pipeline ``name``, whatever state a failed test left it in."""
    auth = stubs.auth if isinstance(stubs, Stubs) else None
    with contextlib.suppress(grpc.RpcError):
        stubs.deployments.DeleteDeployment(
            deployment_pb2.DeleteDeploymentRequest(name=name), metadata=auth, timeout=60
        )
    with contextlib.suppress(grpc.RpcError):
        stubs.pipelines.DeletePipeline(pipeline_pb2.DeletePipelineRequest(name=name), metadata=auth)


def infer(address: str, model: str, headers: dict[str, str]) -> np.ndarray:
    client = triton.InferenceServerClient(address)
    a = np.array([1, 2, 3, 4], dtype=np.float32)
    b = np.array([10, 20, 30, 40], dtype=np.float32)
    inputs = [triton.InferInput("A", [4], "FP32"), triton.InferInput("B", [4], "FP32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    result: np.ndarray = client.infer(model, inputs, headers=headers).as_numpy("OUT")
    return result
