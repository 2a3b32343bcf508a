"""``mlserve logs``: read the inference log and set what a deployment records."""

from __future__ import annotations

import argparse

from mlserve_api.v1 import inference_log_pb2
from mlserve_client import Client
from mlserve_client.cli.common import Subcommands, command, group
from mlserve_client.cli.output import print_table, when
from mlserve_client.inference_logs import MODES, parse_span, policy, tensor_values


def add_logging_options(parser: argparse.ArgumentParser) -> None:
    """--log, --sample, --sampling-key, --max-payload: a logging policy on the command line."""
    parser.add_argument("--log", choices=MODES, help="what the inference log records")
    parser.add_argument("--sample", type=float, help="share of calls recorded, 0 to 1")
    parser.add_argument(
        "--sampling-key",
        default="",
        help="request parameter deciding sampling (same key, same answer)",
    )
    parser.add_argument(
        "--max-payload", type=int, default=0, help="bytes kept per tensor (default: 1 MiB)"
    )


def policy_from(
    args: argparse.Namespace, deployment: str
) -> inference_log_pb2.LoggingPolicy | None:
    """The policy the options give, or None when none was given."""
    if args.log is None and args.sample is None and not args.sampling_key and not args.max_payload:
        return None
    return policy(
        deployment, args.log or "metadata", args.sample, args.sampling_key, args.max_payload
    )


def add_commands(commands: Subcommands, connection: argparse.ArgumentParser) -> None:
    logs = group(commands, "logs", "the inference log: recorded calls and logging policies")
    listing = command(
        logs,
        "list",
        _list,
        "list recorded calls, newest first",
        connection,
        example="mlserve logs list add --since 1h",
    )
    listing.add_argument("model", nargs="?", default="", help="model (default: every model)")
    listing.add_argument("--since", type=parse_span, help="only this recent, e.g. 15m, 1h, 7d")
    listing.add_argument("--caller", default="", help="only calls by this user or consumer")
    listing.add_argument("--status", default="", help="only calls that ended so, e.g. OK")
    listing.add_argument("--limit", type=int, default=50, help="at most this many (default: 50)")
    listing.add_argument("--oldest-first", action="store_true", help="oldest first")
    listing.add_argument("--tensors", action="store_true", help="show the recorded tensors too")
    policy_command = command(
        logs,
        "policy",
        _policy,
        "show a deployment's logging policy, or change it (no redeploy)",
        connection,
        example="mlserve logs policy add --log all --sample 0.1",
    )
    policy_command.add_argument("deployment", help="deployment (model or pipeline) name")
    add_logging_options(policy_command)


def _list(client: Client, args: argparse.Namespace) -> int:
    records = list(
        client.inference_logs(
            args.model,
            since=args.since,
            caller=args.caller,
            status=args.status.upper(),
            oldest_first=args.oldest_first,
            limit=args.limit,
        )
    )
    print_table(
        ("TIME", "MODEL", "VERSION", "CALLER", "STATUS", "LATENCY MS", "REQUEST ID"),
        (
            (
                when(r.time),
                r.model,
                str(r.version),
                r.caller or "-",
                r.status,
                f"{r.latency_ms:.2f}",
                r.request_id or "-",
            )
            for r in records
        ),
    )
    if args.tensors:
        for record in records:
            for role, tensors in (("input", record.inputs), ("output", record.outputs)):
                for tensor in tensors:
                    cut = " (truncated)" if tensor.truncated else ""
                    print(f"{record.id} {role} {tensor.name} {tensor.datatype}"
                          f"{list(tensor.shape)}{cut}: {tensor_values(tensor)}")  # fmt: skip
    return 0


def _policy(client: Client, args: argparse.Namespace) -> int:
    wanted = policy_from(args, args.deployment)
    if wanted is None:
        shown = client.logs.GetLoggingPolicy(
            inference_log_pb2.GetLoggingPolicyRequest(deployment=args.deployment)
        )
    else:
        shown = client.set_logging_policy(wanted)
    mode = inference_log_pb2.LoggingMode.Name(shown.mode).removeprefix("LOGGING_MODE_").lower()
    print(
        f"deployment {shown.deployment}  log {mode}  sample {shown.sample_rate:g}  "
        f"sampling key {shown.sampling_key or '-'}  max payload {shown.max_payload_bytes} bytes  "
        f"dropped {shown.dropped}"
    )
    return 0
