"""Server.workspaces: a server restricted to some workspaces never holds another's models.

A real MLServe with its embedded Triton ("local"), restricted to one
workspace; models and a pipeline of another workspace are refused on it with
FAILED_PRECONDITION by every way of placing them, and nothing is deployed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import field_mask_pb2

from mlserve_api.v1 import deployment_pb2, model_pb2, pipeline_pb2, server_pb2, workspace_pb2
from tests.support.commands import mlserve_cli
from tests.support.mlserve import MLServeProcess, Stubs
from tests.support.models import add_model_files
from tests.support.tritons import deploy, remove_model
from tests.support.uploading import stream

pytestmark = pytest.mark.integration

Code = grpc.StatusCode
TEAM = "team-a"
OTHER = "team-b"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("server-workspaces")


@pytest.fixture(scope="module")
def served(home: Path) -> Iterator[MLServeProcess]:
    process = MLServeProcess(home).start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def stubs(served: MLServeProcess) -> Iterator[Stubs]:
    stubs = served.stubs()
    for name in (TEAM, OTHER):
        stubs.workspaces.CreateWorkspace(
            workspace_pb2.CreateWorkspaceRequest(workspace=workspace_pb2.Workspace(name=name)),
            metadata=stubs.auth,
        )
    try:
        yield stubs
    finally:
        stubs.channel.close()


def set_workspaces(stubs: Stubs, server: str, workspaces: list[str]) -> server_pb2.Server:
    updated: server_pb2.Server = stubs.servers.UpdateServer(
        server_pb2.UpdateServerRequest(
            server=server_pb2.Server(name=server, workspaces=workspaces),
            update_mask=field_mask_pb2.FieldMask(paths=["workspaces"]),
        ),
        metadata=stubs.auth,
    )
    return updated


@pytest.fixture
def restricted(stubs: Stubs) -> Iterator[None]:
    """ "local" holds only TEAM's models for the test."""
    set_workspaces(stubs, "local", [TEAM])
    try:
        yield
    finally:
        set_workspaces(stubs, "local", [])


def upload_to(stubs: Stubs, model: str, workspace: str) -> None:
    stubs.models.CreateModel(
        model_pb2.CreateModelRequest(model=model_pb2.Model(name=model, workspace=workspace)),
        metadata=stubs.auth,
    )
    files = add_model_files(name=model)
    config = files.pop("config.pbtxt").decode()
    stubs.models.UploadModelVersion(
        stream(model, files, config=config), metadata=stubs.auth, timeout=120
    )


def refused(stubs: Stubs, model: str, **placement: object) -> str:
    with pytest.raises(grpc.RpcError) as failure:
        deploy(stubs, model, **placement)
    assert failure.value.code() == Code.FAILED_PRECONDITION, failure.value.details()
    with pytest.raises(grpc.RpcError) as missing:  # nothing was deployed
        stubs.deployments.GetDeployment(
            deployment_pb2.GetDeploymentRequest(name=model), metadata=stubs.auth
        )
    assert missing.value.code() == Code.NOT_FOUND
    return str(failure.value.details())


def test_a_restricted_server_refuses_other_workspaces_models(
    stubs: Stubs, restricted: None
) -> None:
    server = stubs.servers.GetServer(server_pb2.GetServerRequest(name="local"), metadata=stubs.auth)
    assert list(server.workspaces) == [TEAM]
    upload_to(stubs, "ws-other", OTHER)
    upload_to(stubs, "ws-team", TEAM)
    try:
        message = refused(stubs, "ws-other")  # the default server
        for named in ("'local'", f"'{OTHER}'", f"'{TEAM}'"):
            assert named in message
        refused(stubs, "ws-other", servers=["local"])
        replicas = refused(stubs, "ws-other", replicas=1)
        assert "may hold workspace(s) 'team-b'" in replicas
        deployed = deploy(stubs, "ws-team")
        assert deployed.state == deployment_pb2.DEPLOYMENT_STATE_READY
        # Restricting further while TEAM's model is on it is refused, and changes nothing.
        with pytest.raises(grpc.RpcError) as failure:
            set_workspaces(stubs, "local", [OTHER])
        assert failure.value.code() == Code.FAILED_PRECONDITION
        assert "ws-team" in str(failure.value.details())
        server = stubs.servers.GetServer(
            server_pb2.GetServerRequest(name="local"), metadata=stubs.auth
        )
        assert list(server.workspaces) == [TEAM]
    finally:
        remove_model(stubs, "ws-other")
        remove_model(stubs, "ws-team")


