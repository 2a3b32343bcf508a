"""mlserve.v1.ModelService over the catalog (models, versions, artifacts) and uploads."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from google.protobuf.empty_pb2 import Empty

from mlserve.api import convert
from mlserve.catalog.artifacts import Artifacts
from mlserve.catalog.models import Models
from mlserve.catalog.uploads import Uploads
from mlserve.catalog.versions import Versions
from mlserve.deploy.lifecycle import Deployments
from mlserve.gateway.stats import InferenceStats
from mlserve_api.v1 import model_pb2, model_pb2_grpc

Context = Any


class ModelService(model_pb2_grpc.ModelServiceServicer):
    def __init__(
        self,
        models: Models,
        versions: Versions,
        artifacts: Artifacts,
        uploads: Uploads,
        stats: InferenceStats,
        deployments: Deployments,
    ) -> None:
        self.models = models
        self.versions = versions
        self.artifacts = artifacts
        self.uploads = uploads
        self.stats = stats
        self.deployments = deployments

    async def CreateModel(
        self, request: model_pb2.CreateModelRequest, context: Context
    ) -> model_pb2.Model:
        record = await self.models.create_model(
            request.model.name, convert.model_fields(request.model), request.model.workspace
        )
        return convert.model(record)

    async def GetModel(
        self, request: model_pb2.GetModelRequest, context: Context
    ) -> model_pb2.Model:
        record = await self.models.get_model(request.name)
        usage = await self.stats.usage(record.name)
        return convert.model(record, usage, await self.deployments.of_model(record.name))

    async def ListModels(
        self, request: model_pb2.ListModelsRequest, context: Context
    ) -> model_pb2.ListModelsResponse:
        page = await self.models.list_models(
            request.page_size, request.page_token, convert.model_query(request)
        )
        return model_pb2.ListModelsResponse(
            models=[convert.model(record) for record in page.items],
            next_page_token=page.next_page_token,
        )

    async def UpdateModel(
        self, request: model_pb2.UpdateModelRequest, context: Context
    ) -> model_pb2.Model:
        record = await self.models.update_model(
            request.model.name, convert.model_fields(request.model), list(request.update_mask.paths)
        )
        return convert.model(record)

    async def DeleteModel(self, request: model_pb2.DeleteModelRequest, context: Context) -> Empty:
        await self.models.delete_model(request.name)
        return Empty()

    async def UploadModelVersion(
        self, request_iterator: AsyncIterator[model_pb2.UploadModelVersionRequest], context: Context
    ) -> model_pb2.ModelVersion:
        parts = convert.stream_parts(request_iterator, convert.upload_part)
        return convert.version(await self.uploads.receive(parts))

    async def GetUpload(
        self, request: model_pb2.GetUploadRequest, context: Context
    ) -> model_pb2.Upload:
        return convert.upload(await self.uploads.get(convert.upload_id(request.upload_id)))

    async def ListUploads(
        self, request: model_pb2.ListUploadsRequest, context: Context
    ) -> model_pb2.ListUploadsResponse:
        page = await self.uploads.list_uploads(
            request.page_size, request.page_token, all_users=request.all_users
        )
        return model_pb2.ListUploadsResponse(
            uploads=[convert.upload(record) for record in page.items],
            next_page_token=page.next_page_token,
        )

    async def CancelUpload(self, request: model_pb2.CancelUploadRequest, context: Context) -> Empty:
        await self.uploads.cancel(convert.upload_id(request.upload_id))
        return Empty()

    async def ListModelVersions(
        self, request: model_pb2.ListModelVersionsRequest, context: Context
    ) -> model_pb2.ListModelVersionsResponse:
        page = await self.versions.list_versions(
            request.model, request.page_size, request.page_token
        )
        return model_pb2.ListModelVersionsResponse(
            versions=[convert.version(record) for record in page.items],
            next_page_token=page.next_page_token,
        )

    async def GetModelVersion(
        self, request: model_pb2.GetModelVersionRequest, context: Context
    ) -> model_pb2.ModelVersion:
        record = await self.versions.get_version(request.model, request.version)
        return convert.version(record, await self.stats.usage(record.model, record.version))

    async def DeleteModelVersion(
        self, request: model_pb2.DeleteModelVersionRequest, context: Context
    ) -> Empty:
        await self.versions.delete_version(request.model, request.version)
        return Empty()

    async def DownloadModelVersion(
        self, request: model_pb2.DownloadModelVersionRequest, context: Context
    ) -> AsyncIterator[model_pb2.FileChunk]:
        chunks = self.versions.download(
            request.model, request.version, request.path, request.offset
        )
        async for chunk in chunks:
            yield model_pb2.FileChunk(path=chunk.path, offset=chunk.offset, data=chunk.data)

    async def UploadArtifact(
        self, request_iterator: AsyncIterator[model_pb2.UploadArtifactRequest], context: Context
    ) -> model_pb2.Artifact:
        parts = convert.stream_parts(request_iterator, convert.artifact_upload_part)
        return convert.artifact(await self.uploads.receive_artifact(parts))

    async def GetArtifact(
        self, request: model_pb2.GetArtifactRequest, context: Context
    ) -> model_pb2.Artifact:
        record = await self.artifacts.get_artifact(request.model, request.version, request.path)
        return convert.artifact(record)

    async def ListArtifacts(
        self, request: model_pb2.ListArtifactsRequest, context: Context
    ) -> model_pb2.ListArtifactsResponse:
        page = await self.artifacts.list_artifacts(
            request.model,
            request.version,
            request.page_size,
            request.page_token,
            convert.artifact_kind(request.kind),
        )
        return model_pb2.ListArtifactsResponse(
            artifacts=[convert.artifact(record) for record in page.items],
            next_page_token=page.next_page_token,
        )

    async def DownloadArtifact(
        self, request: model_pb2.DownloadArtifactRequest, context: Context
    ) -> AsyncIterator[model_pb2.FileChunk]:
        chunks = self.artifacts.download_artifact(
            request.model, request.version, request.path, request.offset
        )
        async for chunk in chunks:
            yield model_pb2.FileChunk(path=chunk.path, offset=chunk.offset, data=chunk.data)
