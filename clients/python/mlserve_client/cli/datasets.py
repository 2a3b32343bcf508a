"""``mlserve datasets``: create datasets, upload CSV/Parquet versions, find them by tag,
show their schema, download and delete them."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path

import grpc

from mlserve_api.v1 import dataset_pb2, model_pb2
from mlserve_client import Client
from mlserve_client.cli.common import Subcommands, command, group
from mlserve_client.cli.output import print_fields, print_table, when
from mlserve_client.cli.progress import upload_with_progress


def add_commands(commands: Subcommands, connection: argparse.ArgumentParser) -> None:
    datasets = group(
        commands, "datasets", "datasets of CSV/Parquet files: create, upload, find by tag"
    )
    create = command(
        datasets,
        "create",
        _create,
        "create an empty dataset",
        connection,
        example="mlserve datasets create diabetes --tag diabetes --tag tabular",
    )
    create.add_argument("name")
    create.add_argument("--description", default="")
    create.add_argument("--tag", dest="tags", action="append", default=[], help="repeatable")
    create.add_argument("--public", action="store_true", help="readable by every user")
    create.add_argument("--workspace", default="", help="default: your default workspace")
    upload = command(
        datasets,
        "upload",
        _upload,
        "upload CSV/Parquet files as the dataset's next version (the dataset is created "
        "when missing)",
        connection,
        example="mlserve datasets upload diabetes train.csv",
    )
    upload.add_argument("name")
    upload.add_argument("files", nargs="+", type=Path, help=".csv or .parquet files")
    listing = command(
        datasets,
        "list",
        _list,
        "list the datasets you can see",
        connection,
        example="mlserve datasets list --tag diabetes",
    )
    listing.add_argument("--tag", dest="tags_all", action="append", default=[], help="all of")
    listing.add_argument("--any-tag", dest="tags_any", action="append", default=[], help="any of")
    show = command(
        datasets,
        "show",
        _show,
        "show a dataset version's files and schema",
        connection,
        example="mlserve datasets show diabetes 1",
    )
    show.add_argument("name")
    show.add_argument("version", type=int, nargs="?", default=0, help="default: the latest")
    command(
        datasets,
        "tags",
        _tags,
        "every tag of the datasets you can see, with counts",
        connection,
        example="mlserve datasets tags",
    )
    search = command(
        datasets,
        "search",
        _search,
        "datasets carrying every tag given",
        connection,
        example="mlserve datasets search '#diabetes' '#tabular'",
    )
    search.add_argument("terms", nargs="+", help="'#tag' terms")
    download = command(
        datasets,
        "download",
        _download,
        "download a version's files into a folder, checked against their sha256",
        connection,
        example="mlserve datasets download diabetes 1 data/",
    )
    download.add_argument("name")
    download.add_argument("version", type=int, help="0: the latest")
    download.add_argument("dest", type=Path)
    delete = command(
        datasets,
        "delete",
        _delete,
        "delete a dataset with its versions",
        connection,
        example="mlserve datasets delete diabetes",
    )
    delete.add_argument("name")


def _create(client: Client, args: argparse.Namespace) -> int:
    made = client.create_dataset(
        args.name,
        description=args.description,
        tags=args.tags,
        public=args.public,
        workspace=args.workspace,
    )
    print(f"dataset {made.name} created in workspace {made.workspace}")
    return 0


def _upload(client: Client, args: argparse.Namespace) -> int:
    try:
        client.datasets.GetDataset(dataset_pb2.GetDatasetRequest(name=args.name))
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.NOT_FOUND:
            raise
        client.create_dataset(args.name)
    version = upload_with_progress(
        ", ".join(path.name for path in args.files),
        lambda progress: client.upload_dataset(args.name, args.files, progress=progress),
    )
    print(
        f"dataset {version.dataset} version {version.version}  {version.row_count} rows  "
        f"columns {_columns(version)}  sha256 {version.sha256}"
    )
    return 0


def _list(client: Client, args: argparse.Namespace) -> int:
    _print_datasets(client.list_datasets(tags_all=args.tags_all, tags_any=args.tags_any))
    return 0


def _search(client: Client, args: argparse.Namespace) -> int:
    _print_datasets(client.search_datasets(args.terms))
    return 0


def _print_datasets(datasets: Iterable[dataset_pb2.Dataset]) -> None:
    print_table(
        ("NAME", "WORKSPACE", "VISIBILITY", "LATEST", "TAGS", "UPDATED"),
        (
            (
                d.name,
                d.workspace,
                model_pb2.Visibility.Name(d.visibility).removeprefix("VISIBILITY_").lower(),
                str(d.latest_version),
                ",".join(d.tags),
                when(d.update_time),
            )
            for d in datasets
        ),
    )


def _show(client: Client, args: argparse.Namespace) -> int:
    version = client.datasets.GetDatasetVersion(
        dataset_pb2.GetDatasetVersionRequest(dataset=args.name, version=args.version)
    )
    print_fields(
        ("dataset", version.dataset),
        ("version", str(version.version)),
        ("rows", str(version.row_count)),
        ("bytes", str(version.size_bytes)),
        ("sha256", version.sha256),
        ("created", when(version.create_time)),
    )
    print_table(("COLUMN", "TYPE"), ((c.name, c.type) for c in version.columns))
    print_table(
        ("FILE", "ROWS", "BYTES", "SHA256"),
        ((f.file.path, str(f.row_count), str(f.file.size), f.file.sha256) for f in version.files),
    )
    return 0


def _tags(client: Client, args: argparse.Namespace) -> int:
    print_table(("TAG", "DATASETS"), ((tag, str(n)) for tag, n in client.dataset_tags().items()))
    return 0


def _download(client: Client, args: argparse.Namespace) -> int:
    version = client.download_dataset(args.name, args.version, args.dest)
    print(
        f"dataset {version.dataset} version {version.version}: {len(version.files)} files "
        f"-> {args.dest}"
    )
    return 0


def _delete(client: Client, args: argparse.Namespace) -> int:
    client.datasets.DeleteDataset(dataset_pb2.DeleteDatasetRequest(name=args.name))
    print(f"dataset {args.name} deleted")
    return 0


def _columns(version: dataset_pb2.DatasetVersion) -> str:
    return ", ".join(f"{c.name}:{c.type}" for c in version.columns)
