"""``mlserve artifacts``: attach files to model versions, list and download them."""

from __future__ import annotations

import argparse
from pathlib import Path

import grpc

from mlserve_api.v1 import model_pb2
from mlserve_client import Client, artifact_destination, partial_file
from mlserve_client.cli.common import Subcommands, command, fail, group, rpc_error_text
from mlserve_client.cli.output import print_table, when
from mlserve_client.cli.progress import upload_with_progress

_ARTIFACT_KINDS = {
    "model": model_pb2.ARTIFACT_KIND_MODEL,
    "data": model_pb2.ARTIFACT_KIND_DATA,
    "code": model_pb2.ARTIFACT_KIND_CODE,
    "env": model_pb2.ARTIFACT_KIND_ENV,
}


def add_commands(commands: Subcommands, connection: argparse.ArgumentParser) -> None:
    artifacts = group(commands, "artifacts", "attach files to model versions, list, download")
    upload = command(
        artifacts,
        "upload",
        _upload_artifact,
        "attach a file to a model version",
        connection,
        example="mlserve artifacts upload add 1 train.csv --kind data",
    )
    upload.add_argument("name", help="model name")
    upload.add_argument("version", type=int, help="version (0: the latest)")
    upload.add_argument("file", type=Path, help="the file to attach")
    upload.add_argument("--kind", required=True, choices=sorted(_ARTIFACT_KINDS))
    upload.add_argument("--path", help="the artifact's name (default: the file's name)")
    listing = command(
        artifacts,
        "list",
        _list_artifacts,
        "list a version's artifacts",
        connection,
        example="mlserve artifacts list add 1",
    )
    listing.add_argument("name", help="model name")
    listing.add_argument("version", type=int, help="version (0: the latest)")
    download = command(
        artifacts,
        "download",
        _download_artifact,
        "download an artifact, checked against its sha256",
        connection,
        example="mlserve artifacts download add 1 train.csv downloads/",
    )
    download.add_argument("name", help="model name")
    download.add_argument("version", type=int, help="version (0: the latest)")
    download.add_argument("path", help="the artifact's path, as listed")
    download.add_argument(
        "dest",
        help="file to write, or a folder (or a path ending in '/') to write it into under its "
        "own name; an interrupted download resumes from the file's .part",
    )


def _upload_artifact(client: Client, args: argparse.Namespace) -> int:
    artifact = upload_with_progress(
        args.file.name,
        lambda progress: client.upload_artifact(
            args.name,
            args.version,
            args.file,
            _ARTIFACT_KINDS[args.kind],
            name=args.path,
            progress=progress,
        ),
    )
    print(
        f"model {artifact.model} version {artifact.version} artifact {artifact.path} "
        f"({args.kind})  sha256 {artifact.sha256}  {artifact.size_bytes} bytes"
    )
    return 0


def _list_artifacts(client: Client, args: argparse.Namespace) -> int:
    print_table(
        ("PATH", "KIND", "BYTES", "SHA256", "CREATED"),
        (
            (
                artifact.path,
                model_pb2.ArtifactKind.Name(artifact.kind).removeprefix("ARTIFACT_KIND_").lower(),
                str(artifact.size_bytes),
                artifact.sha256,
                when(artifact.create_time),
            )
            for artifact in client.list_artifacts(args.name, args.version)
        ),
    )
    return 0


def _download_artifact(client: Client, args: argparse.Namespace) -> int:
    target = artifact_destination(args.dest, args.path)  # dest stays text: a '/' counts
    try:
        artifact = client.download_artifact(args.name, args.version, args.path, target)
    except (grpc.RpcError, KeyboardInterrupt) as error:
        partial = partial_file(target)
        if not partial.is_file():
            raise
        reason = rpc_error_text(error) if isinstance(error, grpc.RpcError) else "interrupted"
        return fail(
            f"{reason}; the {partial.stat().st_size} bytes received are kept in {partial}: "
            "run the same command again to resume",
            args.key,
        )
    print(
        f"model {artifact.model} version {artifact.version} artifact {artifact.path}  "
        f"{artifact.size_bytes} bytes  -> {target}"
    )
    return 0
