"""``mlserve servers``: register, list and delete Triton servers."""

from __future__ import annotations

import argparse

from mlserve_api.v1 import server_pb2
from mlserve_client import Client
from mlserve_client.cli.common import Subcommands, command, group
from mlserve_client.cli.output import print_table, server_state, when


def add_commands(commands: Subcommands, connection: argparse.ArgumentParser) -> None:
    servers = group(commands, "servers", "register, list and delete Triton servers")
    command(
        servers,
        "list",
        _list_servers,
        "list every server",
        connection,
        example="mlserve servers list",
    )
    register = command(
        servers,
        "register",
        _register_server,
        "register a Triton by gRPC address",
        connection,
        example="mlserve servers register gpu-1 10.0.0.7:8001 --label zone=a",
    )
    register.add_argument("name")
    # Not dest "address": that is MLServe's own address (--address).
    register.add_argument(
        "triton_address", metavar="ADDRESS", help="host:port of Triton's gRPC endpoint"
    )
    register.add_argument(
        "--label", dest="labels", action="append", type=_label, default=[], help="k=v, repeatable"
    )
    register.add_argument("--description", default="")
    register.add_argument(
        "--workspace",
        dest="workspaces",
        action="append",
        default=[],
        help="hold only this workspace's models (repeatable; none: any workspace)",
    )
    delete = command(
        servers,
        "delete",
        _delete_server,
        "forget a server",
        connection,
        example="mlserve servers delete gpu-1",
    )
    delete.add_argument("name")


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"a label is key=value, not {text!r}")
    return key, value


def _list_servers(client: Client, args: argparse.Namespace) -> int:
    print_table(
        ("NAME", "ADDRESS", "STATE", "MODELS", "LAST HEALTH"),
        (
            (
                server.name,
                server.address,
                server_state(server.state),
                _loaded_models(server) or "-",
                when(server.last_health_time),
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
        name=args.name,
        address=args.triton_address,
        labels=dict(args.labels),
        description=args.description,
        workspaces=args.workspaces,
    )
    server = client.servers.RegisterServer(server_pb2.RegisterServerRequest(server=wanted))
    state = server_state(server.state)
    only = f", only workspaces {', '.join(server.workspaces)}" if server.workspaces else ""
    print(f"registered server {server.name} at {server.address} ({state}{only})")
    return 0


def _delete_server(client: Client, args: argparse.Namespace) -> int:
    client.servers.DeleteServer(server_pb2.DeleteServerRequest(name=args.name))
    print(f"deleted server {args.name}")
    return 0
