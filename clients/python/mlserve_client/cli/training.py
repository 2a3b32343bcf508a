"""``mlserve training``: run a model's training script on a dataset, follow, list, cancel."""

from __future__ import annotations

import argparse

from mlserve_api.v1 import training_pb2
from mlserve_client import Client
from mlserve_client.cli.common import Subcommands, command, group
from mlserve_client.cli.output import print_table, when


def add_commands(commands: Subcommands, connection: argparse.ArgumentParser) -> None:
    training = group(commands, "training", "train a model's next version in the sandbox")
    run = command(
        training,
        "run",
        _run,
        "run the model's code artifact on a dataset; its output becomes the next version",
        connection,
        example="mlserve training run diabetes train.py --dataset diabetes --follow",
    )
    run.add_argument("model")
    run.add_argument("code_path", help="the code artifact (or --code-dataset file) to run")
    run.add_argument("--dataset", required=True)
    run.add_argument("--dataset-version", type=int, default=0, help="default: the latest")
    run.add_argument("--code-version", type=int, default=0, help="default: the latest")
    run.add_argument(
        "--code-dataset", default="", help="take the script from this dataset, not an artifact"
    )
    run.add_argument("--code-dataset-version", type=int, default=0, help="default: the latest")
    run.add_argument(
        "--param", dest="params", action="append", default=[], help="name=value, repeatable"
    )
    run.add_argument(
        "--env", default="", help="an env artifact (requirements) the runner must meet"
    )
    run.add_argument(
        "--label",
        dest="labels",
        action="append",
        default=[],
        help="a label the runner must have, repeatable",
    )
    run.add_argument(
        "--network",
        action="store_true",
        help="run with the host's network (the admin must allow it)",
    )
    run.add_argument("--follow", action="store_true", help="print its log until it ends")
    listing = command(
        training, "list", _list, "list training jobs", connection,
        example="mlserve training list --model diabetes",
    )  # fmt: skip
    listing.add_argument("--model", default="")
    listing.add_argument(
        "--state",
        default="",
        type=str.upper,
        choices=("QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"),
    )
    follow = command(
        training, "follow", _follow, "print a job's log until it ends", connection,
        example="mlserve training follow job-0123",
    )  # fmt: skip
    follow.add_argument("id")
    cancel = command(
        training, "cancel", _cancel, "cancel a job", connection,
        example="mlserve training cancel job-0123",
    )  # fmt: skip
    cancel.add_argument("id")


def _state(job: training_pb2.TrainingJob) -> str:
    return training_pb2.TrainingJobState.Name(job.state).removeprefix("TRAINING_JOB_STATE_")


def _report(job: training_pb2.TrainingJob) -> int:
    suffix = f" -> version {job.version}" if job.version else ""
    reason = f": {job.reason}" if job.reason else ""
    print(f"training job {job.id} {_state(job)}{reason}{suffix}")
    return 0 if job.state == training_pb2.TRAINING_JOB_STATE_SUCCEEDED else 1


def _run(client: Client, args: argparse.Namespace) -> int:
    params = dict(entry.partition("=")[::2] for entry in args.params)
    job = client.train(
        args.model,
        args.code_path,
        args.dataset,
        code_version=args.code_version,
        dataset_version=args.dataset_version,
        parameters=params,
        env_path=args.env,
        runner_labels=args.labels,
        network=args.network,
        code_dataset=args.code_dataset,
        code_dataset_version=args.code_dataset_version,
    )
    if not args.follow:
        print(f"training job {job.id} {_state(job)}")
        return 0
    return _report(client.follow_training(job.id, print))


def _follow(client: Client, args: argparse.Namespace) -> int:
    return _report(client.follow_training(args.id, print))


def _cancel(client: Client, args: argparse.Namespace) -> int:
    job = client.training.CancelTrainingJob(training_pb2.CancelTrainingJobRequest(id=args.id))
    return _report(job) if job.state != training_pb2.TRAINING_JOB_STATE_CANCELLED else 0


def _list(client: Client, args: argparse.Namespace) -> int:
    jobs = client.list_training_jobs(model=args.model, state=args.state)
    print_table(
        ("ID", "MODEL", "STATE", "VERSION", "CREATED", "REASON"),
        (
            (j.id, j.model, _state(j), str(j.version or "-"), when(j.create_time), j.reason)
            for j in jobs
        ),
    )
    return 0
