"""The wiring every client command shares: the options accepted anywhere on the command
line, groups and commands with an example each, and how a command runs with a client and
turns failures into one line on stderr that never shows a key."""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeAlias

import grpc

from mlserve_client import DEFAULT_ADDRESS, Client, ClientError, default_home
from mlserve_client.channel import TlsMismatchError, default_address, tls_mismatch_hint

Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Command = Callable[[Client, argparse.Namespace], int]
"""A client command: runs against a connected client, returns the exit code."""

_KEY = re.compile(r"mls_([0-9A-Za-z]+)_[0-9A-Za-z_-]+")


def redact(text: str, *secrets: str | None) -> str:
    """``text`` with each of ``secrets`` hidden, and any MLServe key cut to its public id."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "<the key>")
    return _KEY.sub(r"mls_\1_<secret hidden>", text)


class Parser(argparse.ArgumentParser):
    """An argument parser that shows an example under its help and hides keys in errors.

    ``example`` is one command line (or several, one per line) printed after the help.
    Subparsers made by ``add_parser`` are of this class too.
    """

    def __init__(self, *args: Any, example: str = "", **kwargs: Any) -> None:
        if example:
            lines = "\n".join(f"  {line}" for line in example.splitlines())
            kwargs.setdefault("epilog", f"example:\n{lines}")
            kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        # "invalid choice: 'mls_…'" would otherwise print a key pasted in the wrong place.
        super().error(redact(message))


def add_global_options(parser: argparse.ArgumentParser, *, connection: bool, at_root: bool) -> None:
    """--home and -v (and with ``connection`` --address, --key, --ca) on ``parser``.

    They go on the root parser (``at_root``, with their defaults) and again on every
    command, there defaulting to nothing, so that ``mlserve --key K models list`` and
    ``mlserve models list --key K`` mean the same and one given first is not overwritten.
    """

    def default(value: object) -> object:
        return value if at_root else argparse.SUPPRESS

    parser.add_argument(
        "--home",
        type=Path,
        default=default(default_home()),
        help="state directory (default: $MLSERVE_HOME or ~/.mlserve)",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", default=default(False), help="debug logging"
    )
    if not connection:
        return
    parser.add_argument(
        "--address",
        default=default(default_address()),
        help=f"MLServe's host:port (default: $MLSERVE_ADDRESS or {DEFAULT_ADDRESS})",
    )
    parser.add_argument(
        "--key", default=default(None), help="API key (default: read from <home>/admin.key)"
    )
    parser.add_argument(
        "--token",
        default=default(os.environ.get("MLSERVE_TOKEN") or None),
        help="OpenID Connect token to sign in with instead of a key (default: $MLSERVE_TOKEN)",
    )
    parser.add_argument(
        "--ca", type=Path, default=default(None), help="CA certificate (PEM) to connect with TLS"
    )


def connection_options() -> argparse.ArgumentParser:
    """The parent parser giving each client command the global options."""
    options = argparse.ArgumentParser(add_help=False)
    add_global_options(options, connection=True, at_root=False)
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
    *,
    example: str,
) -> argparse.ArgumentParser:
    """A command that runs ``run`` with a client connected as its options say.

    ``example`` is a command line that works after the README's session, shown by --help.
    """
    parser = commands.add_parser(
        name, help=help_text, description=help_text, parents=[connection], example=example
    )
    parser.set_defaults(run=_connected(run))
    return parser


def _connected(run: Command) -> Callable[[argparse.Namespace], int]:
    """Run a command with a client; turn failures into one line on stderr and exit code 1."""

    def connected(args: argparse.Namespace) -> int:
        try:
            # A key given on the command line beats a token from the environment.
            token = None if args.key is not None else args.token
            with Client(args.address, args.key, token=token, home=args.home, ca=args.ca) as client:
                return run(client, args)
        except grpc.RpcError as error:
            return fail(_with_tls_hint(error, args), args.key, args.token)
        except (ClientError, OSError, ValueError) as error:
            return fail(str(error), args.key, args.token)

    return connected


def rpc_error_text(error: grpc.RpcError) -> str:
    """``CODE: details`` of a failed call."""
    if isinstance(error, grpc.Call):
        return f"{error.code().name}: {error.details()}"
    return str(error)


def _with_tls_hint(error: grpc.RpcError, args: argparse.Namespace) -> str:
    """The error, and when MLServe cannot be reached, whether TLS is what differs (the
    client says so itself for calls with one answer; streamed answers are checked here)."""
    text = rpc_error_text(error)
    if isinstance(error, TlsMismatchError):
        return text
    if isinstance(error, grpc.Call) and error.code() == grpc.StatusCode.UNAVAILABLE:
        hint = tls_mismatch_hint(args.address, args.ca)
        if hint:
            text += f" ({hint})"
    return text


def fail(message: str, *secrets: str | None) -> int:
    """Print ``error: message`` on stderr, keys hidden; the exit code of a failed command."""
    print(f"error: {redact(message, *secrets)}", file=sys.stderr)
    return 1
