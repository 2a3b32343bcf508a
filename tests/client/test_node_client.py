"""The Node client (clients/node) against a real MLServe with its Triton and a
real OIDC issuer: `node --test` runs clients/node/test/, which signs in with a
key and with a token, resumes an interrupted upload, downloads, deploys and
infers through the gateway."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.issuer import Issuer, trusting
from tests.support.mlserve import MLServeProcess
from tests.support.users import PID

ROOT = Path(__file__).resolve().parents[2]
NODE_CLIENT = ROOT / "clients" / "node"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, issuer: Issuer) -> Iterator[MLServeProcess]:
    process = MLServeProcess(tmp_path_factory.mktemp("node-client"), *trusting(issuer))
    try:
        yield process.start()
    finally:
        process.stop()


def test_the_node_client_walks_through_against_mlserve_and_triton(
    server: MLServeProcess, issuer: Issuer, tmp_path: Path
) -> None:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("node and npm are needed: apt-get install nodejs npm")
    if not (NODE_CLIENT / "node_modules").exists():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_CLIENT, check=True)
    example = tmp_path / "add"
    shutil.copytree(ROOT / "examples" / "add", example)
    (example / "1" / "weights.bin").write_bytes(os.urandom(5 * 1024 * 1024))
    env = {
        **os.environ,
        "MLSERVE_ADDRESS": server.address,
        "MLSERVE_KEY": server.key,
        "MLSERVE_TOKEN": issuer.token(f"node-{PID}"),
        "MLSERVE_MODEL": f"node-add-{PID}",
        "MLSERVE_EXAMPLE": str(example),
    }
    result = subprocess.run(
        [node, "--test", "test/"],
        cwd=NODE_CLIENT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "# pass 2" in result.stdout, result.stdout[-4000:]