@pytest.mark.parametrize(
    ("pipeline_workspace", "member_workspace", "named"),
    [(OTHER, TEAM, "pipeline 'ws-pipeline'"), (TEAM, OTHER, "model 'ws-member'")],
    ids=["pipeline-of-another-workspace", "member-of-another-workspace"],
)
def test_a_pipeline_with_anything_of_another_workspace_is_refused(
    stubs: Stubs, restricted: None, pipeline_workspace: str, member_workspace: str, named: str
) -> None:
    upload_to(stubs, "ws-member", member_workspace)
    pipeline = pipeline_pb2.Pipeline(
        name="ws-pipeline",
        workspace=pipeline_workspace,
        inputs=[pipeline_pb2.PipelineTensor(name="A"), pipeline_pb2.PipelineTensor(name="B")],
        outputs=[pipeline_pb2.PipelineTensor(name="OUT")],
        steps=[
            pipeline_pb2.PipelineStep(
                name="add",
                model="ws-member",
                input_map={"INPUT0": "A", "INPUT1": "B"},
                output_map={"OUTPUT0": "OUT"},
            )
        ],
    )
    stubs.pipelines.CreatePipeline(
        pipeline_pb2.CreatePipelineRequest(pipeline=pipeline), metadata=stubs.auth
    )
    try:
        with pytest.raises(grpc.RpcError) as failure:
            stubs.deployments.CreateDeployment(
                deployment_pb2.CreateDeploymentRequest(
                    wait=True, deployment=deployment_pb2.Deployment(pipeline="ws-pipeline")
                ),
                metadata=stubs.auth,
                timeout=120,
            )
        assert failure.value.code() == Code.FAILED_PRECONDITION
        assert named in str(failure.value.details())
        listed = stubs.deployments.ListDeployments(
            deployment_pb2.ListDeploymentsRequest(), metadata=stubs.auth
        )
        assert [d.name for d in listed.deployments] == []
    finally:
        stubs.pipelines.DeletePipeline(
            pipeline_pb2.DeletePipelineRequest(name="ws-pipeline"), metadata=stubs.auth
        )
        remove_model(stubs, "ws-member")


@pytest.mark.parametrize(
    ("workspaces", "field"),
    [(["no-such-workspace"], "server.workspaces[0]"), ([TEAM, TEAM], "twice"), (["../x"], "[0]")],
)
def test_register_with_bad_workspaces_is_invalid_and_registers_nothing(
    stubs: Stubs, workspaces: list[str], field: str
) -> None:
    with pytest.raises(grpc.RpcError) as failure:
        stubs.servers.RegisterServer(
            server_pb2.RegisterServerRequest(
                server=server_pb2.Server(
                    name="ws-bad", address="127.0.0.1:1", workspaces=workspaces
                )
            ),
            metadata=stubs.auth,
        )
    assert failure.value.code() == Code.INVALID_ARGUMENT
    assert field in str(failure.value.details())
    servers = stubs.servers.ListServers(server_pb2.ListServersRequest(), metadata=stubs.auth)
    assert [s.name for s in servers.servers] == ["local"]


def test_register_with_workspaces_keeps_them(stubs: Stubs) -> None:
    registered = stubs.servers.RegisterServer(
        server_pb2.RegisterServerRequest(
            server=server_pb2.Server(name="ws-ok", address="127.0.0.1:1", workspaces=[TEAM])
        ),
        metadata=stubs.auth,
    )
    try:
        assert list(registered.workspaces) == [TEAM]
    finally:
        stubs.servers.DeleteServer(
            server_pb2.DeleteServerRequest(name="ws-ok"), metadata=stubs.auth
        )


def test_the_cli_registers_a_server_for_one_workspace(stubs: Stubs, served: MLServeProcess) -> None:
    result = mlserve_cli(
        served, "servers", "register", "ws-cli", "127.0.0.1:1", "--workspace", TEAM
    )
    try:
        assert result.returncode == 0, result.stderr
        assert f"only workspaces {TEAM}" in result.stdout
        server = stubs.servers.GetServer(
            server_pb2.GetServerRequest(name="ws-cli"), metadata=stubs.auth
        )
        assert list(server.workspaces) == [TEAM]
    finally:
        stubs.servers.DeleteServer(
            server_pb2.DeleteServerRequest(name="ws-cli"), metadata=stubs.auth
        )
