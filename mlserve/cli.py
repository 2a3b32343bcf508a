"""The ``mlserve`` command: ``serve``, and client commands over the Python client."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from mlserve.core.errors import FailedPrecondition
from mlserve.settings import Option, SettingError, flag, options, resolve, shown_default
from mlserve_client.cli import add_client_commands, root_parser, state_options

FIRST_STEPS = """\
MLServe serves models on NVIDIA Triton. First steps:

  mlserve serve                                    # in one terminal: serve on 127.0.0.1:50051
  mlserve models upload examples/add --name add    # in another: upload a model folder
  mlserve deploy add                               # load it on the embedded Triton
  mlserve models list                              # what is stored, and what is deployed

Every command: mlserve --help; one command: mlserve COMMAND --help (each shows an example).
"""


def _flag_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """``parse`` for argparse: its SettingError message becomes argparse's (exit 2)."""

    def parse_flag(text: str) -> Any:
        try:
            return parse(text)
        except SettingError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    parse_flag.__name__ = parse.__name__.removeprefix("parse_")  # argparse names it on errors
    return parse_flag


def _help(option: Option, default: str) -> str:
    if option.hidden:
        return argparse.SUPPRESS
    names = ", ".join(f"${name}" for name in (option.env, *option.env_aliases))
    return f"{option.help} (env {names}; default: {default})".replace("%", "%%")


def add_serve_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``mlserve serve``: one flag per field of Settings, made from the field.

    Every flag defaults to "not given" (None), so ``settings.resolve`` can tell a
    flag from the environment from the default. ``--home`` is the global option
    (before or after the command, shared with the client commands), which already
    falls back to $MLSERVE_HOME and then ~/.mlserve.
    """
    serve = commands.add_parser(
        "serve",
        help="run the MLServe server in the foreground",
        description="Run the MLServe server in the foreground (Ctrl-C stops it). Each "
        "flag may instead come from its environment variable (an empty one counts as "
        "unset); a flag beats its variable.",
        parents=[state_options()],
        example="mlserve serve --listen 127.0.0.1:50051 --metrics-listen 127.0.0.1:9090",
    )
    for setting, option in options():
        if setting.name == "home":
            continue
        given: dict[str, Any] = {
            "dest": setting.name,
            "help": _help(option, shown_default(setting, option)),
            "default": None,
        }
        if isinstance(setting.default, bool):
            given["action"] = argparse.BooleanOptionalAction
        else:
            given.update(type=_flag_type(option.parse), metavar=option.metavar)
        if option.repeatable:
            given["action"] = "append"
        serve.add_argument(flag(setting), **given)
    serve.set_defaults(run=_serve, serve_parser=serve)


def _serve(args: argparse.Namespace) -> int:
    given = {setting.name: getattr(args, setting.name) for setting, _ in options()}
    # a repeatable flag gives a list; the setting is a tuple
    given = {name: tuple(v) if isinstance(v, list) else v for name, v in given.items()}
    try:
        settings = resolve({k: v for k, v in given.items() if v is not None}, os.environ)
    except SettingError as error:
        args.serve_parser.error(str(error))  # exits 2
    if settings.worker_slot is not None:
        _name_worker_in_log(settings.worker_slot.index)
    elif settings.workers > 1:
        from mlserve.workers import WorkerSet

        return WorkerSet(settings, args.argv).run()
    from mlserve.memory import keep_freed_buffers
    from mlserve.server import StartupFailed, serve

    keep_freed_buffers()
    try:
        asyncio.run(serve(settings))
    except FailedPrecondition as exc:
        # Refused to start (e.g. no sandbox for the embedded Triton): say why, no traceback.
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except StartupFailed as exc:
        # Tried and failed (the embedded Triton exited at start-up): the same, status 1.
        print(f"error: MLServe could not start: {exc}", file=sys.stderr)
        return 1
    return 0


def _name_worker_in_log(index: int) -> None:
    """Every line a --workers process logs says which worker wrote it."""
    shown = logging.Formatter(f"%(asctime)s %(levelname)s [worker {index}] %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.setFormatter(shown)


def parser() -> argparse.ArgumentParser:
    root = root_parser(
        prog="mlserve",
        description="MLServe: control plane and inference gateway for Triton. The options "
        "below are accepted before or after the command.",
        example="mlserve --home /srv/mlserve models list --tag tabular",
    )
    commands = root.add_subparsers(dest="command", metavar="COMMAND")
    add_serve_command(commands)
    add_client_commands(commands)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # --workers starts each worker so
    if args.command is None:
        print(FIRST_STEPS, end="")
        return 0
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
