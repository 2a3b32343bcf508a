"""``mlserve deploy``, ``mlserve undeploy`` and ``mlserve deployments``: put model versions
on servers, take them off, and show each deployment's per-server state."""

from __future__ import annotations

import argparse

from mlserve_api.v1 import deployment_pb2
from mlserve_client import Client
from mlserve_client.cli.common import Subcommands, command, fail, group
from mlserve_client.cli.logs import add_logging_options, policy_from
from mlserve_client.cli.output import deployment_state, one_line, print_table, when

_TROUBLED_DEPLOYMENT = {
    deployment_pb2.DEPLOYMENT_STATE_FAILED,
    deployment_pb2.DEPLOYMENT_STATE_UNREACHABLE,
}


def add_deploy_commands(commands: Subcommands, connection: argparse.ArgumentParser) -> None:
    deploy = command(
        commands,
        "deploy",
        _deploy,
        "deploy a model version (create or update)",
        connection,
        example="mlserve deploy add --version 1 --server local",
    )
    deploy.add_argument("name", help="model name")
    deploy.add_argument("--version", type=int, default=0, help="version (default: latest)")
    deploy.add_argument(
        "--server",
        dest="servers",
        metavar="SERVER",
        action="append",
        help="server to load it on; repeat for several (default: keep, or 'local' when new)",
    )
    add_wait_option(deploy)
    add_logging_options(deploy)
    lazy = deploy.add_argument_group("loading on demand (for a new deployment)")
    lazy.add_argument(
        "--on-demand",
        action="store_true",
        help="load it on its first inference, evict it to make room, unload it when idle",
    )
    lazy.add_argument("--min-copies", type=int, default=0, help="copies kept loaded (default 0)")
    lazy.add_argument(
        "--max-copies", type=int, default=0, help="most servers holding it (default: all)"
    )
    lazy.add_argument(
        "--idle-unload-after",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="unload a copy unused this long (default: never)",
    )
    lazy.add_argument("--pinned", action="store_true", help="never evict it")
    undeploy_command = command(
        commands,
        "undeploy",
        undeploy,
        "unload a model and delete its deployment",
        connection,
        example="mlserve undeploy add",
    )
    undeploy_command.add_argument("name", help="model name")


def add_deployment_commands(commands: Subcommands, connection: argparse.ArgumentParser) -> None:
    deployments = group(commands, "deployments", "show deployments and their per-server state")
    command(
        deployments,
        "list",
        _list_deployments,
        "list every deployment",
        connection,
        example="mlserve deployments list",
    )
    get = command(
        deployments,
        "get",
        _get_deployment,
        "show one deployment",
        connection,
        example="mlserve deployments get add",
    )
    get.add_argument("name", help="deployment (model) name")


def add_wait_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-wait",
        dest="wait",
        action="store_false",
        help="return once the load started (LOADING) instead of when it finished",
    )


def show_progress(deployment: deployment_pb2.Deployment) -> None:
    """One line per poll while a deployment loads: each server's state."""
    states = ", ".join(
        f"{target.server} {deployment_state(target.state)}" for target in deployment.targets
    )
    print(f"loading {deployment.name} version {deployment.version}: {states}", flush=True)


def _deploy(client: Client, args: argparse.Namespace) -> int:
    logging = policy_from(args, args.name)
    deployment = client.deploy(
        args.name,
        args.version,
        args.servers,
        logging=logging,
        wait=args.wait,
        progress=show_progress,
        on_demand=args.on_demand,
        min_copies=args.min_copies,
        max_copies=args.max_copies,
        idle_unload_after=args.idle_unload_after,
        pinned=args.pinned,
    )
    return report_deployment(deployment)


def report_deployment(deployment: deployment_pb2.Deployment) -> int:
    """Print a deployment; exit code 1 when a target failed or is unreachable."""
    _print_deployment(deployment)
    if deployment.state in _TROUBLED_DEPLOYMENT:
        return fail(f"deployment {deployment.name} is {deployment_state(deployment.state)}")
    return 0


def undeploy(client: Client, args: argparse.Namespace) -> int:
    """Delete the deployment ``args.name`` (a model's or a pipeline's)."""
    client.deployments.DeleteDeployment(deployment_pb2.DeleteDeploymentRequest(name=args.name))
    print(f"undeployed {args.name}")
    return 0


def _list_deployments(client: Client, args: argparse.Namespace) -> int:
    print_table(
        ("NAME", "VERSION", "STATE", "SERVERS"),
        (
            (
                deployment.name,
                str(deployment.version),
                deployment_state(deployment.state),
                ", ".join(
                    f"{target.server}({deployment_state(target.state)})"
                    for target in deployment.targets
                ),
            )
            for deployment in client.list_deployments()
        ),
    )
    return 0


def _get_deployment(client: Client, args: argparse.Namespace) -> int:
    request = deployment_pb2.GetDeploymentRequest(name=args.name)
    _print_deployment(client.deployments.GetDeployment(request))
    return 0


def _print_deployment(deployment: deployment_pb2.Deployment) -> None:
    what = f"pipeline {deployment.pipeline}" if deployment.pipeline else f"model {deployment.model}"
    print(
        f"deployment {deployment.name}  {what} version {deployment.version}  "
        f"{deployment_state(deployment.state)}"
    )
    print_table(
        ("SERVER", "STATE", "UPDATED", "MESSAGE"),
        (
            (
                target.server,
                deployment_state(target.state),
                when(target.update_time),
                one_line(target.message),
            )
            for target in deployment.targets
        ),
    )
    members = [(t.server, m) for t in deployment.targets for m in t.members]
    if members:
        print_table(
            ("SERVER", "MEMBER", "VERSION", "STATE", "MESSAGE"),
            (
                (
                    server,
                    member.model,
                    str(member.version),
                    deployment_state(member.state),
                    one_line(member.message),
                )
                for server, member in members
            ),
        )
