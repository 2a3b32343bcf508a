"""An app's retries, applied by the gateway when a replica answers UNAVAILABLE.

One MLServe (no embedded Triton; health rounds far apart, so MLServe still
believes a killed Triton is ready until a call to it fails) and three real
Tritons. Model "one" is on [a, b] and routed by an app with retries 0; model
"two" is on [a, c] and routed by an app with retries 1. With b and c killed,
sequential calls take turns between the two replicas, so one of the first two
calls to each model meets the dead one.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from mlserve_api.v1 import app_pb2, server_pb2, user_pb2
from tests.support.mlserve import MLServeProcess, Stubs
from tests.support.models import upload_add
from tests.support.tritons import TritonProcess, add_inputs, deploy, start_all, wait_for


def _consumer_key(stubs: Stubs, app: str, retries: int, model: str) -> str:
    stubs.apps.CreateApp(
        app_pb2.CreateAppRequest(app=app_pb2.App(name=app, retries=retries)), metadata=stubs.auth
    )
    stubs.apps.AddRoute(app_pb2.AddRouteRequest(app=app, model=model), metadata=stubs.auth)
    stubs.apps.AddConsumer(app_pb2.AddConsumerRequest(app=app, name="svc"), metadata=stubs.auth)
    request = user_pb2.CreateApiKeyRequest(app=app, consumer="svc")
    return str(stubs.users.CreateApiKey(request, metadata=stubs.auth).secret)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MLServeProcess, Stubs]]:
    root: Path = tmp_path_factory.mktemp("retries")
    process = MLServeProcess(root / "home", "--no-embedded-triton", "--health-interval", "3600")
    tritons = {name: TritonProcess(name, root, {}) for name in ("a", "b", "c")}
    try:
        process.start(wait_for_triton=False)
        start_all(list(tritons.values()))
        stubs = process.stubs()
        for tritonserver in tritons.values():
            stubs.servers.RegisterServer(
                server_pb2.RegisterServerRequest(
                    server=server_pb2.Server(name=tritonserver.name, address=tritonserver.address)
                ),
                metadata=stubs.auth,
                timeout=30,
            )
        for model, servers in (("one", ["a", "b"]), ("two", ["a", "c"])):
            upload_add(stubs, model)
            deploy(stubs, model, servers=servers)
        tritons["b"].kill()
        tritons["c"].kill()
        yield process, stubs
        stubs.channel.close()
    finally:
        for tritonserver in tritons.values():
            tritonserver.stop()
        process.stop()


def _outcomes(address: str, model: str, key: str, calls: int) -> list[str]:
    client = triton.InferenceServerClient(address)
    outcomes = []
    try:
        for _ in range(calls):
            try:
                client.infer(model, add_inputs(), headers={"authorization": f"Bearer {key}"})
                outcomes.append("OK")
            except InferenceServerException as error:
                outcomes.append(str(error.status()))
    finally:
        client.close()
    return outcomes


def test_no_retries_surface_the_dead_replica(setup: tuple[MLServeProcess, Stubs]) -> None:
    process, stubs = setup
    key = _consumer_key(stubs, "no-retries", 0, "one")
    outcomes = _outcomes(process.address, "one", key, 2)
    assert outcomes.count("StatusCode.UNAVAILABLE") == 1, outcomes
    assert outcomes.count("OK") == 1, outcomes


def test_one_retry_goes_to_the_live_replica(setup: tuple[MLServeProcess, Stubs]) -> None:
    process, stubs = setup
    key = _consumer_key(stubs, "one-retry", 1, "two")
    assert _outcomes(process.address, "two", key, 2) == ["OK", "OK"]
    # One of those calls met c first: that made MLServe check c, and find it down.
    wait_for(
        lambda: (
            stubs.servers.GetServer(
                server_pb2.GetServerRequest(name="c"), metadata=stubs.auth
            ).state
            == server_pb2.SERVER_STATE_UNREACHABLE
        ),
        timeout=30,
        what="c UNREACHABLE",
    )
