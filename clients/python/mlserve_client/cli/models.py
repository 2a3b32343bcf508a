"""``mlserve models``: upload, list, show, download and delete models and their versions;
``mlserve uploads``: list and cancel uploads."""

from __future__ import annotations

import argparse
from pathlib import Path

from mlserve_api.v1 import model_pb2
from mlserve_client import Client
from mlserve_client.cli.common import Subcommands, command, group
from mlserve_client.cli.output import (
    deployment_state,
    kind_word,
    labels_text,
    one_line,
    print_fields,
    print_table,
    when,
)
from mlserve_client.cli.progress import upload_with_progress


def add_commands(commands: Subcommands, connection: argparse.ArgumentParser) -> None:
    models = group(commands, "models", "upload, list, download and delete models")
    upload = command(
        models,
        "upload",
        _upload,
        "upload a model folder as a new version (or find the version it already is)",
        connection,
        example="mlserve models upload examples/add --name add",
    )
    upload.add_argument("dir", type=Path, help="Triton model directory or flat folder of files")
    upload.add_argument("--name", required=True, help="model name")
    upload.add_argument("--version-dir", help="which version folder to upload (default: highest)")
    upload.add_argument("--upload-id", help="resume id (default: derived from name and content)")
    upload.add_argument(
        "--prehash",
        action="store_true",
        help="hash every file before sending, so content the server has is never sent "
        "(default: hash while sending; digests of files uploaded before are remembered)",
    )
    listing = command(
        models,
        "list",
        _list_models,
        "list models, filtered",
        connection,
        example='mlserve models list --label team=growth --order-by "update_time desc"',
    )
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
        example = f"mlserve models {name} add"
        named = command(models, name, run, help_text, connection, example=example)
        named.add_argument("name", help="model name")
    download = command(
        models,
        "download",
        _download,
        "download a version's files into a flat folder, with its config.pbtxt",
        connection,
        example="mlserve models download add /tmp/add-copy --version 1",
    )
    download.add_argument("name")
    download.add_argument("dest", type=Path, help="folder to write the files and config.pbtxt to")
    download.add_argument("--version", type=int, default=0, help="version (default: latest)")
    delete_version = command(
        models,
        "delete-version",
        _delete_version,
        "delete one version",
        connection,
        example="mlserve models delete-version add 1",
    )
    delete_version.add_argument("name")
    delete_version.add_argument("version", type=int)


def add_upload_commands(commands: Subcommands, connection: argparse.ArgumentParser) -> None:
    uploads = group(commands, "uploads", "list and cancel your uploads")
    listing = command(
        uploads,
        "list",
        _list_uploads,
        "list your uploads",
        connection,
        example="mlserve uploads list --all",
    )
    listing.add_argument("--all", action="store_true", help="every user's uploads (admins)")
    cancel = command(
        uploads,
        "cancel",
        _cancel_upload,
        "abandon an unfinished upload",
        connection,
        example="mlserve uploads cancel c-0123abcd",
    )
    cancel.add_argument("upload_id", help="the upload's id (see: mlserve uploads list)")


def _list_uploads(client: Client, args: argparse.Namespace) -> int:
    print_table(
        ("UPLOAD ID", "MODEL", "OWNER", "STATE", "RECEIVED", "SIZE", "EXPIRES"),
        (
            (
                upload.upload_id,
                upload.model,
                upload.owner or "-",
                model_pb2.UploadState.Name(upload.state).removeprefix("UPLOAD_STATE_"),
                str(upload.received_bytes),
                str(upload.size_bytes),
                when(upload.expire_time),
            )
            for upload in client.list_uploads(all_users=args.all)
        ),
    )
    return 0


def _cancel_upload(client: Client, args: argparse.Namespace) -> int:
    client.cancel_upload(args.upload_id)
    print(f"cancelled upload {args.upload_id}")
    return 0


def _upload(client: Client, args: argparse.Namespace) -> int:
    uploaded = upload_with_progress(
        args.name,
        lambda progress: client.upload_version(
            args.dir,
            args.name,
            version_dir=args.version_dir,
            upload_id=args.upload_id,
            progress=progress,
            prehash=args.prehash,
        ),
    )
    version = uploaded.version
    if uploaded.already_stored:
        print(
            f"model {version.model}: already stored as version {version.version}  "
            f"sha256 {version.sha256}  (nothing new was made)"
        )
        return 0
    print(
        f"model {version.model} version {version.version}  sha256 {version.sha256}  "
        f"{version.size_bytes} bytes"
    )
    return 0


def _list_models(client: Client, args: argparse.Namespace) -> int:
    print_table(
        ("NAME", "KIND", "LATEST", "VERSIONS", "TAGS", "DESCRIPTION"),
        (
            (
                model.name,
                kind_word(model.kind),
                str(model.latest_version or "-"),
                str(model.version_count),
                ",".join(model.tags) or "-",
                one_line(model.description),
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
    print_fields(
        ("name", model.name),
        ("description", model.description),
        ("tags", ", ".join(model.tags)),
        ("labels", labels_text(model.labels)),
        ("kind", kind_word(model.kind)),
        ("latest version", str(model.latest_version or "-")),
        ("versions", str(model.version_count)),
        ("deployed", _deployed(model)),
        ("inferences", str(model.inference_count)),
        ("drift detection", model.drift_detection.method or "-"),
        ("created", when(model.create_time)),
        ("updated", when(model.update_time)),
    )
    return 0


def _deployed(model: model_pb2.Model) -> str:
    if not model.HasField("deployment"):
        return "no"
    deployment = model.deployment
    state = deployment_state(deployment.state)
    return f"version {deployment.version} on {', '.join(deployment.servers)}: {state}"


def _delete_model(client: Client, args: argparse.Namespace) -> int:
    client.models.DeleteModel(model_pb2.DeleteModelRequest(name=args.name))
    print(f"deleted model {args.name}")
    return 0


def _list_versions(client: Client, args: argparse.Namespace) -> int:
    print_table(
        ("VERSION", "BYTES", "FILES", "SHA256", "CREATED"),
        (
            (
                str(version.version),
                str(version.size_bytes),
                str(len(version.files)),
                version.sha256,
                when(version.create_time),
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
