"""Pipelines end to end, as a new user meets them: Python-backend models
uploaded to a real MLServe, chained into a pipeline, deployed as a Triton
ensemble on its real embedded Triton, and called through the gateway with
tritonclient and grpcurl. No mocks."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from mlserve_api.v1 import deployment_pb2, model_pb2, pipeline_pb2, server_pb2
from mlserve_client import Client, PipelineSpecError, read_pipeline_spec
from tests.support.commands import grpcurl, mlserve_cli
from tests.support.mlserve import MLServeProcess, Stubs
from tests.support.models import add_model_files, local_triton, scale_model_files
from tests.support.pipelines import Members, chain, cleanup, create, infer, step, upload
from tests.support.tritons import wait_for
from tests.support.uploading import stream
from tests.support.users import make_user

Code = grpc.StatusCode
READY = deployment_pb2.DEPLOYMENT_STATE_READY
FAILED = deployment_pb2.DEPLOYMENT_STATE_FAILED


@pytest.fixture(scope="module")
def members(stubs: Stubs) -> Members:
    names = Members(f"t-pl-{os.getpid() % 1000}")
    upload(stubs, scale_model_files(names.pre, factor=2.0), names.pre)
    upload(stubs, add_model_files(name=names.add), names.add)
    upload(stubs, scale_model_files(names.post, offset=100.0), names.post)
    return names


def deploy_pipeline(stubs: Stubs, name: str) -> deployment_pb2.Deployment:
    deployment: deployment_pb2.Deployment = stubs.deployments.CreateDeployment(
        deployment_pb2.CreateDeploymentRequest(
            wait=True, deployment=deployment_pb2.Deployment(pipeline=name)
        ),
        metadata=stubs.auth,
        timeout=180,
    )
    return deployment


def error_of(call: Any, request: Any, stubs: Stubs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, metadata=stubs.auth, timeout=120)
    return caught.value


def inference_count(
    client: triton.InferenceServerClient, member: str, headers: dict[str, str]
) -> int:
    """Successful inferences of version 1 of ``member``, by its statistics through the gateway."""
    stats = client.get_inference_statistics(member, "1", headers=headers)
    (version_stats,) = stats.model_stats
    assert (version_stats.name, version_stats.version) == (member, "1"), stats
    return int(version_stats.inference_count)


def pipeline_names(stubs: Stubs) -> list[str]:
    page = stubs.pipelines.ListPipelines(
        pipeline_pb2.ListPipelinesRequest(page_size=1000), metadata=stubs.auth
    )
    return [p.name for p in page.pipelines]


def test_a_three_step_pipeline_answers_through_the_gateway(
    stubs: Stubs, mlserve: MLServeProcess, members: Members
) -> None:
    name = f"t-pl-chain-{os.getpid() % 1000}"
    try:
        created = create(stubs, chain(name, members.all))
        assert (created.version, created.state) == (1, pipeline_pb2.PIPELINE_STATE_REGISTERED)
        assert [(t.name, t.datatype) for t in created.inputs] == [("A", "FP32"), ("B", "FP32")]
        assert (created.inference_address, created.inference_model) == (mlserve.address, name)

        deployment = deploy_pipeline(stubs, name)
        assert deployment.state == READY, deployment
        (target,) = deployment.targets
        assert target.server == "local"
        assert [(m.model, m.version, m.state) for m in target.members] == [
            (members.pre, 1, READY),
            (members.add, 1, READY),
            (members.post, 1, READY),
        ]
        assert (
            stubs.deployments.GetDeployment(
                deployment_pb2.GetDeploymentRequest(name=name), metadata=stubs.auth
            )
            == deployment
        )
        # The server shows the ensemble (pushed: not in Triton's index) and its members.
        local_server = stubs.servers.GetServer(
            server_pb2.GetServerRequest(name="local"), metadata=stubs.auth
        )
        loaded = {(m.name, m.version) for m in local_server.loaded_models if m.state == "READY"}
        assert {(name, 1), (members.pre, 1), (members.add, 1), (members.post, 1)} <= loaded
        # ListDeployments pages through model and pipeline deployments alike.
        listed, token = [], ""
        while True:
            page = stubs.deployments.ListDeployments(
                deployment_pb2.ListDeploymentsRequest(page_size=1, page_token=token),
                metadata=stubs.auth,
            )
            listed.extend(page.deployments)
            token = page.next_page_token
            if not token:
                break
        assert [d.name for d in listed] == sorted(d.name for d in listed)
        assert [d for d in listed if d.name == name] == [deployment]
        shown = stubs.pipelines.GetPipeline(
            pipeline_pb2.GetPipelineRequest(name=name), metadata=stubs.auth
        )
        assert (shown.state, shown.deployed_version) == (pipeline_pb2.PIPELINE_STATE_DEPLOYED, 1)

        headers = {"authorization": f"Bearer {mlserve.key}"}
        # (2A + B) + 100
        np.testing.assert_array_equal(
            infer(shown.inference_address, shown.inference_model, headers),
            np.array([112, 124, 136, 148], dtype=np.float32),
        )
        # Per-step statistics through the gateway: each member counted the call.
        # Triton counts a step after the step has sent its response, and the
        # ensemble answers as soon as that response arrives, so a step's count
        # can lag the answer by a moment: wait for it (bounded), then check it.
        client = triton.InferenceServerClient(mlserve.address)
        for member in (members.pre, members.add, members.post):
            wait_for(
                lambda member=member: inference_count(client, member, headers) >= 1,
                30,
                f"Triton to count the call to {member}",
            )

        # A member version in use, and the deployed pipeline, cannot be deleted.
        failure = error_of(
            stubs.models.DeleteModelVersion,
            model_pb2.DeleteModelVersionRequest(model=members.add, version=1),
            stubs,
        )
        assert failure.code() == Code.FAILED_PRECONDITION
        assert f"pipeline {name!r}" in (failure.details() or "")
        failure = error_of(
            stubs.pipelines.DeletePipeline, pipeline_pb2.DeletePipelineRequest(name=name), stubs
        )
        assert failure.code() == Code.FAILED_PRECONDITION
        assert (
            stubs.models.GetModelVersion(
                model_pb2.GetModelVersionRequest(model=members.add, version=1), metadata=stubs.auth
            ).version
            == 1
        )

        # Undeploying removes the ensemble and its members from Triton.
        stubs.deployments.DeleteDeployment(
            deployment_pb2.DeleteDeploymentRequest(name=name), metadata=stubs.auth, timeout=120
        )
        local = local_triton(stubs)
        for model in (name, members.pre, members.add, members.post):
            assert not local.is_model_ready(model), model
    finally:
        cleanup(stubs, name)


def test_bad_pipelines_are_refused_with_the_right_code_and_nothing_created(
    stubs: Stubs, members: Members
) -> None:
    name = f"t-pl-bad-{os.getpid() % 1000}"
    m = members
    cases = [
        (step("pre", "../secret", {"INPUT": "A"}, {"OUTPUT": "P"}), Code.INVALID_ARGUMENT, "pre"),
        (step("pre", "a/b", {"INPUT": "A"}, {"OUTPUT": "P"}), Code.INVALID_ARGUMENT, "pre"),
        (step("pre", m.pre, {"INPUT": "OUT"}, {"OUTPUT": "P"}), Code.INVALID_ARGUMENT, "cycle"),
        (step("pre", m.pre, {"INPUT": "Z"}, {"OUTPUT": "P"}), Code.INVALID_ARGUMENT, "'Z'"),
        (step("pre", m.add, {"INPUT0": "A"}, {"OUTPUT0": "P"}), Code.INVALID_ARGUMENT, "INPUT1"),
        (step("pre", "ghost", {"INPUT": "A"}, {"OUTPUT": "P"}), Code.NOT_FOUND, "'pre'"),
        (
            step("pre", m.pre, {"INPUT": "A"}, {"OUTPUT": "P"}, model_version=9),
            Code.NOT_FOUND,
            "'pre'",
        ),
    ]
    for bad_step, code, named in cases:
        error = error_of(
            stubs.pipelines.CreatePipeline,
            pipeline_pb2.CreatePipelineRequest(pipeline=chain(name, m.all, pre=bad_step)),
            stubs,
        )
        assert error.code() == code, (bad_step, error.details())
        assert named in (error.details() or ""), error.details()
    taken = error_of(
        stubs.pipelines.CreatePipeline,
        pipeline_pb2.CreatePipelineRequest(pipeline=chain(m.add, m.all)),
        stubs,
    )
    assert taken.code() == Code.ALREADY_EXISTS
    assert name not in pipeline_names(stubs)
    assert m.add not in pipeline_names(stubs)
    try:
        create(stubs, chain(name, m.all))
        again = error_of(
            stubs.pipelines.CreatePipeline,
            pipeline_pb2.CreatePipelineRequest(pipeline=chain(name, m.all)),
            stubs,
        )
        assert again.code() == Code.ALREADY_EXISTS
        # A model cannot take the pipeline's name either, by upload or create.
        clash = error_of(
            stubs.models.CreateModel,
            model_pb2.CreateModelRequest(model=model_pb2.Model(name=name)),
            stubs,
        )
        assert clash.code() == Code.ALREADY_EXISTS
        files = add_model_files(name=name)
        config = files.pop("config.pbtxt").decode()
        with pytest.raises(grpc.RpcError) as caught:
            stubs.models.UploadModelVersion(stream(name, files, config=config), metadata=stubs.auth)
        assert caught.value.code() == Code.ALREADY_EXISTS
        missing = error_of(stubs.models.GetModel, model_pb2.GetModelRequest(name=name), stubs)
        assert missing.code() == Code.NOT_FOUND
        # Deploying it as a model is refused with the way to do it.
        as_model = error_of(
            stubs.deployments.CreateDeployment,
            deployment_pb2.CreateDeploymentRequest(
                wait=True, deployment=deployment_pb2.Deployment(model=name)
            ),
            stubs,
        )
        assert as_model.code() == Code.INVALID_ARGUMENT
        assert "'pipeline'" in (as_model.details() or "")
    finally:
        cleanup(stubs, name)


def test_a_member_that_fails_to_load_fails_the_deployment_and_leaves_nothing_loaded(
    stubs: Stubs, members: Members
) -> None:
    name = f"t-pl-broken-{os.getpid() % 1000}"
    broken = f"t-pl-broken-post-{os.getpid() % 1000}"
    upload(stubs, scale_model_files(broken, broken=True), broken)
    try:
        create(stubs, chain(name, (members.pre, members.add, broken)))
        deployment = deploy_pipeline(stubs, name)
        assert deployment.state == FAILED, deployment
        (target,) = deployment.targets
        assert "this model refuses to load" in target.message, target.message
        assert broken in target.message
        states = {m.model: m.state for m in target.members}
        assert states[broken] == FAILED
        local = local_triton(stubs)
        for model in (name, members.pre, members.add, broken):
            assert not local.is_model_ready(model), model
    finally:
        cleanup(stubs, name)
        with contextlib.suppress(grpc.RpcError):
            stubs.models.DeleteModel(model_pb2.DeleteModelRequest(name=broken), metadata=stubs.auth)


def test_grpcurl_creates_and_describes_a_pipeline(
    stubs: Stubs, mlserve: MLServeProcess, members: Members
) -> None:
    name = f"t-pl-grpcurl-{os.getpid() % 1000}"
    body = {
        "pipeline": {
            "name": name,
            "inputs": [{"name": "X"}],
            "outputs": [{"name": "Y"}],
            "steps": [
                {"model": members.pre, "inputMap": {"INPUT": "X"}, "outputMap": {"OUTPUT": "M"}},
                {
                    "name": "again",
                    "model": members.post,
                    "inputMap": {"INPUT": "M"},
                    "outputMap": {"OUTPUT": "Y"},
                },
            ],
        }
    }
    try:
        service = "mlserve.v1.PipelineService"
        result = grpcurl(
            mlserve, "-d", json.dumps(body), mlserve.address, f"{service}/CreatePipeline"
        )
        assert result.returncode == 0, result.stderr
        result = grpcurl(
            mlserve, "-d", json.dumps({"name": name}), mlserve.address, f"{service}/GetPipeline"
        )
        assert result.returncode == 0, result.stderr
        shown = json.loads(result.stdout)
        assert shown["inferenceModel"] == name
        assert [s["name"] for s in shown["steps"]] == [members.pre, "again"]
        bad = dict(body, pipeline=dict(body["pipeline"], name=name + "-x", steps=[
            {"model": "../secret", "inputMap": {"INPUT": "X"}, "outputMap": {"OUTPUT": "Y"}}
        ]))  # fmt: skip
        result = grpcurl(
            mlserve, "-d", json.dumps(bad), mlserve.address, f"{service}/CreatePipeline"
        )
        assert result.returncode != 0
        assert "InvalidArgument" in result.stderr, result.stderr
    finally:
        cleanup(stubs, name)


def test_serving_settings_reach_triton_for_pipeline_steps_and_models(
    stubs: Stubs, members: Members
) -> None:
    name = f"t-pl-batch-{os.getpid() % 1000}"
    batched = f"t-pl-batched-{os.getpid() % 1000}"
    alone = f"t-pl-alone-{os.getpid() % 1000}"
    upload(stubs, scale_model_files(batched, factor=3.0, max_batch_size=8), batched)
    upload(stubs, scale_model_files(alone, max_batch_size=8), alone)
    settings = pipeline_pb2.ServingSettings(
        instance_count=2,
        max_batch_size=4,
        dynamic_batching=pipeline_pb2.DynamicBatching(
            preferred_batch_sizes=[2, 4], max_queue_delay_microseconds=500
        ),
    )
    pipeline = pipeline_pb2.Pipeline(
        name=name,
        inputs=[pipeline_pb2.PipelineTensor(name="X")],
        outputs=[pipeline_pb2.PipelineTensor(name="Y")],
        steps=[step("triple", batched, {"INPUT": "X"}, {"OUTPUT": "Y"}, serving=settings)],
    )
    local = local_triton(stubs)
    try:
        created = create(stubs, pipeline)
        assert created.steps[0].serving == settings
        assert deploy_pipeline(stubs, name).state == READY
        config = local.get_model_config(batched).config
        assert (config.max_batch_size, config.instance_group[0].count) == (4, 2)
        assert list(config.dynamic_batching.preferred_batch_size) == [2, 4]
        assert config.dynamic_batching.max_queue_delay_microseconds == 500
        assert local.get_model_config(name).config.max_batch_size == 4

        # The same settings on a model's own deployment, at deploy time.
        deployment = stubs.deployments.CreateDeployment(
            deployment_pb2.CreateDeploymentRequest(
                wait=True, deployment=deployment_pb2.Deployment(model=alone, serving=settings)
            ),
            metadata=stubs.auth,
            timeout=120,
        )
        assert (deployment.state, deployment.serving) == (READY, settings)
        config = local.get_model_config(alone).config
        assert (config.max_batch_size, config.instance_group[0].count) == (4, 2)
        # A model without a batch dimension cannot be made to batch: nothing deployed.
        refused = error_of(
            stubs.deployments.CreateDeployment,
            deployment_pb2.CreateDeploymentRequest(
                wait=True, deployment=deployment_pb2.Deployment(model=members.pre, serving=settings)
            ),
            stubs,
        )
        assert refused.code() == Code.INVALID_ARGUMENT
        assert "max_batch_size" in (refused.details() or "")
        missing = error_of(
            stubs.deployments.GetDeployment,
            deployment_pb2.GetDeploymentRequest(name=members.pre),
            stubs,
        )
        assert missing.code() == Code.NOT_FOUND
    finally:
        cleanup(stubs, name)
        cleanup(stubs, alone)
        for model in (batched, alone):
            with contextlib.suppress(grpc.RpcError):
                stubs.models.DeleteModel(
                    model_pb2.DeleteModelRequest(name=model), metadata=stubs.auth
                )


SPEC = """\
name: {name}
description: three steps from YAML
inputs: [A, B]
outputs: [OUT]
steps:
  - {{name: pre, model: {pre}, input_map: {{INPUT: A}}, output_map: {{OUTPUT: P}}}}
  - name: model
    model: {add}
    model_version: 1
    input_map: {{INPUT0: P, INPUT1: B}}
    output_map: {{OUTPUT0: S}}
  - {{name: post, model: {post}, input_map: {{INPUT: S}}, output_map: {{OUTPUT: OUT}}}}
