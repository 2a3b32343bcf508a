"""ListServers and GetServer show only the loaded models the caller may see.

Triton's index lists every directory of the repository it shares with
MLServe, and pushed deployments are listed from MLServe's own records: both
are filtered by the same visibility rule as every other list.
"""

from __future__ import annotations

import grpc

from mlserve_api.v1 import model_pb2, pipeline_pb2, server_pb2
from tests.support.mlserve import Stubs
from tests.support.models import upload_add
from tests.support.tritons import deploy, remove_model, wait_for
from tests.support.users import PID, make_user


def loaded_names(caller: Stubs) -> tuple[set[str], set[str]]:
    """The loaded model names ``caller`` is shown by ListServers and by GetServer("local")."""
    listed = caller.servers.ListServers(
        server_pb2.ListServersRequest(page_size=1000), metadata=caller.auth
    ).servers
    request = server_pb2.GetServerRequest(name="local")
    local = caller.servers.GetServer(request, metadata=caller.auth)
    return (
        {model.name for server in listed for model in server.loaded_models},
        {model.name for model in local.loaded_models},
    )


def can_see(caller: Stubs, name: str) -> bool:
    """True when ``caller`` may read a model or a pipeline called ``name``."""
    for call, request in (
        (caller.models.GetModel, model_pb2.GetModelRequest(name=name)),
        (caller.pipelines.GetPipeline, pipeline_pb2.GetPipelineRequest(name=name)),
    ):
        try:
            call(request, metadata=caller.auth)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                raise
            continue
        return True
    return False


def test_servers_show_only_the_loaded_models_the_caller_may_see(
    stubs: Stubs, model_name: str
) -> None:
    ann = make_user(stubs, f"servers-ann-{PID}", "editor")
    bob = make_user(stubs, f"servers-bob-{PID}", "editor")
    upload_add(ann, model_name)  # private to ann's workspace
    try:
        deploy(ann, model_name)
        # Listed both from Triton's index and as a ready deployment.
        wait_for(
            lambda: all(model_name in names for names in loaded_names(stubs)),
            60,
            "the admin to see the model loaded",
        )
        assert all(model_name in names for names in loaded_names(ann))
        for names in loaded_names(bob):
            assert model_name not in names
            assert all(can_see(bob, name) for name in names)
    finally:
        remove_model(stubs, model_name)
