"""``Client``: typed stubs for every MLServe service, plus upload, download and deploy."""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc

from mlserve_api.v1 import (
    app_pb2_grpc,
    assay_pb2,
    assay_pb2_grpc,
    audit_pb2_grpc,
    dataset_pb2,
    dataset_pb2_grpc,
    deployment_pb2,
    deployment_pb2_grpc,
    explain_pb2,
    explain_pb2_grpc,
    inference_log_pb2,
    inference_log_pb2_grpc,
    instance_pb2_grpc,
    model_pb2,
    model_pb2_grpc,
    pipeline_pb2,
    pipeline_pb2_grpc,
    server_pb2,
    server_pb2_grpc,
    training_pb2,
    training_pb2_grpc,
    user_pb2,
    user_pb2_grpc,
    workspace_pb2_grpc,
)
from mlserve_client import inference_logs
from mlserve_client.assays import read_assay_spec
from mlserve_client.channel import (
    StrPath,
    default_address,
    default_home,
    open_channel,
    read_admin_key,
    upload_scope,
)
from mlserve_client.digests import DigestCache
from mlserve_client.download import ArtifactWriter, VersionWriter, artifact_destination
from mlserve_client.errors import ClientError
from mlserve_client.layout import LocalFile, derive_upload_id, file_sha256, read_model_directory
from mlserve_client.pipelines import read_pipeline_spec
from mlserve_client.upload import (
    DEFAULT_CHUNK_SIZE,
    Progress,
    artifact_requests,
    as_declared,
    missing_chunks,
    received_offsets,
    upload_requests,
    version_header,
)

_Item = TypeVar("_Item")


@dataclass(frozen=True)
class UploadedVersion:
    """What an upload gave: the version, and whether it was stored before this upload."""

    version: model_pb2.ModelVersion
    already_stored: bool
    """True when the same content was already a version of the model (nothing new made)."""