"""


@pytest.mark.slow  # over ~20 s
def test_the_cli_creates_deploys_and_removes_a_pipeline_from_yaml(
    stubs: Stubs, mlserve: MLServeProcess, members: Members, tmp_path: Path
) -> None:
    name = f"t-pl-cli-{os.getpid() % 1000}"
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.format(name=name, pre=members.pre, add=members.add, post=members.post))
    try:
        created = mlserve_cli(mlserve, "pipelines", "create", str(spec))
        assert created.returncode == 0, created.stderr
        assert f"created pipeline {name} version 1" in created.stdout
        listed = mlserve_cli(mlserve, "pipelines", "list")
        assert f"{name}  1" in listed.stdout
        assert "pre -> model -> post" in listed.stdout
        shown = mlserve_cli(mlserve, "pipelines", "get", name)
        assert shown.returncode == 0, shown.stderr
        assert f"{mlserve.address} model {name}" in shown.stdout
        assert "A FP32[-1]" in shown.stdout

        deployed = mlserve_cli(mlserve, "pipelines", "deploy", name)
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        assert f"pipeline {name} version 1  READY" in deployed.stdout
        assert members.add in deployed.stdout
        headers = {"authorization": f"Bearer {mlserve.key}"}
        np.testing.assert_array_equal(
            infer(mlserve.address, name, headers), np.array([112, 124, 136, 148], np.float32)
        )
        refused = mlserve_cli(mlserve, "pipelines", "delete", name)
        assert refused.returncode == 1
        assert "FAILED_PRECONDITION" in refused.stderr
        assert mlserve_cli(mlserve, "pipelines", "undeploy", name).returncode == 0
        assert mlserve_cli(mlserve, "pipelines", "delete", name).returncode == 0
        assert name not in pipeline_names(stubs)

        spec.write_text("name: [not, a, name]\n")
        broken = mlserve_cli(mlserve, "pipelines", "create", str(spec))
        assert broken.returncode == 1
        assert "pipeline spec is not valid" in broken.stderr
    finally:
        cleanup(stubs, name)


def test_the_python_client_versions_and_copies_a_pipeline(
    mlserve: MLServeProcess, members: Members, tmp_path: Path
) -> None:
    name = f"t-pl-client-{os.getpid() % 1000}"
    copy = f"{name}-copy"
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.format(name=name, pre=members.pre, add=members.add, post=members.post))
    with Client(mlserve.address, mlserve.key) as client:
        try:
            first = client.create_pipeline(spec)
            assert (first.version, first.steps[1].model_version) == (1, 1)
            # Dropping the last step (its output becomes the pipeline's) is version 2.
            shorter = pipeline_pb2.Pipeline(
                name=name,
                outputs=[pipeline_pb2.PipelineTensor(name="S")],
                steps=first.steps[:2],
            )
            request = pipeline_pb2.UpdatePipelineRequest(pipeline=shorter)
            request.update_mask.paths.extend(["outputs", "steps"])
            second = client.pipelines.UpdatePipeline(request)
            assert (second.version, second.version_count) == (2, 2)
            assert [s.name for s in second.steps] == ["pre", "model"]
            old = client.pipelines.GetPipeline(
                pipeline_pb2.GetPipelineRequest(name=name, version=1)
            )
            assert [s.name for s in old.steps] == ["pre", "model", "post"]

            settings = pipeline_pb2.ServingSettings(instance_count=2)
            copied = client.pipelines.CopyPipeline(
                pipeline_pb2.CopyPipelineRequest(
                    name=name, version=1, new_name=copy, serving={"post": settings}
                )
            )
            assert (copied.name, copied.version) == (copy, 1)
            assert [s.serving for s in copied.steps] == [
                pipeline_pb2.ServingSettings(),
                pipeline_pb2.ServingSettings(),
                settings,
            ]
            listed = [p.name for p in client.list_pipelines()]
            assert name in listed
            assert copy in listed
            with pytest.raises(grpc.RpcError) as unknown:
                client.pipelines.CopyPipeline(
                    pipeline_pb2.CopyPipelineRequest(
                        name=name, new_name=f"{name}-x", serving={"nope": settings}
                    )
                )
            assert unknown.value.code() == Code.INVALID_ARGUMENT
            assert f"{name}-x" not in [p.name for p in client.list_pipelines()]
        finally:
            cleanup(client, name)
            cleanup(client, copy)


def test_a_spec_file_reads_as_the_pipeline_message(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.format(name="chain", pre="p", add="a", post="q"))
    pipeline = read_pipeline_spec(spec)
    assert [t.name for t in pipeline.inputs] == ["A", "B"]
    assert [(s.name, s.model, s.model_version) for s in pipeline.steps] == [
        ("pre", "p", 0),
        ("model", "a", 1),
        ("post", "q", 0),
    ]
    assert dict(pipeline.steps[1].input_map) == {"INPUT0": "P", "INPUT1": "B"}
    spec.write_text("name: chain\nsteps: [{model: p, input_mapp: {}}]\n")
    with pytest.raises(PipelineSpecError, match="input_mapp"):
        read_pipeline_spec(spec)
    spec.write_text("name: [unclosed\n")
    with pytest.raises(PipelineSpecError, match="not valid YAML"):
        read_pipeline_spec(spec)


def test_a_member_deployed_on_its_own_is_shared_at_its_version_and_kept_loaded(
    stubs: Stubs, members: Members
) -> None:
    name = f"t-pl-shared-{os.getpid() % 1000}"
    own = f"t-pl-own-{os.getpid() % 1000}"
    upload(stubs, scale_model_files(own, factor=2.0), own)
    upload(stubs, scale_model_files(own, factor=3.0), own)
    local = local_triton(stubs)
    try:
        alone = stubs.deployments.CreateDeployment(
            deployment_pb2.CreateDeploymentRequest(
                wait=True, deployment=deployment_pb2.Deployment(model=own, version=1)
            ),
            metadata=stubs.auth,
            timeout=120,
        )
        assert alone.state == READY
        # Pinned to another version than the one deployed: refused, nothing deployed.
        pinned = step("pre", own, {"INPUT": "A"}, {"OUTPUT": "P"}, model_version=2)
        create(stubs, chain(name, members.all, pre=pinned))
        clash = error_of(
            stubs.deployments.CreateDeployment,
            deployment_pb2.CreateDeploymentRequest(
                wait=True, deployment=deployment_pb2.Deployment(pipeline=name)
            ),
            stubs,
        )
        assert clash.code() == Code.FAILED_PRECONDITION
        assert "deployed on its own at version 1" in (clash.details() or "")
        gone = error_of(
            stubs.deployments.GetDeployment, deployment_pb2.GetDeploymentRequest(name=name), stubs
        )
        assert gone.code() == Code.NOT_FOUND
        assert not local.is_model_ready(name)

        # "Latest deployed" takes version 1, the one deployed on its own: shared.
        latest = step("pre", own, {"INPUT": "A"}, {"OUTPUT": "P"})
        request = pipeline_pb2.UpdatePipelineRequest(pipeline=chain(name, members.all, pre=latest))
        request.update_mask.paths.append("steps")
        assert stubs.pipelines.UpdatePipeline(request, metadata=stubs.auth).version == 2
        deployment = deploy_pipeline(stubs, name)
        assert deployment.state == READY, deployment
        assert (deployment.version, deployment.targets[0].members[0].version) == (2, 1)
        stubs.deployments.DeleteDeployment(
            deployment_pb2.DeleteDeploymentRequest(name=name), metadata=stubs.auth, timeout=120
        )
        assert local.is_model_ready(own, "1")
        assert not local.is_model_ready(name)
        assert not local.is_model_ready(members.add)  # a member nothing else uses
    finally:
        cleanup(stubs, name)
        cleanup(stubs, own)
        with contextlib.suppress(grpc.RpcError):
            stubs.models.DeleteModel(model_pb2.DeleteModelRequest(name=own), metadata=stubs.auth)


def test_a_pipeline_is_private_to_its_workspace(
    stubs: Stubs, mlserve: MLServeProcess, members: Members
) -> None:
    """An editor of another workspace cannot see, change, deploy or infer on it."""
    name = f"t-pl-private-{os.getpid() % 1000}"
    outsider = make_user(stubs, f"{name}-bob", "editor")
    try:
        created = create(stubs, chain(name, members.all))
        assert created.workspace == "admin"  # the creator's default workspace
        deploy_pipeline(stubs, name)
        missing = f"pipeline {name!r} does not exist"
        for call, request in (
            (outsider.pipelines.GetPipeline, pipeline_pb2.GetPipelineRequest(name=name)),
            (outsider.pipelines.DeletePipeline, pipeline_pb2.DeletePipelineRequest(name=name)),
            (
                outsider.deployments.CreateDeployment,
                deployment_pb2.CreateDeploymentRequest(
                    wait=True, deployment=deployment_pb2.Deployment(pipeline=name)
                ),
            ),
        ):
            hidden = error_of(call, request, outsider)
            assert (hidden.code(), hidden.details()) == (Code.NOT_FOUND, missing)
        gone = error_of(
            outsider.deployments.GetDeployment,
            deployment_pb2.GetDeploymentRequest(name=name),
            outsider,
        )
        assert gone.code() == Code.NOT_FOUND
        assert name not in pipeline_names(outsider)
        listed = outsider.deployments.ListDeployments(
            deployment_pb2.ListDeploymentsRequest(page_size=1000), metadata=outsider.auth
        )
        assert name not in [d.name for d in listed.deployments]
        # Nor can the outsider compose the workspace's private models into one.
        copied = error_of(
            outsider.pipelines.CreatePipeline,
            pipeline_pb2.CreatePipelineRequest(pipeline=chain(f"{name}-2", members.all)),
            outsider,
        )
        assert copied.code() == Code.NOT_FOUND
        # The gateway answers as for a model that does not exist.
        with pytest.raises(InferenceServerException) as refused:
            infer(mlserve.address, name, {"authorization": f"Bearer {outsider.key}"})
        assert refused.value.status() == "StatusCode.NOT_FOUND"
        answer = infer(mlserve.address, name, {"authorization": f"Bearer {stubs.key}"})
        assert answer.tolist() == [112.0, 124.0, 136.0, 148.0]
        # Nothing was changed by the refused calls.
        assert (
            stubs.pipelines.GetPipeline(
                pipeline_pb2.GetPipelineRequest(name=name), metadata=stubs.auth
            ).state
            == pipeline_pb2.PIPELINE_STATE_DEPLOYED
        )
    finally:
        cleanup(stubs, name)
