"""The README, followed literally: every block marked runnable, in the order written,
against a real ``mlserve serve`` with its embedded Triton — once with $MLSERVE_HOME set,
once with only $HOME (the default ~/.mlserve) — so the README cannot drift.

The convention (also at the top of the README's Developing section): a ```sh or
```python block runs when the line right before its fence is ``<!-- runnable -->``;
``<!-- not runnable: REASON -->`` says why one does not; unmarked blocks do not run.
Each block runs in a fresh shell or interpreter, in a scratch folder holding a copy of
``examples/``, with ``.venv/bin`` on PATH and $MLSERVE_ADDRESS naming the test's
server; ``127.0.0.1:50051`` written in a block is replaced by that address, since
several test runs share the machine. A block must set what it uses (``KEY=…``); it may
rely on every earlier runnable block having run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.mlserve import MLServeProcess

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
RUNNABLE = "<!-- runnable -->"
README_ADDRESS = "127.0.0.1:50051"
_FENCE = re.compile(r"^```(\w*)\s*$")

# Over ~20 s each (or a slow module start): `pytest -m "not slow"` leaves them out.
pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Block:
    language: str
    """``sh`` or ``python``."""
    text: str
    line: int
    """Line of the opening fence in README.md, for failure messages."""


def runnable_blocks(markdown: str) -> list[Block]:
    """The ```sh and ```python blocks whose fence follows a ``<!-- runnable -->`` line."""
    lines = markdown.splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        fence = _FENCE.match(lines[index])
        if fence is None:
            index += 1
            continue
        end = next(i for i in range(index + 1, len(lines)) if lines[i].startswith("```"))
        marked = index > 0 and lines[index - 1].strip() == RUNNABLE
        if marked:
            if fence.group(1) not in ("sh", "python"):
                raise AssertionError(f"README.md:{index + 1}: only sh and python blocks run")
            blocks.append(Block(fence.group(1), "\n".join(lines[index + 1 : end]), index + 1))
        index = end + 1
    return blocks


def test_the_marking_finds_the_walkthrough() -> None:
    blocks = runnable_blocks(README.read_text())
    assert len(blocks) >= 6
    assert blocks[0].text.splitlines()[0].startswith("export PATH=")
    assert "mlserve undeploy add" in blocks[-1].text


@dataclass
class Walk:
    """Where the blocks run and with which environment."""

    workdir: Path
    env: dict[str, str]


def _environment(tmp_path: Path, server: MLServeProcess, *, with_home_variable: bool) -> Walk:
    workdir = tmp_path / "clone"
    workdir.mkdir()
    shutil.copytree(ROOT / "examples", workdir / "examples")
    env = {k: v for k, v in os.environ.items() if k not in ("MLSERVE_HOME", "MLSERVE_ADDRESS")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["MLSERVE_ADDRESS"] = server.address
    env["HOME"] = str(tmp_path / "user")
    if with_home_variable:
        env["MLSERVE_HOME"] = str(server.home)
    return Walk(workdir, env)


@pytest.fixture(params=["MLSERVE_HOME set", "only HOME"])
def walk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Walk]:
    with_home_variable = request.param == "MLSERVE_HOME set"
    # Without $MLSERVE_HOME the CLI, grpcurl and Python blocks all look in ~/.mlserve.
    home = tmp_path / "state" if with_home_variable else tmp_path / "user" / ".mlserve"
    server = MLServeProcess(home)
    try:
        server.start()
        yield _environment(tmp_path, server, with_home_variable=with_home_variable)
    finally:
        server.stop()


def _run(block: Block, walk: Walk, address: str) -> subprocess.CompletedProcess[str]:
    text = block.text.replace(README_ADDRESS, address)
    command = (
        ["bash", "-e", "-o", "pipefail", "-c", text]
        if block.language == "sh"
        else [sys.executable, "-c", text]
    )
    return subprocess.run(
        command,
        cwd=walk.workdir,
        env=walk.env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_readme_runs_in_order(walk: Walk) -> None:
    outputs: list[str] = []
    for block in runnable_blocks(README.read_text()):
        done = _run(block, walk, walk.env["MLSERVE_ADDRESS"])
        assert done.returncode == 0, (
            f"README.md:{block.line} ({block.language}) failed with {done.returncode}\n"
            f"--- block ---\n{block.text}\n--- stdout ---\n{done.stdout}\n"
            f"--- stderr ---\n{done.stderr}"
        )
        outputs.append(done.stdout)
    said = "\n".join(outputs)
    assert "already stored as version 1" in said
    assert "[0. 2. 4. 6.]" in said  # the tritonclient snippet's promised answer
    assert "[112. 124. 136. 148.]" in said  # the pipeline's OUT = 2A + B + 100
    pipeline = next(out for out in outputs if "created pipeline chain" in out)
    before, _, deployed = pipeline.partition("deployed version: 1")
    assert before.count("deployed/latest") == 3  # not deployed yet: no version pinned
    assert "deployed/latest" not in deployed  # once deployed, `get` shows the pinned ones
    assert "pre    double   1 " in deployed
