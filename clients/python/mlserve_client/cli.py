"""Client commands of ``mlserve``: models, artifacts, deploy/undeploy, servers, deployments,
pipelines.

Each command talks to a running MLServe through :class:`mlserve_client.Client`; the
address and key default to $MLSERVE_ADDRESS and ``<home>/admin.key``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import NoReturn, TypeAlias

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from tqdm import tqdm

from mlserve_api.v1 import deployment_pb2, model_pb2, pipeline_pb2, server_pb2, user_pb2
from mlserve_client import DEFAULT_ADDRESS, Client, ClientError

Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Command = Callable[[Client, argparse.Namespace], int]

_TROUBLED_DEPLOYMENT = {
    deployment_pb2.DEPLOYMENT_STATE_FAILED,
    deployment_pb2.DEPLOYMENT_STATE_UNREACHABLE,
}


def add_client_commands(commands: Subcommands) -> None:
    connection = _connection_options()
    _add_model_commands(commands, connection)
    _add_upload_commands(commands, connection)
    _add_artifact_commands(commands, connection)
    _add_deploy_commands(commands, connection)
    _add_server_commands(commands, connection)
    _add_deployment_commands(commands, connection)
    _add_access_commands(commands, connection)
    _add_pipeline_commands(commands, connection)


# --- wiring -----------------------------------------------------------------


def _connection_options() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--address",
        default=os.environ.get("MLSERVE_ADDRESS", DEFAULT_ADDRESS),
        help="MLServe's host:port (default: $MLSERVE_ADDRESS or %(default)s)",
    )
    options.add_argument("--key", help="API key (default: read from <home>/admin.key)")
    options.add_argument("--ca", type=Path, help="CA certificate (PEM) to connect with TLS")
    return options


def _group(commands: Subcommands, name: str, help_text: str) -> Subcommands:
    group = commands.add_parser(name, help=help_text, description=help_text)
    return group.add_subparsers(dest=f"{name}_command", required=True, metavar="COMMAND")


def _command(
    group: Subcommands,
    name: str,
    run: Command,
    help_text: str,
    connection: argparse.ArgumentParser,
) -> argparse.ArgumentParser:
    parser = group.add_parser(name, help=help_text, description=help_text, parents=[connection])
    parser.set_defaults(run=_connected(run))
    return parser


def _connected(run: Command) -> Callable[[argparse.Namespace], int]:
    """Run a command with a client; turn failures into one line on stderr and exit code 1."""

    def connected(args: argparse.Namespace) -> int:
        try:
            with Client(args.address, args.key, home=args.home, ca=args.ca) as client:
                return run(client, args)
        except grpc.RpcError as error:
            return _fail(_rpc_error_text(error))
        except (ClientError, OSError, ValueError) as error:
            return _fail(str(error))

    return connected


def _rpc_error_text(error: grpc.RpcError) -> str:
    if isinstance(error, grpc.Call):
        return f"{error.code().name}: {error.details()}"
    return str(error)


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


# --- models -----------------------------------------------------------------


def _add_model_commands(commands: Subcommands, connection: argparse.ArgumentParser) -> None:
    models = _group(commands, "models", "upload, list, download and delete models")
    upload = _command(
        models, "upload", _upload, "upload a model folder as a new version", connection
    )
    upload.add_argument("dir", type=Path, help="Triton model directory or flat folder of files")
    upload.add_argument("--name", required=True, help="model name")
    upload.add_argument("--version-dir", help="which version folder to upload (default: highest)")
    upload.add_argument("--upload-id", help="resume id (default: derived from name and content)")
    listing = _command(models, "list", _list_models, "list models, filtered", connection)
    listing.add_argument(
        "--kind", default="", choices=["classification", "regression", "clustering", "other"]
    )
    listing.add_argument("--tag", action="append", default=[], help="must carry it (repeatable)")
    listing.add_argument(
        "--any-tag", action="append", default=[], help="must carry one of them (repeatable)"
    )
    listing.add_argument("--label", action="append", default=[], help="KEY=VALUE (repeatable)")
    listing.add_argument("--order-by", default="", help='e.g. "create_time desc" (default: name)')
    for name, run, help_text in (
        ("get", _get_model, "show one model"),
        ("delete", _delete_model, "delete a model and all of its versions"),
        ("versions", _list_versions, "list a model's versions"),
    ):
        _command(models, name, run, help_text, connection).add_argument("name", help="model name")
    download = _command(models, "download", _download, "download a version's files", connection)
    download.add_argument("name")
    download.add_argument("dest", type=Path, help="folder to write the files and config.pbtxt to")
    download.add_argument("--version", type=int, default=0, help="version (default: latest)")
    delete_version = _command(
        models, "delete-version", _delete_version, "delete one version", connection
    )
    delete_version.add_argument("name")
    delete_version.add_argument("version", type=int)


def _upload(client: Client, args: argparse.Namespace) -> int:
    try:
        with contextlib.closing(_ByteProgressBar(args.name)) as bar:
            version = client.upload(
                args.dir,
                args.name,
                version_dir=args.version_dir,
                upload_id=args.upload_id,
                progress=bar,
            )
    except KeyboardInterrupt:
        return _fail("interrupted; run the same command again to resume the upload")
    print(
        f"model {version.model} version {version.version}  sha256 {version.sha256}  "
        f"{version.size_bytes} bytes"
    )
    return 0


def _add_upload_commands(commands: Subcommands, connection: argparse.ArgumentParser) -> None:
    uploads = _group(commands, "uploads", "list and cancel your uploads")
    listing = _command(uploads, "list", _list_uploads, "list your uploads", connection)
    listing.add_argument("--all", action="store_true", help="every user's uploads (admins)")
    cancel = _command(uploads, "cancel", _cancel_upload, "abandon an unfinished upload", connection)
    cancel.add_argument("upload_id", help="the upload's id (see: mlserve uploads list)")


def _list_uploads(client: Client, args: argparse.Namespace) -> int:
    _print_table(
        ("UPLOAD ID", "MODEL", "OWNER", "STATE", "RECEIVED", "SIZE", "EXPIRES"),
        (
            (
                upload.upload_id,
                upload.model,
                upload.owner or "-",
                model_pb2.UploadState.Name(upload.state).removeprefix("UPLOAD_STATE_"),
                str(upload.received_bytes),
                str(upload.size_bytes),
                _when(upload.expire_time),
            )
            for upload in client.list_uploads(all_users=args.all)
        ),
    )
    return 0


def _cancel_upload(client: Client, args: argparse.Namespace) -> int:
    client.cancel_upload(args.upload_id)
    print(f"cancelled upload {args.upload_id}")
    return 0


class _ByteProgressBar:
    """A tqdm bar on stderr, opened on the first report, when the total is known."""

    def __init__(self, description: str) -> None:
        self.description = description
        self.bar: tqdm[NoReturn] | None = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = self._open(done, total)
        self.bar.update(done - self.bar.n)

    def _open(self, done: int, total: int) -> tqdm[NoReturn]:
        return tqdm(
            desc=self.description,
            total=total,
            initial=done,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            file=sys.stderr,
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _list_models(client: Client, args: argparse.Namespace) -> int:
    _print_table(
        ("NAME", "KIND", "LATEST", "VERSIONS", "TAGS", "DESCRIPTION"),
        (
            (
                model.name,
                _kind(model.kind),
                str(model.latest_version or "-"),
                str(model.version_count),
                ",".join(model.tags) or "-",
                " ".join(model.description.split()),
            )
            for model in client.list_models(
                kind=args.kind,
                tags_all=args.tag,
                tags_any=args.any_tag,
                labels=dict(label.partition("=")[::2] for label in args.label),
                order_by=args.order_by,
            )
        ),
    )
    return 0


def _get_model(client: Client, args: argparse.Namespace) -> int:
    model = client.models.GetModel(model_pb2.GetModelRequest(name=args.name))
    _print_fields(
        ("name", model.name),
        ("description", model.description),
        ("tags", ", ".join(model.tags)),
        ("labels", _labels(model.labels)),
        ("kind", _kind(model.kind)),
        ("latest version", str(model.latest_version or "-")),
        ("versions", str(model.version_count)),
        ("deployed", _deployed(model)),
        ("inferences", str(model.inference_count)),
        ("drift detection", model.drift_detection.method or "-"),
        ("created", _when(model.create_time)),
        ("updated", _when(model.update_time)),
    )
    return 0


def _delete_model(client: Client, args: argparse.Namespace) -> int:
    client.models.DeleteModel(model_pb2.DeleteModelRequest(name=args.name))
    print(f"deleted model {args.name}")
    return 0


def _list_versions(client: Client, args: argparse.Namespace) -> int:
    _print_table(
        ("VERSION", "BYTES", "FILES", "SHA256", "CREATED"),
        (
            (
                str(version.version),
                str(version.size_bytes),
                str(len(version.files)),
                version.sha256,
                _when(version.create_time),
            )
            for version in client.list_versions(args.name)
        ),
    )
    return 0


def _download(client: Client, args: argparse.Namespace) -> int:
    version = client.download(args.name, args.version, args.dest)
    print(
        f"model {version.model} version {version.version}  {len(version.files)} files  "
        f"{version.size_bytes} bytes  -> {args.dest}"
    )
    return 0


def _delete_version(client: Client, args: argparse.Namespace) -> int:
    request = model_pb2.DeleteModelVersionRequest(model=args.name, version=args.version)
    client.models.DeleteModelVersion(request)
    print(f"deleted model {args.name} version {args.version}")
    return 0


# --- artifacts --------------------------------------------------------------

_ARTIFACT_KINDS = {
    "model": model_pb2.ARTIFACT_KIND_MODEL,
    "data": model_pb2.ARTIFACT_KIND_DATA,
    "code": model_pb2.ARTIFACT_KIND_CODE,
    "env": model_pb2.ARTIFACT_KIND_ENV,
}


def _add_artifact_commands(commands: Subcommands, connection: argparse.ArgumentParser) -> None:
    artifacts = _group(commands, "artifacts", "attach files to model versions, list, download")
    upload = _command(
        artifacts, "upload", _upload_artifact, "attach a file to a model version", connection
    )
    upload.add_argument("name", help="model name")
    upload.add_argument("version", type=int, help="version (0: the latest)")
    upload.add_argument("file", type=Path, help="the file to attach")
    upload.add_argument("--kind", required=True, choices=sorted(_ARTIFACT_KINDS))
    upload.add_argument("--path", help="the artifact's name (default: the file's name)")
    listing = _command(artifacts, "list", _list_artifacts, "list a version's artifacts", connection)
    listing.add_argument("name", help="model name")
    listing.add_argument("version", type=int, help="version (0: the latest)")
    download = _command(
        artifacts, "download", _download_artifact, "download an artifact", connection
    )
    download.add_argument("name", help="model name")
    download.add_argument("version", type=int, help="version (0: the latest)")
    download.add_argument("path", help="the artifact's path, as listed")
    download.add_argument("dest", type=Path, help="file to write (resumes a dest.part)")


def _upload_artifact(client: Client, args: argparse.Namespace) -> int:
    try:
        with contextlib.closing(_ByteProgressBar(args.file.name)) as bar:
            artifact = client.upload_artifact(
                args.name,
                args.version,
                args.file,
                _ARTIFACT_KINDS[args.kind],
                name=args.path,
                progress=bar,
            )
    except KeyboardInterrupt:
        return _fail("interrupted; run the same command again to resume the upload")
    print(
        f"model {artifact.model} version {artifact.version} artifact {artifact.path} "
        f"({args.kind})  sha256 {artifact.sha256}  {artifact.size_bytes} bytes"
    )
    return 0


def _list_artifacts(client: Client, args: argparse.Namespace) -> int:
    _print_table(
        ("PATH", "KIND", "BYTES", "SHA256", "CREATED"),
        (
            (
                artifact.path,
                model_pb2.ArtifactKind.Name(artifact.kind).removeprefix("ARTIFACT_KIND_").lower(),
                str(artifact.size_bytes),
                artifact.sha256,
                _when(artifact.create_time),
            )
            for artifact in client.list_artifacts(args.name, args.version)
        ),
    )
    return 0


def _download_artifact(client: Client, args: argparse.Namespace) -> int:
    artifact = client.download_artifact(args.name, args.version, args.path, args.dest)
    print(
        f"model {artifact.model} version {artifact.version} artifact {artifact.path}  "
        f"{artifact.size_bytes} bytes  -> {args.dest}"
    )
    return 0


# --- deploy / undeploy ------------------------------------------------------


def _add_deploy_commands(commands: Subcommands, connection: argparse.ArgumentParser) -> None:
    deploy = _command(
        commands, "deploy", _deploy, "deploy a model version (create or update)", connection
    )
    deploy.add_argument("name", help="model name")
    deploy.add_argument("--version", type=int, default=0, help="version (default: latest)")
    deploy.add_argument(
        "--server",
        dest="servers",
        metavar="SERVER",
        action="append",
        help="server to load it on; repeat for several (default: keep, or 'local' when new)",
    )
    undeploy = _command(
        commands, "undeploy", _undeploy, "unload a model and delete its deployment", connection
    )
    undeploy.add_argument("name", help="model name")


def _deploy(client: Client, args: argparse.Namespace) -> int:
    return _report_deployment(client.deploy(args.name, args.version, args.servers))


def _report_deployment(deployment: deployment_pb2.Deployment) -> int:
    """Print a deployment; exit code 1 when a target failed or is unreachable."""
    _print_deployment(deployment)
    if deployment.state in _TROUBLED_DEPLOYMENT:
        return _fail(f"deployment {deployment.name} is {_deployment_state(deployment.state)}")
    return 0


def _undeploy(client: Client, args: argparse.Namespace) -> int:
    client.deployments.DeleteDeployment(deployment_pb2.DeleteDeploymentRequest(name=args.name))
    print(f"undeployed {args.name}")
    return 0


# --- servers ----------------------------------------------------------------


def _add_server_commands(commands: Subcommands, connection: argparse.ArgumentParser) -> None:
    servers = _group(commands, "servers", "register, list and delete Triton servers")
    _command(servers, "list", _list_servers, "list every server", connection)
    register = _command(
        servers, "register", _register_server, "register a Triton by gRPC address", connection
    )
    register.add_argument("name")
    register.add_argument("address", help="host:port of Triton's gRPC endpoint")
    register.add_argument(
        "--label", dest="labels", action="append", type=_label, default=[], help="k=v, repeatable"
    )
    register.add_argument("--description", default="")
    delete = _command(servers, "delete", _delete_server, "forget a server", connection)
    delete.add_argument("name")


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"a label is key=value, not {text!r}")
    return key, value


def _list_servers(client: Client, args: argparse.Namespace) -> int:
    _print_table(
        ("NAME", "ADDRESS", "STATE", "MODELS", "LAST HEALTH"),
        (
            (
                server.name,
                server.address,
                _server_state(server.state),
                _loaded_models(server) or "-",
                _when(server.last_health_time),
            )
            for server in client.list_servers()
        ),
    )
    return 0


def _loaded_models(server: server_pb2.Server) -> str:
    """name:version(state) of each model Triton has tried to load, not mere repository entries."""
    return ", ".join(
        f"{model.name}:{model.version}({model.state})"
        for model in server.loaded_models
        if model.state
    )


def _register_server(client: Client, args: argparse.Namespace) -> int:
    wanted = server_pb2.Server(
        name=args.name, address=args.address, labels=dict(args.labels), description=args.description
    )
    server = client.servers.RegisterServer(server_pb2.RegisterServerRequest(server=wanted))
    state = _server_state(server.state)
    print(f"registered server {server.name} at {server.address} ({state})")
    return 0


def _delete_server(client: Client, args: argparse.Namespace) -> int:
    client.servers.DeleteServer(server_pb2.DeleteServerRequest(name=args.name))
    print(f"deleted server {args.name}")
    return 0


# --- deployments ------------------------------------------------------------


def _add_deployment_commands(commands: Subcommands, connection: argparse.ArgumentParser) -> None:
    deployments = _group(commands, "deployments", "show deployments and their per-server state")
    _command(deployments, "list", _list_deployments, "list every deployment", connection)
    get = _command(deployments, "get", _get_deployment, "show one deployment", connection)
    get.add_argument("name", help="deployment (model) name")


def _list_deployments(client: Client, args: argparse.Namespace) -> int:
    _print_table(
        ("NAME", "VERSION", "STATE", "SERVERS"),
        (
            (
                deployment.name,
                str(deployment.version),
                _deployment_state(deployment.state),
                ", ".join(
                    f"{target.server}({_deployment_state(target.state)})"
                    for target in deployment.targets
                ),
            )
            for deployment in client.list_deployments()
        ),
    )
    return 0


def _get_deployment(client: Client, args: argparse.Namespace) -> int:
    request = deployment_pb2.GetDeploymentRequest(name=args.name)
    _print_deployment(client.deployments.GetDeployment(request))
    return 0


def _print_deployment(deployment: deployment_pb2.Deployment) -> None:
    what = f"pipeline {deployment.pipeline}" if deployment.pipeline else f"model {deployment.model}"
    print(
        f"deployment {deployment.name}  {what} version {deployment.version}  "
        f"{_deployment_state(deployment.state)}"
    )
    _print_table(
        ("SERVER", "STATE", "UPDATED", "MESSAGE"),
        (
            (
                target.server,
                _deployment_state(target.state),
                _when(target.update_time),
                " ".join(target.message.split()),
            )
            for target in deployment.targets
        ),
    )
    members = [(t.server, m) for t in deployment.targets for m in t.members]
    if members:
        _print_table(
            ("SERVER", "MEMBER", "VERSION", "STATE", "MESSAGE"),
            (
                (
                    server,
                    member.model,
                    str(member.version),
                    _deployment_state(member.state),
                    " ".join(member.message.split()),
                )
                for server, member in members
            ),
        )


# --- pipelines --------------------------------------------------------------


def _add_pipeline_commands(commands: Subcommands, connection: argparse.ArgumentParser) -> None:
    pipelines = _group(commands, "pipelines", "create, show, deploy and delete pipelines")
    create = _command(
        pipelines, "create", _create_pipeline, "create a pipeline from a YAML spec", connection
    )
    create.add_argument("spec", type=Path, help="YAML file: name, inputs, outputs, steps")
    _command(pipelines, "list", _list_pipelines, "list every pipeline", connection)
    get = _command(pipelines, "get", _get_pipeline, "show a pipeline's DAG", connection)
    get.add_argument("name")
    get.add_argument("--version", type=int, default=0, help="version (default: latest)")
    delete = _command(pipelines, "delete", _delete_pipeline, "delete a pipeline", connection)
    delete.add_argument("name")
    deploy = _command(
        pipelines, "deploy", _deploy_pipeline, "deploy a pipeline as a Triton ensemble", connection
    )
    deploy.add_argument("name")
    deploy.add_argument("--version", type=int, default=0, help="version (default: latest)")
    deploy.add_argument(
        "--server", dest="servers", metavar="SERVER", action="append", default=[],
        help="server to deploy on; repeat for several (default: 'local')",
    )  # fmt: skip
    undeploy = _command(
        pipelines, "undeploy", _undeploy, "undeploy a pipeline and its unshared members", connection
    )
    undeploy.add_argument("name")


def _create_pipeline(client: Client, args: argparse.Namespace) -> int:
    pipeline = client.create_pipeline(args.spec)
    print(f"created pipeline {pipeline.name} version {pipeline.version}")
    return 0


def _list_pipelines(client: Client, args: argparse.Namespace) -> int:
    _print_table(
        ("NAME", "VERSION", "STEPS", "STATE", "DESCRIPTION"),
        (
            (
                pipeline.name,
                str(pipeline.version),
                " -> ".join(step.name for step in pipeline.steps),
                _state_word(pipeline_pb2.PipelineState.Name(pipeline.state)),
                " ".join(pipeline.description.split()),
            )
            for pipeline in client.list_pipelines()
        ),
    )
    return 0


def _get_pipeline(client: Client, args: argparse.Namespace) -> int:
    request = pipeline_pb2.GetPipelineRequest(name=args.name, version=args.version)
    pipeline = client.pipelines.GetPipeline(request)
    _print_fields(
        ("name", pipeline.name),
        ("description", pipeline.description),
        ("version", f"{pipeline.version} of {pipeline.version_count}"),
        ("state", _state_word(pipeline_pb2.PipelineState.Name(pipeline.state))),
        ("deployed version", str(pipeline.deployed_version or "-")),
        ("infer on", f"{pipeline.inference_address} model {pipeline.inference_model}"),
        ("inputs", _tensors(pipeline.inputs)),
        ("outputs", _tensors(pipeline.outputs)),
    )
    _print_table(
        ("STEP", "MODEL", "VERSION", "INPUTS", "OUTPUTS", "SERVING"),
        (
            (
                step.name,
                step.model,
                str(step.model_version or "deployed/latest"),
                _mapping(step.input_map),
                _mapping(step.output_map),
                _serving(step.serving),
            )
            for step in pipeline.steps
        ),
    )
    return 0


def _delete_pipeline(client: Client, args: argparse.Namespace) -> int:
    client.pipelines.DeletePipeline(pipeline_pb2.DeletePipelineRequest(name=args.name))
    print(f"deleted pipeline {args.name}")
    return 0


def _deploy_pipeline(client: Client, args: argparse.Namespace) -> int:
    return _report_deployment(client.deploy_pipeline(args.name, args.version, args.servers))


def _tensors(tensors: Iterable[pipeline_pb2.PipelineTensor]) -> str:
    return ", ".join(
        f"{t.name} {t.datatype or '?'}[{','.join(str(d) for d in t.dims)}]" for t in tensors
    )


def _mapping(mapping: Mapping[str, str]) -> str:
    return ", ".join(f"{key}<->{value}" for key, value in sorted(mapping.items()))


def _serving(settings: pipeline_pb2.ServingSettings) -> str:
    parts = []
    if settings.max_batch_size:
        parts.append(f"max_batch_size={settings.max_batch_size}")
    if settings.instance_count:
        parts.append(f"instances={settings.instance_count}")
    if settings.HasField("dynamic_batching"):
        batching = settings.dynamic_batching
        sizes = ",".join(str(size) for size in batching.preferred_batch_sizes) or "auto"
        parts.append(f"batching({sizes}; {batching.max_queue_delay_microseconds}us)")
    return " ".join(parts) or "-"


# --- users and keys ---------------------------------------------------------


def _add_access_commands(commands: Subcommands, connection: argparse.ArgumentParser) -> None:
    users = _group(commands, "users", "create and list users (admins)")
    create = _command(users, "create", _create_user, "create a user", connection)
    create.add_argument("name")
    create.add_argument("--role", required=True, choices=("admin", "editor", "viewer"))
    create.add_argument("--display-name", default="")
    _command(users, "list", _list_users, "list every user", connection)
    keys = _group(commands, "keys", "create, list and revoke API keys")
    make = _command(keys, "create", _create_key, "make a key; prints it once", connection)
    make.add_argument("--user", default="", help="whose key (default: yours)")
    make.add_argument("--app", default="", help="an app, with --consumer: a consumer's key")
    make.add_argument("--consumer", default="")
    make.add_argument("--expires-in-days", type=float, help="the key stops working after this")
    _command(keys, "list", _list_keys, "list keys (no secrets)", connection).add_argument(
        "--user", default=""
    )
    revoke = _command(keys, "revoke", _revoke_key, "revoke a key by its id", connection)
    revoke.add_argument("id", help="the key's id (the part after 'mls_')")


def _create_user(client: Client, args: argparse.Namespace) -> int:
    user = client.create_user(args.name, args.role, args.display_name)
    print(f"created user {user.name} ({args.role}); default workspace {user.default_workspace}")
    return 0


def _list_users(client: Client, args: argparse.Namespace) -> int:
    _print_table(
        ("NAME", "ROLE", "ACTIVE", "DEFAULT WORKSPACE"),
        (
            (
                user.name,
                user_pb2.Role.Name(user.role).removeprefix("ROLE_").lower(),
                "yes" if user.active else "no",
                user.default_workspace,
            )
            for user in client.list_users()
        ),
    )
    return 0


def _create_key(client: Client, args: argparse.Namespace) -> int:
    expire = None
    if args.expires_in_days is not None:
        expire = datetime.now(timezone.utc) + timedelta(days=args.expires_in_days)
    key = client.create_key(args.user, app=args.app, consumer=args.consumer, expire_time=expire)
    print(key.secret)
    whose = f"{key.app}/{key.consumer}" if key.app else key.user
    print(f"key {key.id} for {whose}: store it now, it is not shown again", file=sys.stderr)
    return 0


def _list_keys(client: Client, args: argparse.Namespace) -> int:
    _print_table(
        ("ID", "OWNER", "CREATED", "LAST USED", "EXPIRES", "REVOKED"),
        (
            (
                key.id,
                f"{key.app}/{key.consumer}" if key.app else key.user,
                _when(key.create_time),
                _when(key.last_used_time),
                _when(key.expire_time),
                "yes" if key.revoked else "no",
            )
            for key in client.list_keys(args.user)
        ),
    )
    return 0


def _revoke_key(client: Client, args: argparse.Namespace) -> int:
    client.users.RevokeApiKey(user_pb2.RevokeApiKeyRequest(id=args.id))
    print(f"revoked key {args.id}")
    return 0


# --- output -----------------------------------------------------------------


def _print_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    """Columns aligned by their widest cell, two spaces apart."""
    lines = [list(headers), *(list(row) for row in rows)]
    widths = [max(len(line[column]) for line in lines) for column in range(len(headers))]
    for line in lines:
        cells = (cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        print("  ".join(cells).rstrip())


def _print_fields(*fields: tuple[str, str]) -> None:
    width = max(len(label) for label, _ in fields) + 1
    for label, value in fields:
        print(f"{label + ':':<{width}} {value or '-'}")


def _deployment_state(state: deployment_pb2.DeploymentState.ValueType) -> str:
    return _state_word(deployment_pb2.DeploymentState.Name(state))


def _server_state(state: server_pb2.ServerState.ValueType) -> str:
    return _state_word(server_pb2.ServerState.Name(state))


def _state_word(full_name: str) -> str:
    """READY for DEPLOYMENT_STATE_READY or SERVER_STATE_READY."""
    return full_name.split("_STATE_", 1)[-1]


def _labels(labels: Mapping[str, str]) -> str:
    return ", ".join(f"{key}={value}" for key, value in sorted(labels.items()))


def _kind(kind: model_pb2.ModelKind.ValueType) -> str:
    return model_pb2.ModelKind.Name(kind).removeprefix("MODEL_KIND_").lower() if kind else "-"


def _deployed(model: model_pb2.Model) -> str:
    if not model.HasField("deployment"):
        return "no"
    deployment = model.deployment
    state = _deployment_state(deployment.state)
    return f"version {deployment.version} on {', '.join(deployment.servers)}: {state}"


def _when(moment: Timestamp) -> str:
    if not moment.seconds and not moment.nanos:
        return "-"
    local = moment.ToDatetime(tzinfo=timezone.utc).astimezone()
    return local.strftime("%Y-%m-%d %H:%M:%S")
