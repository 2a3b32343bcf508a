"""``Client``: typed stubs for every MLServe service, plus upload, download and deploy."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import grpc

from mlserve_api.v1 import (
    deployment_pb2,
    deployment_pb2_grpc,
    model_pb2,
    model_pb2_grpc,
    pipeline_pb2,
    pipeline_pb2_grpc,
    server_pb2,
    server_pb2_grpc,
)
from mlserve_client.channel import DEFAULT_ADDRESS, default_home, open_channel, read_admin_key
from mlserve_client.download import VersionWriter
from mlserve_client.layout import derive_upload_id, read_model_directory
from mlserve_client.pipelines import read_pipeline_spec
from mlserve_client.upload import DEFAULT_CHUNK_SIZE, Progress, received_offsets, upload_requests

_Item = TypeVar("_Item")


class Client:
    """A connection to MLServe.

    ``models``, ``servers``, ``deployments`` and ``pipelines`` are the generated stubs, so every RPC
    is available typed; the key goes along with each call. Errors from the server
    propagate as ``grpc.RpcError``.
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        key: str | None = None,
        *,
        home: Path | None = None,
        ca: Path | None = None,
    ) -> None:
        self.address = address
        key = key if key is not None else read_admin_key(home or default_home())
        self._channel = open_channel(address, key, ca)
        self.models = model_pb2_grpc.ModelServiceStub(self._channel)
        self.servers = server_pb2_grpc.ServerServiceStub(self._channel)
        self.deployments = deployment_pb2_grpc.DeploymentServiceStub(self._channel)
        self.pipelines = pipeline_pb2_grpc.PipelineServiceStub(self._channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    # --- models -------------------------------------------------------------

    def upload(
        self,
        path: Path,
        name: str,
        *,
        version_dir: str | None = None,
        upload_id: str | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        progress: Progress | None = None,
    ) -> model_pb2.ModelVersion:
        """Upload the model folder ``path`` as a new version of ``name``, resuming if begun.

        Without ``upload_id`` one is derived from the name and the content, so running
        the same upload again continues where it stopped (or returns the version).
        """
        version = read_model_directory(path, version_dir)
        upload_id = upload_id or derive_upload_id(name, version)
        requests = upload_requests(
            name,
            upload_id,
            version,
            received_offsets(self.find_upload(upload_id)),
            chunk_size=chunk_size,
            progress=progress,
        )
        return self.models.UploadModelVersion(requests)

    def find_upload(self, upload_id: str) -> model_pb2.Upload | None:
        """The server's record of an upload, or None when it has none."""
        try:
            return self.models.GetUpload(model_pb2.GetUploadRequest(upload_id=upload_id))
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise

    def download(self, model: str, version: int, dest: Path) -> model_pb2.ModelVersion:
        """Write a version's files and its config.pbtxt into ``dest``; 0 means the latest."""
        found = self.models.GetModelVersion(
            model_pb2.GetModelVersionRequest(model=model, version=version)
        )
        chunks = self.models.DownloadModelVersion(
            model_pb2.DownloadModelVersionRequest(model=model, version=found.version)
        )
        with VersionWriter(dest, found) as writer:
            for chunk in chunks:
                writer.write(chunk)
            writer.finish()
        return found

    def list_models(self) -> Iterator[model_pb2.Model]:
        def page(token: str) -> tuple[Sequence[model_pb2.Model], str]:
            response = self.models.ListModels(model_pb2.ListModelsRequest(page_token=token))
            return response.models, response.next_page_token

        return _every_page(page)

    def list_versions(self, model: str) -> Iterator[model_pb2.ModelVersion]:
        def page(token: str) -> tuple[Sequence[model_pb2.ModelVersion], str]:
            request = model_pb2.ListModelVersionsRequest(model=model, page_token=token)
            response = self.models.ListModelVersions(request)
            return response.versions, response.next_page_token

        return _every_page(page)

    # --- servers ------------------------------------------------------------

    def list_servers(self) -> Iterator[server_pb2.Server]:
        def page(token: str) -> tuple[Sequence[server_pb2.Server], str]:
            response = self.servers.ListServers(server_pb2.ListServersRequest(page_token=token))
            return response.servers, response.next_page_token

        return _every_page(page)

    # --- deployments --------------------------------------------------------

    def list_deployments(self) -> Iterator[deployment_pb2.Deployment]:
        def page(token: str) -> tuple[Sequence[deployment_pb2.Deployment], str]:
            request = deployment_pb2.ListDeploymentsRequest(page_token=token)
            response = self.deployments.ListDeployments(request)
            return response.deployments, response.next_page_token

        return _every_page(page)

    def deploy(
        self, model: str, version: int = 0, servers: Sequence[str] | None = None
    ) -> deployment_pb2.Deployment:
        """Create or update the model's deployment; 0 means the latest version.

        ``servers`` None keeps an existing deployment's servers, and lets the server
        choose ("local") for a new one.
        """
        fields = ["version"] if servers is None else ["version", "servers"]
        request = deployment_pb2.UpdateDeploymentRequest(
            deployment=deployment_pb2.Deployment(
                name=model, model=model, version=version, servers=servers or ()
            ),
            allow_missing=True,
        )
        request.update_mask.paths.extend(fields)
        return self.deployments.UpdateDeployment(request)

    # --- pipelines ----------------------------------------------------------

    def create_pipeline(self, spec: Path | pipeline_pb2.Pipeline) -> pipeline_pb2.Pipeline:
        """Create a pipeline from a YAML spec file (see mlserve_client.pipelines) or message."""
        pipeline = read_pipeline_spec(spec) if isinstance(spec, Path) else spec
        return self.pipelines.CreatePipeline(pipeline_pb2.CreatePipelineRequest(pipeline=pipeline))

    def list_pipelines(self) -> Iterator[pipeline_pb2.Pipeline]:
        def page(token: str) -> tuple[Sequence[pipeline_pb2.Pipeline], str]:
            request = pipeline_pb2.ListPipelinesRequest(page_token=token)
            response = self.pipelines.ListPipelines(request)
            return response.pipelines, response.next_page_token

        return _every_page(page)

    def deploy_pipeline(
        self, name: str, version: int = 0, servers: Sequence[str] = ()
    ) -> deployment_pb2.Deployment:
        """Deploy a pipeline version (0: the latest) as a Triton ensemble; wait for the outcome."""
        wanted = deployment_pb2.Deployment(pipeline=name, version=version, servers=servers)
        request = deployment_pb2.CreateDeploymentRequest(deployment=wanted)
        return self.deployments.CreateDeployment(request)


def _every_page(
    fetch: Callable[[str], tuple[Sequence[_Item], str]],
) -> Iterator[_Item]:
    """Items of every page, following next_page_token until it is empty."""
    token = ""
    while True:
        items, token = fetch(token)
        yield from items
        if not token:
            return
