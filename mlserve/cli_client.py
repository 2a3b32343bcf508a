"""Client commands of ``mlserve`` (models, deploy, servers); filled in next."""

from __future__ import annotations

import argparse


def add_client_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    del commands
