"""The wiring every client command shares: connection options, groups, and how a command
runs with a client and turns failures into one line on stderr."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeAlias

import grpc

from mlserve_client import DEFAULT_ADDRESS, Client, ClientError

Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Command = Callable[[Client, argparse.Namespace], int]
"""A client command: runs against a connected client, returns the exit code."""


def connection_options() -> argparse.ArgumentParser:
    """The parent parser giving each command --address, --key and --ca."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--address",
        default=os.environ.get("MLSERVE_ADDRESS", DEFAULT_ADDRESS),
        help="MLServe's host:port (default: $MLSERVE_ADDRESS or %(default)s)",
    )
    options.add_argument("--key", help="API key (default: read from <home>/admin.key)")
    options.add_argument("--ca", type=Path, help="CA certificate (PEM) to connect with TLS")
    return options


def group(commands: Subcommands, name: str, help_text: str) -> Subcommands:
    """A command group (``mlserve NAME COMMAND``) whose subcommand is required."""
    parser = commands.add_parser(name, help=help_text, description=help_text)
    return parser.add_subparsers(dest=f"{name}_command", required=True, metavar="COMMAND")


def command(
    commands: Subcommands,
    name: str,
    run: Command,
    help_text: str,
    connection: argparse.ArgumentParser,
) -> argparse.ArgumentParser:
    """A command that runs ``run`` with a client connected as its options say."""
    parser = commands.add_parser(name, help=help_text, description=help_text, parents=[connection])
    parser.set_defaults(run=_connected(run))
    return parser


def _connected(run: Command) -> Callable[[argparse.Namespace], int]:
    """Run a command with a client; turn failures into one line on stderr and exit code 1."""

    def connected(args: argparse.Namespace) -> int:
        try:
            with Client(args.address, args.key, home=args.home, ca=args.ca) as client:
                return run(client, args)
        except grpc.RpcError as error:
            return fail(_rpc_error_text(error))
        except (ClientError, OSError, ValueError) as error:
            return fail(str(error))

    return connected


def _rpc_error_text(error: grpc.RpcError) -> str:
    if isinstance(error, grpc.Call):
        return f"{error.code().name}: {error.details()}"
    return str(error)


def fail(message: str) -> int:
    """Print ``error: message`` on stderr; the exit code of a failed command."""
    print(f"error: {message}", file=sys.stderr)
    return 1
