"""``mlserve explain``: each feature's contribution to a deployed model's prediction."""

from __future__ import annotations

import argparse

from mlserve_client import Client
from mlserve_client.cli.common import Subcommands, command
from mlserve_client.cli.output import print_table
from mlserve_client.inference_logs import parse_span


def add_commands(commands: Subcommands, connection: argparse.ArgumentParser) -> None:
    explain = command(
        commands,
        "explain",
        _explain,
        "explain a deployed model's prediction for rows of features (KernelSHAP)",
        connection,
        example="mlserve explain diabetes --row 0.04,0.05,0.06,0.02,-0.04,-0.03,-0.04,0,0.02,-0.02",
    )
    explain.add_argument("model")
    explain.add_argument(
        "--row", dest="rows", action="append", required=True,
        help="comma-separated feature values, repeatable",
    )  # fmt: skip
    explain.add_argument("--dataset", default="", help="background; default: the training data")
    explain.add_argument("--dataset-version", type=int, default=0, help="default: the latest")
    explain.add_argument("--samples", type=int, default=0, help="default: 2048")
    explain.add_argument("--background-size", type=int, default=0, help="default: 50")
    explain.add_argument("--output", default="", help="default: the model's first output")
    explain.add_argument(
        "--log-since", type=parse_span,
        help="background: the inputs the inference log recorded this recently, e.g. 1h, 7d",
    )  # fmt: skip
    explain.add_argument(
        "--log-until", type=parse_span, help="with --log-since: up to this long ago"
    )


def _explain(client: Client, args: argparse.Namespace) -> int:
    try:
        rows = [[float(value) for value in row.split(",")] for row in args.rows]
    except ValueError:
        print("--row takes numbers separated by commas, e.g. --row 0.1,2,-3")
        return 2
    response = client.explain(
        args.model,
        rows,
        dataset=args.dataset,
        dataset_version=args.dataset_version,
        samples=args.samples,
        background_size=args.background_size,
        output=args.output,
        include_prediction=True,
        log_since=args.log_since,
        log_until=args.log_until,
    )
    print(f"{response.method} of {response.output} (version {response.version}), "
          f"base value {response.base_value:.6g}, {response.model_calls} model calls")  # fmt: skip
    for index, explanation in enumerate(response.explanations):
        print(f"row {index}: prediction {explanation.prediction:.6g}")
        print_table(
            ("FEATURE", "CONTRIBUTION"),
            (
                (name, f"{value:.6g}")
                for name, value in zip(
                    response.feature_names, explanation.contributions, strict=True
                )
            ),
        )
    return 0
