"""The embedded Triton launcher and the control-plane client, against a real Triton.

One Triton serves the module (starting it is the slow part); tests that need
their own process (port clashes, stopping, dying with the parent) start one
briefly. Each test works on its own model names so their order does not matter.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from google.protobuf import json_format

from mlserve.core.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from mlserve.triton import EmbeddedTriton, IndexEntry, TritonClient, TritonInstallation
from mlserve.triton import launcher as launcher_module
from mlserve.triton.sandbox import Sandbox
from tests.support.models import add_model_config, add_model_files, write_add_model
from tests.support.procfs import descendants

pytestmark = pytest.mark.integration

SERVER = "test-triton"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedTriton]:
    root = tmp_path_factory.mktemp("triton")
    repository = root / "repo"
    write_add_model(repository, name="add")
    write_add_model(repository, name="versioned", offset=100.0, version=1)
    write_add_model(repository, name="versioned", offset=200.0, version=2)
    broken = write_add_model(repository, name="broken")
    (broken / "1" / "model.py").write_text("raise RuntimeError('boom at import')\n")
    # A link left by an older installation must be replaced, not trusted.
    stale = root / "work" / "backends" / "python" / "libtriton_python.so"
    stale.parent.mkdir(parents=True)
    stale.symlink_to("/nonexistent/libtriton_python.so")

    server = EmbeddedTriton(repository, root / "work", log_path=root / "triton.log")
    asyncio.run(server.start())
    yield server
    asyncio.run(server.stop())


def with_client(address: str, body: Callable[[TritonClient], Awaitable[T]]) -> T:
    """Run ``body`` with a fresh client in a fresh event loop, as a sync test must."""
    return asyncio.run(with_client_async(address, body))


async def with_client_async(address: str, body: Callable[[TritonClient], Awaitable[T]]) -> T:
    """Run ``body`` with a fresh client, closed after."""
    client = TritonClient(SERVER, address)
    try:
        return await body(client)
    finally:
        await client.close()


def config_json(name: str, *, versions: tuple[int, ...] = ()) -> str:
    config = add_model_config(name)
    if versions:
        config.version_policy.specific.versions.extend(versions)
    return json_format.MessageToJson(config)


def infer(address: str, model: str, version: int = 0) -> list[float]:
    client = triton_grpc.InferenceServerClient(address)
    inputs = []
    for name, values in (("INPUT0", [1.0, 2.0, 3.0]), ("INPUT1", [10.0, 20.0, 30.0])):
        tensor = triton_grpc.InferInput(name, [3], "FP32")
        tensor.set_data_from_numpy(np.array(values, dtype=np.float32))
        inputs.append(tensor)
    result = client.infer(model, inputs, model_version=str(version) if version else "")
    output = result.as_numpy("OUTPUT0")
    assert output is not None
    return [float(x) for x in output]


def states(entries: list[IndexEntry], model: str) -> dict[int, str]:
    return {entry.version: entry.state for entry in entries if entry.name == model}


def busy_port() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


# --- the installation and the process --------------------------------------------------------


def test_installation_matches_running_python() -> None:
    installation = TritonInstallation.find()
    assert installation.server_binary.is_file()
    assert installation.backend_stub.parent.name == f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert (installation.python_backend_dir / "libtriton_python.so").is_file()


def test_missing_wheel_is_an_actionable_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda *_: None)
    with pytest.raises(FailedPrecondition, match="pip install nvidia-pytriton"):
        TritonInstallation.find()


def test_command_line_and_backend_links(triton: EmbeddedTriton) -> None:
    assert triton.pid is not None
    args = Path(f"/proc/{triton.pid}/cmdline").read_bytes().decode().split("\0")
    for flag in (
        "--model-control-mode=explicit",
        "--grpc-address=127.0.0.1",
        "--allow-http=false",
        "--allow-metrics=false",
        "--allow-gpu-metrics=false",
        "--strict-readiness=false",
    ):
        assert flag in args
    # Sandboxed: Triton sees the repository and backends at fixed places only.
    assert "--model-repository=/mlserve/repository" in args
    assert "--backend-directory=/mlserve/backends" in args
    backends = triton._workdir / "backends"  # where start() made them
    installation = TritonInstallation.find()
    python_dir = backends / "python"
    # The fixture planted a stale link here; start() must have replaced it.
    assert (python_dir / "libtriton_python.so").resolve() == (
        installation.python_backend_dir / "libtriton_python.so"
    ).resolve()
    assert (python_dir / "triton_python_backend_stub").resolve() == (
        installation.backend_stub.resolve()
    )


def test_listens_on_loopback_only(triton: EmbeddedTriton) -> None:
    host, port = triton.address.rsplit(":", 1)
    assert host == "127.0.0.1"
    listening = listening_addresses(int(port))
    assert listening, f"nothing listens on port {port}"
    assert listening <= LOOPBACK_HEX, f"Triton listens beyond loopback: {listening}"


# /proc/net/tcp{,6} spell addresses as little-endian hex words.
LOOPBACK_HEX = {
    "0100007F",  # 127.0.0.1
    "0000000000000000FFFF00000100007F",  # ::ffff:127.0.0.1
    "00000000000000000000000001000000",  # ::1
}


def listening_addresses(port: int) -> set[str]:
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.split(":")
            if state == "0A" and int(port_hex, 16) == port:  # 0A is LISTEN
                found.add(address)
    return found


def test_port_clash_on_a_fixed_port_reports_the_log(tmp_path: Path) -> None:
    with busy_port() as taken:
        port = taken.getsockname()[1]
        server = EmbeddedTriton(
            tmp_path / "repo", tmp_path / "work", log_path=tmp_path / "t.log", grpc_port=port
        )
        with pytest.raises(Unavailable, match="already in use") as caught:
            asyncio.run(server.start())
    assert "exited during startup" in caught.value.message
    assert not server.running
    assert server.pid is None


def test_picked_port_taken_retries_then_stop_makes_it_unreachable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_pick = launcher_module._free_loopback_port
    with busy_port() as taken:
        taken_port = taken.getsockname()[1]
        picks = iter([taken_port])
        monkeypatch.setattr(
            launcher_module, "_free_loopback_port", lambda: next(picks, None) or real_pick()
        )
        server = EmbeddedTriton(tmp_path / "repo", tmp_path / "work", log_path=tmp_path / "t.log")
        asyncio.run(server.start())
    try:
        assert server.running
        assert server.address != f"127.0.0.1:{taken_port}"
        assert "already in use" in (tmp_path / "t.log").read_text()
    finally:
        asyncio.run(server.stop())
    asyncio.run(server.stop())  # a second stop is harmless
    assert not server.running
    assert server.pid is None

    async def after_stop(client: TritonClient) -> None:
        assert not await client.is_ready(timeout=1.0)
        with pytest.raises(Unavailable, match=f"Triton server '{SERVER}' at .* is unreachable"):
            await client.load("add", timeout=2.0)

    with_client(server.address, after_stop)


def test_picked_ports_all_taken_give_up_after_the_bounded_attempts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    picks = []
    with busy_port() as taken:
        taken_port = taken.getsockname()[1]

        def always_taken() -> int:
            picks.append(taken_port)
            return taken_port

        monkeypatch.setattr(launcher_module, "_free_loopback_port", always_taken)
        server = EmbeddedTriton(tmp_path / "repo", tmp_path / "work", log_path=tmp_path / "t.log")
        with pytest.raises(Unavailable, match="already in use") as caught:
            asyncio.run(server.start())
    assert len(picks) == launcher_module._START_ATTEMPTS == 2
    assert "exited during startup" in caught.value.message
    assert (tmp_path / "t.log").read_text().count(" starting: ") == 2
    assert not server.running
    assert server.pid is None


def test_triton_dies_when_its_parent_is_killed(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import asyncio, sys, time
        from pathlib import Path
        from mlserve.triton import EmbeddedTriton
        root = Path(sys.argv[1])
        server = EmbeddedTriton(root / "repo", root / "work", log_path=root / "t.log")
        asyncio.run(server.start())
        print(server.pid, flush=True)
        time.sleep(600)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    with subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, env=env, text=True
    ) as parent:
        try:
            assert parent.stdout is not None
            triton_pid = int(parent.stdout.readline())
        finally:
            parent.kill()
    wait_dead([triton_pid], "Triton outlived its parent")


def wait_dead(pids: list[int], what: str) -> None:
    """Wait (up to 60 s: only a hang takes long) until none of ``pids`` is alive; fail
    naming ``what`` and them."""
    deadline = time.monotonic() + 60
    while left := [pid for pid in pids if process_alive(pid)]:
        assert time.monotonic() < deadline, f"{what}: {left} still alive"
        time.sleep(0.1)


@pytest.mark.parametrize("confined", [True, False], ids=["sandboxed", "unconfined"])
def test_kill_ends_a_stopped_triton_and_its_backend_stubs(tmp_path: Path, confined: bool) -> None:
    # What the supervisor does to a hung Triton: SIGTERM would never be handled.
    write_add_model(tmp_path / "repo", name="add")
    sandbox = Sandbox.find() if confined else Sandbox(None)
    server = EmbeddedTriton(
        tmp_path / "repo", tmp_path / "work", log_path=tmp_path / "t.log", sandbox=sandbox
    )

    async def scenario() -> tuple[list[int], bool, int | None]:
        await server.start()
        try:
            await with_client_async(server.address, lambda c: c.load("add"))
            assert server.pid is not None
            tree = [server.pid, *descendants(server.pid)]
            tritonserver = [pid for pid in tree if command_name(pid) == "tritonserver"]
            assert len(tritonserver) == 1
            assert any(command_name(pid).startswith("triton_python") for pid in tree)
            os.kill(tritonserver[0], signal.SIGSTOP)
            live = await server.is_live(timeout=1.0)
            exit_code = asyncio.ensure_future(server.wait_exit())
            await server.kill()
            return tree, live, await exit_code
        finally:
            await server.stop()

    tree, live, exit_code = asyncio.run(scenario())
    assert not live
    assert exit_code == -signal.SIGKILL  # an exit, not a deliberate stop (that answers None)
    wait_dead(tree, "after kill()")


def command_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def process_alive(pid: int) -> bool:
    # An orphan may linger as a zombie where PID 1 does not reap; that is dead.
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status


# --- the client against the shared server ------------------------------------------------------


def test_ready_and_index(triton: EmbeddedTriton) -> None:
    async def body(client: TritonClient) -> None:
        assert await client.is_ready()
        entries = await client.index()
        assert {"add", "versioned", "broken"} <= {entry.name for entry in entries}

    with_client(triton.address, body)


def test_load_with_config_infer_and_unload(triton: EmbeddedTriton) -> None:
    async def load(client: TritonClient) -> None:
        await client.load("add", config_json=config_json("add"))
        assert states(await client.index(), "add") == {1: "READY"}
        assert await client.model_ready("add")
        assert await client.model_ready("add", 1)

    async def unload(client: TritonClient) -> None:
        await client.unload("add")
        assert states(await client.index(), "add") == {1: "UNAVAILABLE"}
        assert not await client.model_ready("add")

    with_client(triton.address, load)
    assert infer(triton.address, "add") == [11.0, 22.0, 33.0]
    with_client(triton.address, unload)


def test_push_files_for_a_model_outside_the_repository(triton: EmbeddedTriton) -> None:
    files = {"1/model.py": add_model_files(5.0)["model.py"]}

    async def load(client: TritonClient) -> None:
        await client.load("pushed", config_json=config_json("pushed"), files=files)
        assert await client.model_ready("pushed")
        # Triton's index lists repository directories only, never pushed models.
        assert states(await client.index(), "pushed") == {}

    async def unload(client: TritonClient) -> None:
        await client.unload("pushed")
        assert not await client.model_ready("pushed")
        with pytest.raises(NotFound, match="pushed"):
            await client.unload("pushed")

    with_client(triton.address, load)
    assert infer(triton.address, "pushed") == [16.0, 27.0, 38.0]
    with_client(triton.address, unload)


def test_files_without_config_are_refused_before_calling_triton(triton: EmbeddedTriton) -> None:
    async def body(client: TritonClient) -> None:
        with pytest.raises(InvalidArgument, match="config"):
            await client.load("pushed2", files={"1/model.py": b""})
        with pytest.raises(InvalidArgument, match="must not contain"):
            await client.load("pushed2", config_json="{}", files={"../model.py": b""})

    with_client(triton.address, body)


def test_model_failing_at_import_is_failed_precondition(triton: EmbeddedTriton) -> None:
    async def body(client: TritonClient) -> None:
        with pytest.raises(FailedPrecondition) as caught:
            await client.load("broken")
        message = caught.value.message
        assert f"Triton server '{SERVER}' could not load model 'broken'" in message
        assert "boom at import" in message
        assert states(await client.index(), "broken") == {1: "UNAVAILABLE"}
        # One broken model must not make the whole server look down.
        assert await client.is_ready()

    with_client(triton.address, body)


def test_load_of_a_model_triton_cannot_find(triton: EmbeddedTriton) -> None:
    async def body(client: TritonClient) -> None:
        with pytest.raises(FailedPrecondition, match="could not load model 'nowhere'"):
            await client.load("nowhere")

    with_client(triton.address, body)


def test_unload_of_an_unknown_model_is_not_found(triton: EmbeddedTriton) -> None:
    async def body(client: TritonClient) -> None:
        with pytest.raises(NotFound, match=f"Triton server '{SERVER}' has no model 'nowhere'"):
            await client.unload("nowhere")
        assert not await client.model_ready("nowhere")

    with_client(triton.address, body)


def test_version_policy_override_switches_versions(triton: EmbeddedTriton) -> None:
    """Loading with ``specific { versions: [2] }`` unloads version 1 by itself."""

    async def load(client: TritonClient, version: int) -> dict[int, str]:
        await client.load("versioned", config_json=config_json("versioned", versions=(version,)))
        return states(await client.index(), "versioned")

    async def switch(client: TritonClient) -> None:
        assert (await load(client, 1))[1] == "READY"
        after = await load(client, 2)
        # The load returns once version 2 is READY; version 1 is then still
        # UNLOADING, and already refuses requests.
        assert after[2] == "READY"
        assert after[1] in {"UNLOADING", "UNAVAILABLE"}
        assert not await client.model_ready("versioned", 1)
        assert await client.model_ready("versioned", 2)

    with_client(triton.address, switch)
    assert infer(triton.address, "versioned") == [211.0, 222.0, 233.0]
    with pytest.raises(triton_grpc.InferenceServerException, match="not at ready state"):
        infer(triton.address, "versioned", version=1)

    async def cleanup(client: TritonClient) -> None:
        await client.unload("versioned")
        # The Python backend's stub may still be ending (UNLOADING): wait, bounded.
        deadline = time.monotonic() + 60
        while set(states(await client.index(), "versioned").values()) != {"UNAVAILABLE"}:
            assert time.monotonic() < deadline, states(await client.index(), "versioned")
            await asyncio.sleep(0.1)

    with_client(triton.address, cleanup)
