"""Client commands of ``mlserve``, one module per command group.

Each command talks to a running MLServe through :class:`mlserve_client.Client`; the
address and key default to $MLSERVE_ADDRESS and ``<home>/admin.key``.

To add a command group: write a module with an ``add_commands(commands, connection)``
function (see ``servers.py`` for a small one, ``common.py`` for the wiring) and list it in
``COMMAND_GROUPS``; its place there is its place in ``mlserve --help``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from mlserve_client.cli import (
    access,
    artifacts,
    assays,
    datasets,
    deployments,
    explain,
    logs,
    models,
    pipelines,
    servers,
    training,
)
from mlserve_client.cli.common import Parser, Subcommands, add_global_options, connection_options

AddCommands = Callable[[Subcommands, argparse.ArgumentParser], None]

COMMAND_GROUPS: tuple[AddCommands, ...] = (
    models.add_commands,
    models.add_upload_commands,
    artifacts.add_commands,
    datasets.add_commands,
    training.add_commands,
    deployments.add_deploy_commands,
    servers.add_commands,
    deployments.add_deployment_commands,
    access.add_commands,
    pipelines.add_commands,
    logs.add_commands,
    assays.add_commands,
    explain.add_commands,
)


def root_parser(*, prog: str, description: str, example: str) -> argparse.ArgumentParser:
    """The ``mlserve`` parser with the global options; its subparsers share its class, so
    every command shows its example in --help and no parse error shows a key."""
    root = Parser(prog=prog, description=description, example=example)
    add_global_options(root, connection=True, at_root=True)
    return root


def state_options() -> argparse.ArgumentParser:
    """The parent parser giving a server command --home and -v after its name."""
    options = argparse.ArgumentParser(add_help=False)
    add_global_options(options, connection=False, at_root=False)
    return options


def add_client_commands(commands: Subcommands) -> None:
    """Add every client command group to the ``mlserve`` parser's subcommands."""
    connection = connection_options()
    for add_commands in COMMAND_GROUPS:
        add_commands(commands, connection)
