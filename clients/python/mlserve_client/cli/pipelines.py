"""``mlserve pipelines``: create pipelines from YAML, show their DAG, deploy and delete them."""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping
from pathlib import Path

from mlserve_api.v1 import deployment_pb2, pipeline_pb2
from mlserve_client import Client
from mlserve_client.cli.common import Subcommands, command, group
from mlserve_client.cli.deployments import (
    add_wait_option,
    report_deployment,
    show_progress,
    undeploy,
)
from mlserve_client.cli.output import one_line, print_fields, print_table, state_word


def add_commands(commands: Subcommands, connection: argparse.ArgumentParser) -> None:
    pipelines = group(commands, "pipelines", "create, show, deploy and delete pipelines")
    create = command(
        pipelines,
        "create",
        _create_pipeline,
        "create a pipeline from a YAML spec",
        connection,
        example="mlserve pipelines create examples/pipeline/chain.yaml",
    )
    create.add_argument("spec", type=Path, help="YAML file: name, inputs, outputs, steps")
    command(
        pipelines,
        "list",
        _list_pipelines,
        "list every pipeline",
        connection,
        example="mlserve pipelines list",
    )
    get = command(
        pipelines,
        "get",
        _get_pipeline,
        "show a pipeline's DAG (and, once deployed, each step's pinned version)",
        connection,
        example="mlserve pipelines get chain",
    )
    get.add_argument("name")
    get.add_argument("--version", type=int, default=0, help="version (default: latest)")
    delete = command(
        pipelines,
        "delete",
        _delete_pipeline,
        "delete a pipeline",
        connection,
        example="mlserve pipelines delete chain",
    )
    delete.add_argument("name")
    deploy = command(
        pipelines,
        "deploy",
        _deploy_pipeline,
        "deploy a pipeline as a Triton ensemble",
        connection,
        example="mlserve pipelines deploy chain --server local",
    )
    deploy.add_argument("name")
    deploy.add_argument("--version", type=int, default=0, help="version (default: latest)")
    deploy.add_argument(
        "--server", dest="servers", metavar="SERVER", action="append", default=[],
        help="server to deploy on; repeat for several (default: 'local')",
    )  # fmt: skip
    add_wait_option(deploy)
    undeploy_command = command(
        pipelines,
        "undeploy",
        undeploy,
        "undeploy a pipeline and its unshared members",
        connection,
        example="mlserve pipelines undeploy chain",
    )
    undeploy_command.add_argument("name")


def _create_pipeline(client: Client, args: argparse.Namespace) -> int:
    pipeline = client.create_pipeline(args.spec)
    print(f"created pipeline {pipeline.name} version {pipeline.version}")
    return 0


def _list_pipelines(client: Client, args: argparse.Namespace) -> int:
    print_table(
        ("NAME", "VERSION", "STEPS", "STATE", "DESCRIPTION"),
        (
            (
                pipeline.name,
                str(pipeline.version),
                " -> ".join(step.name for step in pipeline.steps),
                state_word(pipeline_pb2.PipelineState.Name(pipeline.state)),
                one_line(pipeline.description),
            )
            for pipeline in client.list_pipelines()
        ),
    )
    return 0


def _get_pipeline(client: Client, args: argparse.Namespace) -> int:
    request = pipeline_pb2.GetPipelineRequest(name=args.name, version=args.version)
    pipeline = client.pipelines.GetPipeline(request)
    pinned = _pinned_versions(client, pipeline)
    print_fields(
        ("name", pipeline.name),
        ("description", pipeline.description),
        ("version", f"{pipeline.version} of {pipeline.version_count}"),
        ("state", state_word(pipeline_pb2.PipelineState.Name(pipeline.state))),
        ("deployed version", str(pipeline.deployed_version or "-")),
        ("infer on", f"{pipeline.inference_address} model {pipeline.inference_model}"),
        ("inputs", _tensors(pipeline.inputs)),
        ("outputs", _tensors(pipeline.outputs)),
    )
    print_table(
        ("STEP", "MODEL", "VERSION", "INPUTS", "OUTPUTS", "SERVING"),
        (
            (
                step.name,
                step.model,
                str(step.model_version or pinned.get(step.model) or "deployed/latest"),
                _mapping(step.input_map),
                _mapping(step.output_map),
                _serving(step.serving),
            )
            for step in pipeline.steps
        ),
    )
    return 0


def _pinned_versions(client: Client, pipeline: pipeline_pb2.Pipeline) -> dict[str, int]:
    """Each member model's version as the deployment pinned it, when this version is the
    deployed one; else nothing (steps without a version then follow the deployed model)."""
    if not pipeline.deployed_version or pipeline.deployed_version != pipeline.version:
        return {}
    request = deployment_pb2.GetDeploymentRequest(name=pipeline.name)
    deployment = client.deployments.GetDeployment(request)
    return {
        member.model: member.version for target in deployment.targets for member in target.members
    }


def _delete_pipeline(client: Client, args: argparse.Namespace) -> int:
    client.pipelines.DeletePipeline(pipeline_pb2.DeletePipelineRequest(name=args.name))
    print(f"deleted pipeline {args.name}")
    return 0


def _deploy_pipeline(client: Client, args: argparse.Namespace) -> int:
    deployment = client.deploy_pipeline(
        args.name, args.version, args.servers, wait=args.wait, progress=show_progress
    )
    return report_deployment(deployment)


def _tensors(tensors: Iterable[pipeline_pb2.PipelineTensor]) -> str:
    return ", ".join(
        f"{t.name} {t.datatype or '?'}[{','.join(str(d) for d in t.dims)}]" for t in tensors
    )


def _mapping(mapping: Mapping[str, str]) -> str:
    return ", ".join(f"{key}<->{value}" for key, value in sorted(mapping.items()))


def _serving(settings: pipeline_pb2.ServingSettings) -> str:
    parts = []
    if settings.max_batch_size:
        parts.append(f"max_batch_size={settings.max_batch_size}")
    if settings.instance_count:
        parts.append(f"instances={settings.instance_count}")
    if settings.HasField("dynamic_batching"):
        batching = settings.dynamic_batching
        sizes = ",".join(str(size) for size in batching.preferred_batch_sizes) or "auto"
        parts.append(f"batching({sizes}; {batching.max_queue_delay_microseconds}us)")
    return " ".join(parts) or "-"
