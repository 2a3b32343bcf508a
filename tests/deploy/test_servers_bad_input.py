"""Bad server registrations and deployments to an unreachable Triton get the
exact status code, and nothing is written or lost.

Every test here runs against a real MLServe (and, where a deployment is
involved, its real embedded Triton) over real sockets. Each one asserts the
gRPC code and then that the model list, the version lists and the repository
on disk are as they were, and that nothing outside the repository was touched.
"""

from __future__ import annotations

import os
import time

import grpc
import pytest
from google.protobuf import field_mask_pb2

from mlserve_api.v1 import deployment_pb2, model_pb2, server_pb2
from tests.support.checks import expect_error, nothing_written, wait_until
from tests.support.mlserve import MLServeProcess, Stubs, free_port

MiB = 1024 * 1024
Code = grpc.StatusCode


# --- servers ----------------------------------------------------------------


def _ghost_server(stubs: Stubs, name: str, port: int) -> server_pb2.Server:
    return stubs.servers.RegisterServer(
        server_pb2.RegisterServerRequest(
            server=server_pb2.Server(name=name, address=f"127.0.0.1:{port}")
        ),
        metadata=stubs.auth,
        timeout=30,
    )


def test_deploy_to_an_unreachable_triton_is_unavailable(
    stubs: Stubs, mlserve: MLServeProcess, existing: model_pb2.ModelVersion
) -> None:
    ghost = f"ghost-{os.getpid()}-{time.monotonic_ns() % 100000}"
    _ghost_server(stubs, ghost, free_port())
    try:

        def unreachable() -> bool:
            server = stubs.servers.GetServer(
                server_pb2.GetServerRequest(name=ghost), metadata=stubs.auth
            )
            return bool(server.state == server_pb2.SERVER_STATE_UNREACHABLE)

        wait_until(unreachable, timeout=60)
        with nothing_written(stubs, mlserve.home):
            error = expect_error(
                Code.UNAVAILABLE,
                stubs.deployments.CreateDeployment,
                deployment_pb2.CreateDeploymentRequest(
                    wait=True,
                    deployment=deployment_pb2.Deployment(model=existing.model, servers=[ghost]),
                ),
                metadata=stubs.auth,
                timeout=60,
            )
            assert ghost in error.details()
            expect_error(
                Code.NOT_FOUND,
                stubs.deployments.GetDeployment,
                deployment_pb2.GetDeploymentRequest(name=existing.model),
                metadata=stubs.auth,
            )
            expect_error(
                Code.UNAVAILABLE,
                stubs.deployments.LoadModel,
                deployment_pb2.LoadModelRequest(wait=True, model=existing.model, server=ghost),
                metadata=stubs.auth,
                timeout=60,
            )
            expect_error(
                Code.NOT_FOUND,
                stubs.deployments.GetDeployment,
                deployment_pb2.GetDeploymentRequest(name=existing.model),
                metadata=stubs.auth,
            )
    finally:
        stubs.servers.DeleteServer(server_pb2.DeleteServerRequest(name=ghost), metadata=stubs.auth)
    expect_error(
        Code.NOT_FOUND,
        stubs.servers.GetServer,
        server_pb2.GetServerRequest(name=ghost),
        metadata=stubs.auth,
    )


def _server_names(stubs: Stubs) -> list[str]:
    response = stubs.servers.ListServers(
        server_pb2.ListServersRequest(page_size=1000), metadata=stubs.auth
    )
    return [s.name for s in response.servers]


@pytest.mark.parametrize(
    "address",
    ["nohost", "host:99999", "a b:1", "[::1:80", "host:0", "host:", ":80", "host:-1", "[zz]:80"],
)
def test_register_server_with_a_malformed_address(stubs: Stubs, address: str) -> None:
    before = _server_names(stubs)
    name = f"bad-address-{os.getpid()}"
    error = expect_error(
        Code.INVALID_ARGUMENT,
        stubs.servers.RegisterServer,
        server_pb2.RegisterServerRequest(server=server_pb2.Server(name=name, address=address)),
        metadata=stubs.auth,
    )
    assert "address" in error.details()
    assert _server_names(stubs) == before


def test_register_server_with_a_bad_or_duplicate_name(stubs: Stubs) -> None:
    name = f"ghost-dup-{os.getpid()}"
    port = free_port()
    _ghost_server(stubs, name, port)
    try:
        before = _server_names(stubs)
        for existing_name in (name, "local"):
            expect_error(
                Code.ALREADY_EXISTS,
                stubs.servers.RegisterServer,
                server_pb2.RegisterServerRequest(
                    server=server_pb2.Server(name=existing_name, address="127.0.0.1:1")
                ),
                metadata=stubs.auth,
            )
        for bad in ("../x", "a/b", "", "a b"):
            expect_error(
                Code.INVALID_ARGUMENT,
                stubs.servers.RegisterServer,
                server_pb2.RegisterServerRequest(
                    server=server_pb2.Server(name=bad, address="127.0.0.1:1")
                ),
                metadata=stubs.auth,
            )
        assert _server_names(stubs) == before
        kept = stubs.servers.GetServer(server_pb2.GetServerRequest(name=name), metadata=stubs.auth)
        assert kept.address == f"127.0.0.1:{port}"
        local = stubs.servers.GetServer(
            server_pb2.GetServerRequest(name="local"), metadata=stubs.auth
        )
        assert local.embedded
        assert local.address != "127.0.0.1:1"
    finally:
        stubs.servers.DeleteServer(server_pb2.DeleteServerRequest(name=name), metadata=stubs.auth)


def test_update_server_with_an_empty_or_unknown_mask(stubs: Stubs) -> None:
    name = f"ghost-mask-{os.getpid()}"
    port = free_port()
    _ghost_server(stubs, name, port)
    try:
        for paths, told in (
            ([], "update_mask must name some of"),
            (["name"], "cannot update name"),
        ):
            error = expect_error(
                Code.INVALID_ARGUMENT,
                stubs.servers.UpdateServer,
                server_pb2.UpdateServerRequest(
                    server=server_pb2.Server(name=name, address="127.0.0.1:1"),
                    update_mask=field_mask_pb2.FieldMask(paths=paths),
                ),
                metadata=stubs.auth,
            )
            assert told in error.details()
        kept = stubs.servers.GetServer(server_pb2.GetServerRequest(name=name), metadata=stubs.auth)
        assert kept.address == f"127.0.0.1:{port}"
    finally:
        stubs.servers.DeleteServer(server_pb2.DeleteServerRequest(name=name), metadata=stubs.auth)
