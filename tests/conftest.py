"""Fixtures that start real processes: MLServe (with its embedded, real Triton)
on free loopback ports, and gRPC stubs talking to it over real sockets."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from mlserve_api.v1 import model_pb2
from tests.support.checks import delete_model_quietly
from tests.support.mlserve import MLServeProcess, Stubs
from tests.support.uploading import stream, upload


@pytest.fixture(scope="session", autouse=True)
def digest_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The client's digest cache in the session's temporary directory, not the user's
    ~/.cache (the CLI's subprocesses inherit it)."""
    path = tmp_path_factory.mktemp("digest-cache") / "digests.json"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLSERVE_DIGEST_CACHE", str(path))
        yield


@pytest.fixture(scope="session")
def mlserve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLServeProcess]:
    """One MLServe with its embedded Triton for the whole session."""
    process = MLServeProcess(tmp_path_factory.mktemp("mlserve-home"))
    try:
        yield process.start()
    finally:
        process.stop()


@pytest.fixture(scope="session")
def stubs(mlserve: MLServeProcess) -> Iterator[Stubs]:
    stubs = mlserve.stubs()
    yield stubs
    stubs.channel.close()


@pytest.fixture
def model_name(request: pytest.FixtureRequest) -> str:
    """A model name unique to the test, so tests sharing one server never collide."""
    name = request.node.name.replace("[", "-").replace("]", "").replace("/", "-")
    return f"t-{name}"[:100] + f"-{os.getpid() % 1000}"


pytest_plugins = ["tests.support.databases", "tests.support.issuer"]


@pytest.fixture(scope="module")
def existing(stubs: Stubs) -> Iterator[model_pb2.ModelVersion]:
    """A model with one committed version, shared by the read-only tests here."""
    name = f"t-bad-input-existing-{os.getpid() % 1000}"
    version = upload(stubs, stream(name, {"model.py": b"# existing\n"}))
    yield version
    delete_model_quietly(stubs, name)
