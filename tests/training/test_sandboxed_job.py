"""A training script in the real bubblewrap sandbox: what it may do (read its code,
data and parameters, write its output) and every bad thing it may try, each ending
FAILED with the reason and nothing written outside its output; cancel kills the
whole process group."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from pathlib import Path

import pytest

from mlserve.training.sandboxed import JobLimits, JobResult, JobSpec, Outcome, SandboxedJob
from mlserve.triton.sandbox import Sandbox


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    return Sandbox.find()


def run(
    sandbox: Sandbox,
    tmp_path: Path,
    script: str,
    limits: JobLimits | None = None,
    network: bool = False,
) -> tuple[JobResult, Path]:
    code, data, output = tmp_path / "code", tmp_path / "data", tmp_path / "job" / "output"
    code.mkdir()
    data.mkdir()
    (code / "train.py").write_text(script)
    (data / "train.csv").write_text("x,y\n1,2\n3,4\n")
    spec = JobSpec(
        code,
        "train.py",
        data,
        output,
        {"alpha": 0.5},
        limits or JobLimits(wall_seconds=60),
        network=network,
    )
    return asyncio.run(SandboxedJob(spec, sandbox).run()), output


def test_the_script_reads_its_inputs_and_writes_its_output(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    script = """
import json, os, pathlib
params = json.load(open(os.environ["MLSERVE_PARAMS"]))
rows = pathlib.Path(os.environ["MLSERVE_DATA"], "train.csv").read_text().splitlines()
out = pathlib.Path(os.environ["MLSERVE_OUTPUT"])
(out / "model.json").write_text(json.dumps({"alpha": params["alpha"], "rows": len(rows) - 1}))
print("trained", flush=True)
"""
    result, output = run(sandbox, tmp_path, script)
    assert result.outcome is Outcome.SUCCEEDED, result
    assert json.loads((output / "model.json").read_text()) == {"alpha": 0.5, "rows": 2}
    assert "trained" in result.log


def test_the_environment_is_scrubbed(sandbox: Sandbox, tmp_path: Path) -> None:
    os.environ["MLSERVE_TEST_SECRET"] = "s3cret"
    try:
        result, _ = run(
            sandbox,
            tmp_path,
            "import os, sys; sys.exit(7 if 'MLSERVE_TEST_SECRET' in os.environ else 0)",
        )
    finally:
        del os.environ["MLSERVE_TEST_SECRET"]
    assert result.outcome is Outcome.SUCCEEDED, result


@pytest.mark.parametrize(
    ("script", "reason"),
    [
        ("import sys; sys.exit(3)", "exited with code 3"),
        ("open('/mlserve/data/train.csv', 'a').write('poison')", "Read-only file system"),
        ("open('/mlserve/code/evil.py', 'w').write('x')", "Read-only file system"),
        ("open('/usr/evil', 'w').write('x')", "Read-only file system"),
    ],
    ids=["non-zero-exit", "write-data", "write-code", "write-system"],
)
def test_what_the_sandbox_refuses_fails_the_job_with_the_reason(
    sandbox: Sandbox, tmp_path: Path, script: str, reason: str
) -> None:
    result, output = run(sandbox, tmp_path, script)
    assert result.outcome is Outcome.FAILED
    assert reason in result.reason, result
    assert (tmp_path / "data" / "train.csv").read_text() == "x,y\n1,2\n3,4\n"
    assert sorted(p.name for p in (tmp_path / "code").iterdir()) == ["train.py"]
    assert list(output.iterdir()) == []


def test_no_network_reaches_out(sandbox: Sandbox, tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        port = listener.getsockname()[1]
        script = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=5)"
        result, _ = run(sandbox, tmp_path, script)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing came through
    assert result.outcome is Outcome.FAILED
    assert "exited with code 1" in result.reason
    assert "Error" in result.reason


def test_a_job_given_the_network_reaches_a_loopback_port(sandbox: Sandbox, tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        script = (
            "import socket\n"
            f"with socket.create_connection(('127.0.0.1', {port}), timeout=30) as s:\n"
            "    s.sendall(b'from the job')\n"
        )
        result, _ = run(sandbox, tmp_path, script, network=True)
        listener.settimeout(30)
        accepted, _ = listener.accept()
        with accepted:
            assert accepted.recv(100) == b"from the job"
    assert result.outcome is Outcome.SUCCEEDED, result


def test_mlserves_home_is_not_there(sandbox: Sandbox, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "admin.key").write_text("mls_secret")
    script = f"open({str(home / 'admin.key')!r}).read()"
    result, _ = run(sandbox, tmp_path, script)
    assert result.outcome is Outcome.FAILED
    assert "FileNotFoundError" in result.reason


def test_limits_end_the_job_with_the_limit_named(sandbox: Sandbox, tmp_path: Path) -> None:
    cases = [
        ("x = bytearray(2 * 1024**3)", JobLimits(memory_bytes=1024**3, wall_seconds=60), "memory"),
        ("while True: pass", JobLimits(cpu_seconds=1, wall_seconds=60), "CPU time limit of 1 s"),
        ("import time; time.sleep(600)", JobLimits(wall_seconds=1), "wall-clock limit of 1 s"),
        (
            "import os\nopen(os.environ['MLSERVE_OUTPUT'] + '/big', 'wb').write(b'x' * 2_000_000)",
            JobLimits(file_bytes=1_000_000, wall_seconds=60),
            "file size limit",
        ),
        (
            "import os, time\nfor _ in range(500):\n    if os.fork() == 0:\n        time.sleep(30)",
            JobLimits(processes=20, wall_seconds=60),
            "process limit of 20",
        ),
    ]
    for index, (script, limits, reason) in enumerate(cases):
        folder = tmp_path / str(index)
        folder.mkdir()
        result, _ = run(sandbox, folder, script, limits)
        assert result.outcome is Outcome.FAILED, (script, result)
        assert reason in result.reason, (script, result)


def test_cancel_kills_the_whole_process_group(sandbox: Sandbox, tmp_path: Path) -> None:
    code, data, output = tmp_path / "code", tmp_path / "data", tmp_path / "output"
    code.mkdir()
    data.mkdir()
    (code / "train.py").write_text(
        "import os, time\nos.fork()\nprint('started', flush=True)\ntime.sleep(600)\n"
    )
    started = asyncio.Event()

    async def scenario() -> tuple[JobResult, int]:
        job = SandboxedJob(
            JobSpec(code, "train.py", data, output), sandbox, on_line=lambda _: started.set()
        )
        running = asyncio.create_task(job.run())
        await started.wait()
        assert job._process is not None
        group = job._process.pid
        await job.cancel()
        return await running, group

    result, group = asyncio.run(scenario())
    assert result.outcome is Outcome.CANCELLED
    with pytest.raises(ProcessLookupError):
        os.killpg(group, 0)  # nothing of the group is left when cancel returns
