"""The ``mlserve`` command: ``serve``, and client commands over the Python client."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from mlserve.settings import DEFAULT_LISTEN, Settings
from mlserve_client.cli import add_client_commands, root_parser, state_options

FIRST_STEPS = """\
MLServe serves models on NVIDIA Triton. First steps:

  mlserve serve                                    # in one terminal: serve on 127.0.0.1:50051
  mlserve models upload examples/add --name add    # in another: upload a model folder
  mlserve deploy add                               # load it on the embedded Triton
  mlserve models list                              # what is stored, and what is deployed

Every command: mlserve --help; one command: mlserve COMMAND --help (each shows an example).
"""


def _size(text: str) -> int:
    units = {"k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
    suffix = text[-1:].lower()
    if suffix in units:
        return int(float(text[:-1]) * units[suffix])
    return int(text)


def _duration(text: str) -> float:
    """Seconds from "30s", "90m", "24h", "7d" or a plain number of seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    suffix = text[-1:].lower()
    seconds = float(text[:-1]) * units[suffix] if suffix in units else float(text)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive duration")
    return seconds


def add_serve_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = commands.add_parser(
        "serve",
        help="run the MLServe server in the foreground",
        description="Run the MLServe server in the foreground (Ctrl-C stops it).",
        parents=[state_options()],
        example="mlserve serve --listen 127.0.0.1:50051 --metrics-listen 127.0.0.1:9090",
    )
    serve.add_argument("--listen", default=DEFAULT_LISTEN, help="host:port (default %(default)s)")
    serve.add_argument(
        "--database",
        default="",
        help="sqlite:///PATH or postgresql://USER[:PASSWORD]@HOST[:PORT]/NAME"
        "[?max_connections=N&timeout=S] (default: SQLite in --home)",
    )
    serve.add_argument(
        "--no-embedded-triton",
        action="store_true",
        help="do not start a Triton; only registered servers are used",
    )
    serve.add_argument(
        "--max-upload-bytes", type=_size, default="64G", help="largest version (e.g. 64G)"
    )
    serve.add_argument(
        "--max-staging-bytes",
        type=_size,
        default="128G",
        help="staging one user's unfinished uploads may fill together (default %(default)s)",
    )
    serve.add_argument(
        "--upload-expiry",
        type=_duration,
        default="24h",
        help="delete an unfinished upload untouched this long (e.g. 24h, 90m, 30s; "
        "default %(default)s)",
    )
    serve.add_argument(
        "--max-message-bytes",
        type=_size,
        default=str(2**31 - 1),
        help="largest gRPC message (default: 2G-1, what Triton accepts)",
    )
    serve.add_argument(
        "--metrics-listen", default="", help="host:port to serve Prometheus metrics on (off)"
    )
    serve.add_argument("--health-interval", type=float, default=2.0, help="seconds")
    serve.add_argument("--tls-cert", type=Path, help="PEM certificate: serve TLS (with --tls-key)")
    serve.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    # Hidden: lets bench/auth.py compare keyed and keyless gateway calls in one process.
    serve.add_argument("--bench-anonymous-gateway", action="store_true", help=argparse.SUPPRESS)
    serve.set_defaults(run=_serve)


def _serve(args: argparse.Namespace) -> int:
    if (args.tls_cert is None) != (args.tls_key is None):
        print("error: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    settings = Settings(
        home=args.home,
        listen=args.listen,
        database=args.database,
        embedded_triton=not args.no_embedded_triton,
        max_upload_bytes=args.max_upload_bytes,
        max_staging_bytes=args.max_staging_bytes,
        upload_expiry=args.upload_expiry,
        max_message_bytes=args.max_message_bytes,
        health_interval=args.health_interval,
        metrics_listen=args.metrics_listen,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        bench_anonymous_gateway=args.bench_anonymous_gateway,
    )
    from mlserve.memory import keep_freed_buffers
    from mlserve.server import serve

    keep_freed_buffers()
    asyncio.run(serve(settings))
    return 0


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
