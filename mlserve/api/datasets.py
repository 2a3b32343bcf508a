"""mlserve.v1.DatasetService over the catalog's datasets and the uploads."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from google.protobuf.empty_pb2 import Empty

from mlserve.api import convert_dataset as convert
from mlserve.api.convert import stream_parts
from mlserve.catalog.datasets import Datasets
from mlserve.catalog.uploads import Uploads
from mlserve_api.v1 import dataset_pb2, dataset_pb2_grpc, model_pb2

Context = Any


class DatasetService(dataset_pb2_grpc.DatasetServiceServicer):
    def __init__(self, datasets: Datasets, uploads: Uploads) -> None:
        self.datasets = datasets
        self.uploads = uploads

    async def CreateDataset(
        self, request: dataset_pb2.CreateDatasetRequest, context: Context
    ) -> dataset_pb2.Dataset:
        record = await self.datasets.create_dataset(
            request.dataset.name,
            convert.dataset_fields(request.dataset),
            request.dataset.workspace,
        )
        return convert.dataset(record)

    async def GetDataset(
        self, request: dataset_pb2.GetDatasetRequest, context: Context
    ) -> dataset_pb2.Dataset:
        return convert.dataset(await self.datasets.get_dataset(request.name))

    async def ListDatasets(
        self, request: dataset_pb2.ListDatasetsRequest, context: Context
    ) -> dataset_pb2.ListDatasetsResponse:
        page = await self.datasets.list_datasets(
            request.page_size, request.page_token, convert.dataset_query(request)
        )
        return dataset_pb2.ListDatasetsResponse(
            datasets=[convert.dataset(record) for record in page.items],
            next_page_token=page.next_page_token,
        )

    async def UpdateDataset(
        self, request: dataset_pb2.UpdateDatasetRequest, context: Context
    ) -> dataset_pb2.Dataset:
        record = await self.datasets.update_dataset(
            request.dataset.name,
            convert.dataset_fields(request.dataset),
            list(request.update_mask.paths),
        )
        return convert.dataset(record)

    async def DeleteDataset(
        self, request: dataset_pb2.DeleteDatasetRequest, context: Context
    ) -> Empty:
        await self.datasets.delete_dataset(request.name)
        return Empty()

    async def UploadDatasetVersion(
        self,
        request_iterator: AsyncIterator[dataset_pb2.UploadDatasetVersionRequest],
        context: Context,
    ) -> dataset_pb2.DatasetVersion:
        parts = stream_parts(request_iterator, convert.upload_part)
        return convert.dataset_version(await self.uploads.receive_dataset(parts))

    async def GetDatasetVersion(
        self, request: dataset_pb2.GetDatasetVersionRequest, context: Context
    ) -> dataset_pb2.DatasetVersion:
        record = await self.datasets.get_version(request.dataset, request.version)
        return convert.dataset_version(record)

    async def ListDatasetVersions(
        self, request: dataset_pb2.ListDatasetVersionsRequest, context: Context
    ) -> dataset_pb2.ListDatasetVersionsResponse:
        page = await self.datasets.list_versions(
            request.dataset, request.page_size, request.page_token
        )
        return dataset_pb2.ListDatasetVersionsResponse(
            versions=[convert.dataset_version(record) for record in page.items],
            next_page_token=page.next_page_token,
        )

    async def DownloadDatasetVersion(
        self, request: dataset_pb2.DownloadDatasetVersionRequest, context: Context
    ) -> AsyncIterator[model_pb2.FileChunk]:
        chunks = self.datasets.download(
            request.dataset, request.version, request.path, request.offset
        )
        async for chunk in chunks:
            yield model_pb2.FileChunk(path=chunk.path, offset=chunk.offset, data=chunk.data)

    async def ListDatasetTags(
        self, request: dataset_pb2.ListDatasetTagsRequest, context: Context
    ) -> dataset_pb2.ListDatasetTagsResponse:
        tags = await self.datasets.list_tags()
        return dataset_pb2.ListDatasetTagsResponse(
            tags=[dataset_pb2.DatasetTagCount(tag=tag, count=count) for tag, count in tags]
        )

    async def SearchDatasets(
        self, request: dataset_pb2.SearchDatasetsRequest, context: Context
    ) -> dataset_pb2.SearchDatasetsResponse:
        page = await self.datasets.search_datasets(
            list(request.query), request.page_size, request.page_token
        )
        return dataset_pb2.SearchDatasetsResponse(
            datasets=[convert.dataset(record) for record in page.items],
            next_page_token=page.next_page_token,
        )
