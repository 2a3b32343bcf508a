"""Python client for MLServe: typed gRPC stubs, resumable upload, verified download.

from mlserve_client import Client

with Client() as mlserve:  # $MLSERVE_ADDRESS or 127.0.0.1:50051, key from $MLSERVE_HOME/admin.key
    version = mlserve.upload(Path("my_model"), "my_model")
    mlserve.deploy("my_model", version.version)
"""

from __future__ import annotations

from mlserve_client.channel import (
    DEFAULT_ADDRESS,
    StrPath,
    default_address,
    default_home,
    read_admin_key,
)
from mlserve_client.client import Client, UploadedVersion
from mlserve_client.download import artifact_destination, partial_file, safe_destination
from mlserve_client.errors import ClientError, DownloadError, MissingKeyError, ModelDirectoryError
from mlserve_client.layout import LocalFile, LocalVersion, derive_upload_id, read_model_directory
from mlserve_client.pipelines import PipelineSpecError, pipeline_from_spec, read_pipeline_spec
from mlserve_client.upload import DEFAULT_CHUNK_SIZE, Progress

__all__ = [
    "DEFAULT_ADDRESS",
    "DEFAULT_CHUNK_SIZE",
    "Client",
    "ClientError",
    "DownloadError",
    "LocalFile",
    "LocalVersion",
    "MissingKeyError",
    "ModelDirectoryError",
    "PipelineSpecError",
    "Progress",
    "StrPath",
    "UploadedVersion",
    "artifact_destination",
    "default_address",
    "default_home",
    "derive_upload_id",
    "partial_file",
    "pipeline_from_spec",
    "read_admin_key",
    "read_model_directory",
    "read_pipeline_spec",
    "safe_destination",
]
