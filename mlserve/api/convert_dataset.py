"""Dataset records to protos and back; nothing else."""

from __future__ import annotations

from mlserve.api.convert import (
    _VISIBILITY,
    enum_name,
    enum_value,
    file_chunk,
    file_manifest,
    timestamp,
    upload_id,
)
from mlserve.catalog.datasets import (
    DatasetFields,
    DatasetQuery,
    DatasetRecord,
    DatasetVersionRecord,
)
from mlserve.catalog.uploads import Chunk, DatasetUploadHeader
from mlserve.storage.blobs import FileSpec
from mlserve_api.v1 import dataset_pb2


def dataset(record: DatasetRecord) -> dataset_pb2.Dataset:
    return dataset_pb2.Dataset(
        name=record.name,
        description=record.fields.description,
        tags=list(record.fields.tags),
        workspace=record.workspace,
        visibility=enum_value(*_VISIBILITY, record.fields.visibility),  # type: ignore[arg-type]
        create_time=timestamp(record.create_time),
        update_time=timestamp(record.update_time),
        latest_version=record.latest_version,
        version_count=record.version_count,
    )


def dataset_fields(message: dataset_pb2.Dataset) -> DatasetFields:
    return DatasetFields(
        description=message.description,
        tags=list(message.tags),
        visibility=enum_name(*_VISIBILITY, message.visibility),
    )


def dataset_query(request: dataset_pb2.ListDatasetsRequest) -> DatasetQuery:
    return DatasetQuery(
        name_prefix=request.name_prefix,
        workspace=request.workspace,
        tags_all=list(request.tags_all),
        tags_any=list(request.tags_any),
    )


def dataset_version(record: DatasetVersionRecord) -> dataset_pb2.DatasetVersion:
    return dataset_pb2.DatasetVersion(
        dataset=record.dataset,
        version=record.version,
        sha256=record.sha256,
        size_bytes=record.size_bytes,
        files=[
            dataset_pb2.DatasetFile(file=file_manifest(entry.spec), row_count=entry.row_count)
            for entry in record.files
        ],
        columns=[dataset_pb2.DatasetColumn(name=name, type=kind) for name, kind in record.columns],
        row_count=record.row_count,
        create_time=timestamp(record.create_time),
        upload_id=record.upload_id,
    )


def upload_part(message: dataset_pb2.UploadDatasetVersionRequest) -> DatasetUploadHeader | Chunk:
    if message.HasField("header"):
        header = message.header
        return DatasetUploadHeader(
            dataset=header.dataset,
            upload_id=upload_id(header.upload_id, chosen=True),
            files=[FileSpec(f.path, f.size, f.sha256) for f in header.files],
        )
    return file_chunk(message.chunk)
