"""mlserve.v1.PipelineService over the pipelines domain."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf.empty_pb2 import Empty

from mlserve.api import convert
from mlserve.catalog.pipelines import Pipelines
from mlserve_api.v1 import pipeline_pb2, pipeline_pb2_grpc

Context = Any


class PipelineService(pipeline_pb2_grpc.PipelineServiceServicer):
    def __init__(self, pipelines: Pipelines, address: Callable[[], str]) -> None:
        self.pipelines = pipelines
        self.address = address  # the gateway's address, known once listening

    async def CreatePipeline(
        self, request: pipeline_pb2.CreatePipelineRequest, context: Context
    ) -> pipeline_pb2.Pipeline:
        wanted = request.pipeline
        record = await self.pipelines.create(
            wanted.name, wanted.description, convert.pipeline_spec(wanted), wanted.workspace
        )
        return convert.pipeline(record, self.address())

    async def GetPipeline(
        self, request: pipeline_pb2.GetPipelineRequest, context: Context
    ) -> pipeline_pb2.Pipeline:
        record = await self.pipelines.get(request.name, request.version)
        return convert.pipeline(record, self.address())

    async def ListPipelines(
        self, request: pipeline_pb2.ListPipelinesRequest, context: Context
    ) -> pipeline_pb2.ListPipelinesResponse:
        page = await self.pipelines.list_pipelines(request.page_size, request.page_token)
        return pipeline_pb2.ListPipelinesResponse(
            pipelines=[convert.pipeline(record, self.address()) for record in page.items],
            next_page_token=page.next_page_token,
        )

    async def UpdatePipeline(
        self, request: pipeline_pb2.UpdatePipelineRequest, context: Context
    ) -> pipeline_pb2.Pipeline:
        wanted = request.pipeline
        record = await self.pipelines.update(
            wanted.name,
            wanted.description,
            convert.pipeline_spec(wanted),
            list(request.update_mask.paths),
        )
        return convert.pipeline(record, self.address())

    async def DeletePipeline(
        self, request: pipeline_pb2.DeletePipelineRequest, context: Context
    ) -> Empty:
        await self.pipelines.delete(request.name)
        return Empty()

    async def CopyPipeline(
        self, request: pipeline_pb2.CopyPipelineRequest, context: Context
    ) -> pipeline_pb2.Pipeline:
        settings = {step: convert.serving_settings(s) for step, s in request.serving.items()}
        record = await self.pipelines.copy(
            request.name, request.version, request.new_name, settings
        )
        return convert.pipeline(record, self.address())