class Client:
    """A connection to MLServe.

    ``models``, ``servers``, ``deployments``, ``pipelines``, ``users``, ``workspaces``,
    ``apps``, ``audit``, ``instance``, ``datasets``, ``training`` and ``logs`` (the
    inference log) are the generated
    stubs, so every RPC
    is available typed; the key goes along with each call. Errors from the server
    propagate as ``grpc.RpcError``.
    """

    def __init__(
        self,
        address: str | None = None,
        key: str | None = None,
        *,
        token: str | None = None,
        home: StrPath | None = None,
        ca: StrPath | None = None,
    ) -> None:
        """Connect to ``address`` ($MLSERVE_ADDRESS or 127.0.0.1:50051) with an API ``key``
        or an OpenID Connect ``token`` (from an issuer MLServe trusts); with neither, the
        key is ``home``'s admin.key (home: $MLSERVE_HOME or ~/.mlserve); ``ca`` (a PEM
        file) turns TLS on. Paths may be str or Path."""
        if key is not None and token is not None:
            raise ValueError("give an API key or a token, not both")
        self.address = address = address or default_address()
        bearer = token or (key if key is not None else read_admin_key(home or default_home()))
        self._channel = open_channel(address, bearer, ca)
        # Derived upload ids are per caller, as uploads belong to the user who
        # began them: a key's public id, or a digest of the token's identity.
        self._upload_scope = upload_scope(bearer)
        self.models = model_pb2_grpc.ModelServiceStub(self._channel)
        self.instance = instance_pb2_grpc.InstanceServiceStub(self._channel)
        self.servers = server_pb2_grpc.ServerServiceStub(self._channel)
        self.deployments = deployment_pb2_grpc.DeploymentServiceStub(self._channel)
        self.users = user_pb2_grpc.UserServiceStub(self._channel)
        self.workspaces = workspace_pb2_grpc.WorkspaceServiceStub(self._channel)
        self.apps = app_pb2_grpc.AppServiceStub(self._channel)
        self.audit = audit_pb2_grpc.AuditServiceStub(self._channel)
        self.pipelines = pipeline_pb2_grpc.PipelineServiceStub(self._channel)
        self.logs = inference_log_pb2_grpc.InferenceLogServiceStub(self._channel)
        self.datasets = dataset_pb2_grpc.DatasetServiceStub(self._channel)
        self.assays = assay_pb2_grpc.AssayServiceStub(self._channel)
        self.training = training_pb2_grpc.TrainingServiceStub(self._channel)
        self.explain_service = explain_pb2_grpc.ExplainServiceStub(self._channel)

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
        path: StrPath,
        name: str,
        *,
        version_dir: str | None = None,
        upload_id: str | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        progress: Progress | None = None,
        prehash: bool = False,
    ) -> model_pb2.ModelVersion:
        """Upload the model folder ``path`` as a new version of ``name``, resuming if begun.

        Without ``upload_id`` one is derived from the name and the content, so running
        the same upload again continues where it stopped (or returns the version).
        Content the model already has as a version returns that version.

        Each file is hashed while it is sent, its digest following its bytes, unless
        its digest is known already (``digests.DigestCache``: files this client
        uploaded before, unchanged) or ``prehash`` asks to hash every file first;
        content the server already stores is sent again only when its digest was
        not known before sending.
        """
        return self.upload_version(
            path,
            name,
            version_dir=version_dir,
            upload_id=upload_id,
            chunk_size=chunk_size,
            progress=progress,
            prehash=prehash,
        ).version

    def upload_version(
        self,
        path: StrPath,
        name: str,
        *,
        version_dir: str | None = None,
        upload_id: str | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        progress: Progress | None = None,
        prehash: bool = False,
    ) -> UploadedVersion:
        """``upload``, also telling whether the content was already stored as a version."""
        cache = DigestCache.default()
        version = read_model_directory(
            Path(path), version_dir, known=None if prehash else cache.get
        )
        upload_id = upload_id or derive_upload_id(name, version, self._upload_scope)
        before = self.find_upload(upload_id)
        version = as_declared(version, before)
        done, received = self._announce(
            self.models.UploadModelVersion,
            version_header(name, upload_id, version),
            upload_id,
            before,
        )
        if done is None:
            requests = upload_requests(
                name, upload_id, version, received, chunk_size=chunk_size, progress=progress
            )
            done = self.models.UploadModelVersion(requests)
        verified = {file.path: file.sha256 for file in done.files}
        cache.remember((file.identity, verified.get(file.path, "")) for file in version.files)
        # Identical content is answered with the version it made before: through this
        # upload id (committed already), or through another one.
        already_stored = done.upload_id != upload_id or (
            before is not None
            and before.state == model_pb2.UPLOAD_STATE_COMMITTED
            and before.version == done.version
        )
        return UploadedVersion(done, already_stored=already_stored)

    def _announce(
        self,
        call: Callable[[Iterator[Any]], Any],
        header: Any,
        upload_id: str,
        before: model_pb2.Upload | None,
    ) -> tuple[Any, Mapping[str, int]]:
        """Send the header alone, then learn which bytes the server still needs.

        The server counts content it already stores (same sha256) as received,
        so only new bytes travel; when it needs none the header alone finishes
        the upload and its result comes back. Otherwise the stream ends
        incomplete (FAILED_PRECONDITION, expected) and GetUpload says what to send.
        """
        received = received_offsets(before)
        try:
            return call(iter([header])), received
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.FAILED_PRECONDITION:
                raise
        return None, received_offsets(self.find_upload(upload_id))

    # --- datasets -----------------------------------------------------------

    def create_dataset(
        self,
        name: str,
        *,
        description: str = "",
        tags: Sequence[str] = (),
        public: bool = False,
        workspace: str = "",
    ) -> dataset_pb2.Dataset:
        """Create an empty dataset ``name`` (private to its workspace unless ``public``)."""
        dataset = dataset_pb2.Dataset(
            name=name,
            description=description,
            tags=list(tags),
            workspace=workspace,
            visibility=model_pb2.VISIBILITY_PUBLIC if public else model_pb2.VISIBILITY_PRIVATE,
        )
        return self.datasets.CreateDataset(dataset_pb2.CreateDatasetRequest(dataset=dataset))

    def upload_dataset(
        self,
        name: str,
        paths: Sequence[StrPath],
        *,
        upload_id: str | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        progress: Progress | None = None,
    ) -> dataset_pb2.DatasetVersion:
        """Upload the CSV or Parquet files ``paths`` (each under its file name) as the next
        version of dataset ``name``, resuming an interrupted upload; content the server
        has is not sent. The server reads the schema from the files."""
        files = []
        for source in map(Path, paths):
            size, sha256 = file_sha256(source)
            files.append(LocalFile(path=source.name, source=source, size=size, sha256=sha256))
        if upload_id is None:
            listed = "\n".join(f"{f.path}\n{f.size}\n{f.sha256}" for f in files)
            key = f"dataset\n{name}\n{listed}\n{self._upload_scope}"
            upload_id = "d-" + hashlib.sha256(key.encode()).hexdigest()[:40]
        header = dataset_pb2.UploadDatasetVersionRequest(
            header=dataset_pb2.DatasetUploadHeader(
                dataset=name, upload_id=upload_id, files=[f.manifest() for f in files]
            )
        )
        done, received = self._announce(
            self.datasets.UploadDatasetVersion, header, upload_id, self.find_upload(upload_id)
        )
        if done is not None:
            return done  # type: ignore[no-any-return]
        chunks = missing_chunks(files, received, chunk_size=chunk_size, progress=progress)
        requests = itertools.chain(
            [header], (dataset_pb2.UploadDatasetVersionRequest(chunk=c) for c in chunks)
        )
        return self.datasets.UploadDatasetVersion(requests)

    def list_datasets(
        self, *, tags_all: Sequence[str] = (), tags_any: Sequence[str] = ()
    ) -> Iterator[dataset_pb2.Dataset]:
        """Every dataset the caller may see carrying all of ``tags_all`` and one of
        ``tags_any`` (when given), by name."""

        def page(token: str) -> tuple[Sequence[dataset_pb2.Dataset], str]:
            request = dataset_pb2.ListDatasetsRequest(
                page_token=token, tags_all=list(tags_all), tags_any=list(tags_any)
            )
            response = self.datasets.ListDatasets(request)
            return response.datasets, response.next_page_token

        return _every_page(page)

    def search_datasets(self, terms: Sequence[str]) -> Iterator[dataset_pb2.Dataset]:
        """The visible datasets carrying every tag of ``terms`` ("#tag" each)."""

        def page(token: str) -> tuple[Sequence[dataset_pb2.Dataset], str]:
            request = dataset_pb2.SearchDatasetsRequest(query=list(terms), page_token=token)
            response = self.datasets.SearchDatasets(request)
            return response.datasets, response.next_page_token

        return _every_page(page)

    def dataset_tags(self) -> dict[str, int]:
        """Every tag of the visible datasets, with how many carry it."""
        response = self.datasets.ListDatasetTags(dataset_pb2.ListDatasetTagsRequest())
        return {entry.tag: entry.count for entry in response.tags}

    def download_dataset(
        self, name: str, version: int, dest: StrPath
    ) -> dataset_pb2.DatasetVersion:
        """Write the version's files into the folder ``dest``, each checked against its
        sha256 (a mismatch raises ValueError and leaves no file)."""
        found = self.datasets.GetDatasetVersion(
            dataset_pb2.GetDatasetVersionRequest(dataset=name, version=version)
        )
        folder = Path(dest)
        folder.mkdir(parents=True, exist_ok=True)
        expected = {entry.file.path: entry.file.sha256 for entry in found.files}
        digests = {path: hashlib.sha256() for path in expected}
        partial = {path: folder / (path + ".part") for path in expected}
        handles = {path: target.open("wb") for path, target in partial.items()}
        try:
            chunks = self.datasets.DownloadDatasetVersion(
                dataset_pb2.DownloadDatasetVersionRequest(dataset=name, version=found.version)
            )
            for chunk in chunks:
                handles[chunk.path].write(chunk.data)
                digests[chunk.path].update(chunk.data)
        finally:
            for handle in handles.values():
                handle.close()
        wrong = [path for path, digest in digests.items() if digest.hexdigest() != expected[path]]
        if wrong:
            for target in partial.values():
                target.unlink()
            raise ValueError(f"{', '.join(wrong)} arrived with the wrong sha256; download again")
        for path, target in partial.items():
            target.replace(folder / path)
        return found

    # --- training -----------------------------------------------------------

    def train(
        self,
        model: str,
        code_path: str,
        dataset: str,
        *,
        code_version: int = 0,
        dataset_version: int = 0,
        parameters: Mapping[str, str] | None = None,
        env_path: str = "",
        runner_labels: Sequence[str] = (),
        network: bool = False,
        code_dataset: str = "",
        code_dataset_version: int = 0,
    ) -> training_pb2.TrainingJob:
        """Queue a training job: ``model``'s code artifact ``code_path`` (of
        ``code_version``; 0: the latest) on ``dataset`` (``dataset_version``; 0: the latest).
        ``env_path``: an env artifact of the same version whose requirements the runner
        must meet; ``runner_labels``: labels the runner must have; ``network``: run with
        the host's network (when the admin allows it); ``code_dataset``: take the script
        ``code_path`` from that dataset (``code_dataset_version``; 0: the latest) instead."""
        job = training_pb2.TrainingJob(
            model=model,
            code_version=code_version,
            code_path=code_path,
            training_dataset=model_pb2.DatasetVersionRef(dataset=dataset, version=dataset_version),
            parameters=dict(parameters or {}),
            env_path=env_path,
            runner_labels=list(runner_labels),
            network=network,
            code_dataset=model_pb2.DatasetVersionRef(
                dataset=code_dataset, version=code_dataset_version
            )
            if code_dataset
            else None,
        )
        return self.training.CreateTrainingJob(training_pb2.CreateTrainingJobRequest(job=job))

    def list_training_jobs(
        self, *, model: str = "", state: str = ""
    ) -> Iterator[training_pb2.TrainingJob]:
        """Every visible training job, newest first, of ``model`` and in ``state`` (e.g.
        ``"RUNNING"``) when given."""
        value = training_pb2.TrainingJobState.Value(
            f"TRAINING_JOB_STATE_{state}" if state else "TRAINING_JOB_STATE_UNSPECIFIED"
        )

        def page(token: str) -> tuple[Sequence[training_pb2.TrainingJob], str]:
            request = training_pb2.ListTrainingJobsRequest(
                model=model, state=value, page_token=token
            )
            response = self.training.ListTrainingJobs(request)
            return response.jobs, response.next_page_token

        return _every_page(page)

    def follow_training(
        self, job_id: str, on_line: Callable[[str], None] | None = None
    ) -> training_pb2.TrainingJob:
        """Wait for the job to end, handing each log line to ``on_line``; the final job."""
        last = None
        events = self.training.WatchTrainingJob(training_pb2.WatchTrainingJobRequest(id=job_id))
        for event in events:
            if event.HasField("log_line"):
                if on_line is not None:
                    on_line(event.log_line)
            else:
                last = event.job
        if last is None:
            raise ClientError(f"training job {job_id!r} sent no state before its stream ended")
        return last

    # --- explanations -------------------------------------------------------

    def explain(
        self,
        model: str,
        rows: Sequence[Sequence[float]],
        *,
        dataset: str = "",
        dataset_version: int = 0,
        samples: int = 0,
        background_size: int = 0,
        output: str = "",
        include_prediction: bool = False,
        log_since: dt.datetime | dt.timedelta | None = None,
        log_until: dt.datetime | dt.timedelta | None = None,
        timeout: float | None = None,
    ) -> explain_pb2.ExplainResponse:
        """KernelSHAP contributions of each feature to ``model``'s output for each row.

        The background is the deployed version's training dataset unless ``dataset``
        names one, or ``log_since`` / ``log_until`` (a datetime, or a timedelta: that
        long ago) name a window of the inference log whose logged inputs serve; 0 for
        ``samples`` / ``background_size`` means the server's defaults."""
        request = explain_pb2.ExplainRequest(
            model=model,
            rows=[explain_pb2.ExplainRow(values=list(row)) for row in rows],
            output=output,
            samples=samples,
            background_size=background_size,
            include_prediction=include_prediction,
        )
        if dataset:
            request.background_dataset.CopyFrom(
                model_pb2.DatasetVersionRef(dataset=dataset, version=dataset_version)
            )
        if log_since is not None or log_until is not None:
            request.background_log.CopyFrom(
                explain_pb2.LogWindow(
                    start_time=inference_logs.timestamp(log_since),
                    end_time=inference_logs.timestamp(log_until),
                )
            )
        return self.explain_service.Explain(request, timeout=timeout)

    # --- artifacts ----------------------------------------------------------

    def upload_artifact(
        self,
        model: str,
        version: int,
        path: StrPath,
        kind: model_pb2.ArtifactKind.ValueType,
        *,
        name: str | None = None,
        upload_id: str | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        progress: Progress | None = None,
    ) -> model_pb2.Artifact:
        """Attach the file ``path`` to ``model``'s ``version`` as ``name`` (its file name by
        default), resuming an interrupted upload; content the server has is not sent."""
        path = Path(path)
        size, sha256 = file_sha256(path)
        file = LocalFile(path=name or path.name, source=path, size=size, sha256=sha256)
        if upload_id is None:
            key = f"{model}\n{version}\n{kind}\n{file.path}\n{size}\n{sha256}\n{self._upload_scope}"
            upload_id = "a-" + hashlib.sha256(key.encode()).hexdigest()[:40]
        header = model_pb2.ArtifactUploadHeader(
            model=model, version=version, upload_id=upload_id, kind=kind, file=file.manifest()
        )
        request = model_pb2.UploadArtifactRequest(header=header)
        done, received = self._announce(
            self.models.UploadArtifact, request, upload_id, self.find_upload(upload_id)
        )
        if done is not None:
            return done  # type: ignore[no-any-return]
        requests = artifact_requests(
            header, file, received, chunk_size=chunk_size, progress=progress
        )
        return self.models.UploadArtifact(requests)

    def download_artifact(
        self, model: str, version: int, path: str, dest: StrPath
    ) -> model_pb2.Artifact:
        """Write artifact ``path`` to the file ``dest``, checked against its sha256.

        A ``dest`` that is a directory, or ends in '/', gets the artifact inside it under
        its own name. Bytes go to the file + ".part" first; if that exists from an
        interrupted download, the download resumes after it.
        """
        artifact = self.models.GetArtifact(
            model_pb2.GetArtifactRequest(model=model, version=version, path=path)
        )
        with ArtifactWriter(artifact_destination(dest, artifact.path), artifact) as writer:
            chunks = self.models.DownloadArtifact(
                model_pb2.DownloadArtifactRequest(
                    model=model, version=artifact.version, path=path, offset=writer.written
                )
            )
            for chunk in chunks:
                writer.write(chunk)
            writer.finish()
        return artifact

    def list_artifacts(self, model: str, version: int) -> Iterator[model_pb2.Artifact]:
        def page(token: str) -> tuple[Sequence[model_pb2.Artifact], str]:
            request = model_pb2.ListArtifactsRequest(model=model, version=version, page_token=token)
            response = self.models.ListArtifacts(request)
            return response.artifacts, response.next_page_token

        return _every_page(page)

    def list_uploads(self, *, all_users: bool = False) -> Iterator[model_pb2.Upload]:
        """The caller's uploads, unfinished and committed; every user's (admins) with all_users."""

        def page(token: str) -> tuple[Sequence[model_pb2.Upload], str]:
            request = model_pb2.ListUploadsRequest(page_token=token, all_users=all_users)
            response = self.models.ListUploads(request)
            return response.uploads, response.next_page_token

        return _every_page(page)

    def cancel_upload(self, upload_id: str) -> None:
        """Abandon an unfinished upload: the server deletes its staged bytes."""
        self.models.CancelUpload(model_pb2.CancelUploadRequest(upload_id=upload_id))

    def find_upload(self, upload_id: str) -> model_pb2.Upload | None:
        """The server's record of an upload, or None when it has none."""
        try:
            return self.models.GetUpload(model_pb2.GetUploadRequest(upload_id=upload_id))
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise

    def download(self, model: str, version: int, dest: StrPath) -> model_pb2.ModelVersion:
        """Write a version's files and its config.pbtxt into the folder ``dest``; 0 means
        the latest. The folder is flat, as ``upload`` reads it: the version's files, and the
        config as stored (normalised by the server, so a re-upload makes a new version)."""
        found = self.models.GetModelVersion(
            model_pb2.GetModelVersionRequest(model=model, version=version)
        )
        chunks = self.models.DownloadModelVersion(
            model_pb2.DownloadModelVersionRequest(model=model, version=found.version)
        )
        with VersionWriter(Path(dest), found) as writer:
            for chunk in chunks:
                writer.write(chunk)
            writer.finish()
        return found

    def list_models(
        self,
        *,
        name_prefix: str = "",
        kind: str = "",
        tags_all: Sequence[str] = (),
        tags_any: Sequence[str] = (),
        labels: Mapping[str, str] | None = None,
        order_by: str = "",
    ) -> Iterator[model_pb2.Model]:
        """Every model matching all the filters given, page after page.

        ``kind`` is a name such as "classification"; ``labels`` must all match;
        ``order_by`` is "name" (the default), "create_time" or "update_time",
        optionally followed by " desc".
        """
        request = model_pb2.ListModelsRequest(
            name_prefix=name_prefix,
            kind=model_pb2.ModelKind.Value(f"MODEL_KIND_{kind.upper() or 'UNSPECIFIED'}"),
            tags_all=tags_all,
            tags_any=tags_any,
            labels=[f"{key}={value}" for key, value in (labels or {}).items()],
            order_by=order_by,
        )

        def page(token: str) -> tuple[Sequence[model_pb2.Model], str]:
            request.page_token = token
            response = self.models.ListModels(request)
            return response.models, response.next_page_token

        return _every_page(page)

    def list_versions(self, model: str) -> Iterator[model_pb2.ModelVersion]:
        def page(token: str) -> tuple[Sequence[model_pb2.ModelVersion], str]:
            request = model_pb2.ListModelVersionsRequest(model=model, page_token=token)
            response = self.models.ListModelVersions(request)
            return response.versions, response.next_page_token

        return _every_page(page)

    # --- users and keys -----------------------------------------------------

    def create_user(self, name: str, role: str, display_name: str = "") -> user_pb2.User:
        """Create a user; ``role`` is admin, editor or viewer."""
        role_value = user_pb2.Role.Value(f"ROLE_{role.upper()}")
        user = user_pb2.User(name=name, role=role_value, display_name=display_name)
        return self.users.CreateUser(user_pb2.CreateUserRequest(user=user))

    def create_key(
        self, user: str = "", *, app: str = "", consumer: str = "", expire_time: Any = None
    ) -> user_pb2.ApiKey:
        """A new key (``.secret`` holds it, shown once) for a user or an app consumer."""
        request = user_pb2.CreateApiKeyRequest(user=user, app=app, consumer=consumer)
        if expire_time is not None:
            request.expire_time.FromDatetime(expire_time)
        return self.users.CreateApiKey(request)

    def list_keys(self, user: str = "", app: str = "") -> Iterator[user_pb2.ApiKey]:
        def page(token: str) -> tuple[Sequence[user_pb2.ApiKey], str]:
            request = user_pb2.ListApiKeysRequest(user=user, app=app, page_token=token)
            response = self.users.ListApiKeys(request)
            return response.keys, response.next_page_token

        return _every_page(page)

    def list_users(self) -> Iterator[user_pb2.User]:
        def page(token: str) -> tuple[Sequence[user_pb2.User], str]:
            response = self.users.ListUsers(user_pb2.ListUsersRequest(page_token=token))
            return response.users, response.next_page_token

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
        self,
        model: str,
        version: int = 0,
        servers: Sequence[str] | None = None,
        *,
        logging: inference_log_pb2.LoggingPolicy | None = None,
        wait: bool = True,
        progress: LoadProgress | None = None,
        on_demand: bool = False,
        min_copies: int = 0,
        max_copies: int = 0,
        idle_unload_after: float = 0.0,
        pinned: bool = False,
    ) -> deployment_pb2.Deployment:
        """Create or update the model's deployment; 0 means the latest version.

        ``servers`` None keeps an existing deployment's servers, and lets the server
        choose ("local") for a new one. ``logging`` (see ``inference_logs.policy``) is set
        first, so a policy the server refuses deploys nothing. With ``wait`` (the
        default) it returns once the loads finished (see ``wait_for_deployment``);
        without, at once, LOADING. ``on_demand`` and the limits after it apply to a
        new deployment (an existing one keeps its own): it is loaded by its first
        inference (``min_copies`` at once), evictable unless ``pinned``, unloaded
        after ``idle_unload_after`` seconds unused (0: never).
        """
        if logging is not None:
            self.set_logging_policy(logging, deployment=model)
        fields = ["version"] if servers is None else ["version", "servers"]
        request = deployment_pb2.UpdateDeploymentRequest(
            deployment=deployment_pb2.Deployment(
                name=model,
                model=model,
                version=version,
                servers=servers or (),
                loading=(
                    deployment_pb2.LOADING_MODE_ON_DEMAND
                    if on_demand
                    else deployment_pb2.LOADING_MODE_UNSPECIFIED
                ),
                min_copies=min_copies,
                max_copies=max_copies,
                idle_unload_after_seconds=idle_unload_after,
                pinned=pinned,
            ),
            allow_missing=True,
        )
        request.update_mask.paths.extend(fields)
        deployment = self.deployments.UpdateDeployment(request)
        return self.wait_for_deployment(deployment, progress) if wait else deployment

    def wait_for_deployment(
        self,
        deployment: deployment_pb2.Deployment,
        progress: LoadProgress | None = None,
        *,
        poll_interval: float = 0.5,
    ) -> deployment_pb2.Deployment:
        """``deployment`` once no target is LOADING, polling GetDeployment;
        ``progress(deployment)`` is called with each answer that is still loading."""
        request = deployment_pb2.GetDeploymentRequest(name=deployment.name)
        while _loading(deployment):
            if progress is not None:
                progress(deployment)
            time.sleep(poll_interval)
            deployment = self.deployments.GetDeployment(request)
        return deployment

    # --- the inference log --------------------------------------------------

    def set_logging_policy(
        self, policy: inference_log_pb2.LoggingPolicy, *, deployment: str = ""
    ) -> inference_log_pb2.LoggingPolicy:
        """Change a deployment's logging policy, without redeploying."""
        wanted = inference_log_pb2.LoggingPolicy()
        wanted.CopyFrom(policy)
        wanted.deployment = deployment or policy.deployment
        request = inference_log_pb2.UpdateLoggingPolicyRequest(policy=wanted)
        return self.logs.UpdateLoggingPolicy(request)

    def inference_logs(
        self,
        model: str = "",
        *,
        since: dt.datetime | dt.timedelta | None = None,
        until: dt.datetime | dt.timedelta | None = None,
        version: int = 0,
        deployment: str = "",
        caller: str = "",
        app: str = "",
        status: str = "",
        oldest_first: bool = False,
        limit: int | None = None,
        table: bool = False,
    ) -> Any:
        """The inference log's records (newest first), filtered; every page is followed.

        ``since`` and ``until`` take a datetime or a timedelta (that long ago). With
        ``table`` the result is a pyarrow Table (``.to_pandas()`` for a DataFrame),
        else an iterator of InferenceRecord messages.
        """
        order = (
            inference_log_pb2.LIST_ORDER_OLDEST_FIRST
            if oldest_first
            else inference_log_pb2.LIST_ORDER_NEWEST_FIRST
        )

        def page(token: str) -> tuple[Sequence[inference_log_pb2.InferenceRecord], str]:
            request = inference_log_pb2.ListInferenceLogsRequest(
                model=model,
                version=version,
                deployment=deployment,
                caller=caller,
                app=app,
                status=status,
                order=order,
                page_token=token,
                page_size=min(limit or 1000, 1000),
                start_time=inference_logs.timestamp(since),
                end_time=inference_logs.timestamp(until),
            )
            response = self.logs.ListInferenceLogs(request)
            return response.records, response.next_page_token

        records = itertools.islice(_every_page(page), limit)
        return inference_logs.records_table(records) if table else records

    # --- pipelines ----------------------------------------------------------

    def create_pipeline(self, spec: StrPath | pipeline_pb2.Pipeline) -> pipeline_pb2.Pipeline:
        """Create a pipeline from a YAML spec file (see mlserve_client.pipelines) or message."""
        if isinstance(spec, pipeline_pb2.Pipeline):
            pipeline = spec
        else:
            pipeline = read_pipeline_spec(Path(spec))
        return self.pipelines.CreatePipeline(pipeline_pb2.CreatePipelineRequest(pipeline=pipeline))

    def list_pipelines(self) -> Iterator[pipeline_pb2.Pipeline]:
        def page(token: str) -> tuple[Sequence[pipeline_pb2.Pipeline], str]:
            request = pipeline_pb2.ListPipelinesRequest(page_token=token)
            response = self.pipelines.ListPipelines(request)
            return response.pipelines, response.next_page_token

        return _every_page(page)

    def deploy_pipeline(
        self,
        name: str,
        version: int = 0,
        servers: Sequence[str] = (),
        *,
        wait: bool = True,
        progress: LoadProgress | None = None,
    ) -> deployment_pb2.Deployment:
        """Deploy a pipeline version (0: the latest) as a Triton ensemble; with ``wait``
        (the default) return once its loads finished, else at once (LOADING)."""
        wanted = deployment_pb2.Deployment(pipeline=name, version=version, servers=servers)
        request = deployment_pb2.CreateDeploymentRequest(deployment=wanted)
        deployment = self.deployments.CreateDeployment(request)
        return self.wait_for_deployment(deployment, progress) if wait else deployment

    # --- drift assays -------------------------------------------------------------

    def create_assay(self, spec: StrPath | assay_pb2.Assay) -> assay_pb2.Assay:
        """Create an assay from a YAML spec file (see mlserve_client.assays) or message."""
        assay = spec if isinstance(spec, assay_pb2.Assay) else read_assay_spec(Path(spec))
        return self.assays.CreateAssay(assay_pb2.CreateAssayRequest(assay=assay))

    def get_assay(self, name: str) -> assay_pb2.Assay:
        return self.assays.GetAssay(assay_pb2.GetAssayRequest(name=name))

    def list_assays(
        self, model: str = "", workspace: str = "", pipeline: str = ""
    ) -> Iterator[assay_pb2.Assay]:
        """Every assay the caller may see, by name; of one model, pipeline or workspace
        when given."""

        def page(token: str) -> tuple[Sequence[assay_pb2.Assay], str]:
            request = assay_pb2.ListAssaysRequest(
                model=model, workspace=workspace, pipeline=pipeline, page_token=token
            )
            response = self.assays.ListAssays(request)
            return response.assays, response.next_page_token

        return _every_page(page)

    def run_assay(
        self, assay: str | assay_pb2.Assay, start: dt.datetime, end: dt.datetime
    ) -> assay_pb2.RunAssayResponse:
        """Score every window starting in [start, end) of a stored assay (by name) or of one
        given as a message; nothing is stored."""
        span = assay_pb2.AssayTimeRange()
        span.start_time.FromDatetime(start)
        span.end_time.FromDatetime(end)
        if isinstance(assay, str):
            request = assay_pb2.RunAssayRequest(name=assay, range=span)
        else:
            request = assay_pb2.RunAssayRequest(assay=assay, range=span)
        return self.assays.RunAssay(request)

    def assay_results(
        self, name: str, since: dt.timedelta | None = None
    ) -> Iterator[assay_pb2.AssayResult]:
        """The stored results of an assay's scheduled windows, oldest first."""
        span = assay_pb2.AssayTimeRange()
        if since is not None:
            span.start_time.FromDatetime(dt.datetime.now(dt.timezone.utc) - since)

        def page(token: str) -> tuple[Sequence[assay_pb2.AssayResult], str]:
            request = assay_pb2.ListAssayResultsRequest(name=name, range=span, page_token=token)
            response = self.assays.ListAssayResults(request)
            return response.results, response.next_page_token

        return _every_page(page)


# Told how a deployment's loads stand while ``Client.wait_for_deployment`` waits.
LoadProgress = Callable[[deployment_pb2.Deployment], None]


def _loading(deployment: deployment_pb2.Deployment) -> bool:
    return deployment.state == deployment_pb2.DEPLOYMENT_STATE_LOADING or any(
        target.state == deployment_pb2.DEPLOYMENT_STATE_LOADING for target in deployment.targets
    )


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
