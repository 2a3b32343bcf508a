"""The Node and Go clients (clients/node, clients/go) against one real MLServe
with its Triton and a real OIDC issuer: `node --test` runs clients/node/test/
and `go test` clients/go/mlserve; each signs in with a key and with a token,
resumes an interrupted upload, downloads, deploys and infers through the gateway.
Go builds offline in GOPATH mode from Debian's Go sources (/usr/share/gocode)."""

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
GOCODE = Path("/usr/share/gocode/src")
GO_MODULE = "github.com/mlserve/mlserve"  # the Go import path of this repository


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, issuer: Issuer) -> Iterator[MLServeProcess]:
    process = MLServeProcess(tmp_path_factory.mktemp("node-client"), *trusting(issuer))
    try:
        yield process.start()
    finally:
        process.stop()


def client_environment(
    server: MLServeProcess, issuer: Issuer, work: Path, language: str
) -> dict[str, str]:
    """What the client tests read: where MLServe is, a key, a token, a model name and folder."""
    example = work / "add"
    shutil.copytree(ROOT / "examples" / "add", example)
    (example / "1" / "weights.bin").write_bytes(os.urandom(5 * 1024 * 1024))
    return {
        **os.environ,
        "MLSERVE_ADDRESS": server.address,
        "MLSERVE_KEY": server.key,
        "MLSERVE_TOKEN": issuer.token(f"{language}-{PID}"),
        "MLSERVE_MODEL": f"{language}-add-{PID}",
        "MLSERVE_EXAMPLE": str(example),
    }


def go_build_cache(tmp_path: Path) -> str:
    """Go's own build cache (``$GOCACHE``, else ``~/.cache/go-build``): compiling
    Debian's grpc-go and protobuf-go afresh took about a minute a run. Go keys
    the cache by the sources' content and locks it for concurrent builds, so a
    warm cache changes how long the build takes, never what it builds. Without
    a home (and so no cache) a fresh one in the test's folder."""
    if os.environ.get("GOCACHE"):
        return os.environ["GOCACHE"]
    home = os.environ.get("XDG_CACHE_HOME") or (
        str(Path.home() / ".cache") if os.environ.get("HOME") else ""
    )
    return str(Path(home) / "go-build") if home else str(tmp_path / "gocache")


def run(command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
    )


def test_the_node_client_walks_through_against_mlserve_and_triton(
    server: MLServeProcess, issuer: Issuer, tmp_path: Path
) -> None:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("node and npm are needed: apt-get install nodejs npm")
    if not (NODE_CLIENT / "node_modules").exists():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_CLIENT, check=True)
    env = client_environment(server, issuer, tmp_path, "node")
    result = run([node, "--test", "test/"], NODE_CLIENT, env)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "# pass 2" in result.stdout, result.stdout[-4000:]


@pytest.mark.slow  # over ~20 s
# Compiling Debian's grpc-go and protobuf-go with a cold build cache takes about a
# minute on a quiet machine, several on a busy one: more than the suite's 300 s.
@pytest.mark.timeout(900)
def test_the_go_client_walks_through_against_mlserve_and_triton(
    server: MLServeProcess, issuer: Issuer, tmp_path: Path
) -> None:
    go = shutil.which("go")
    if go is None or not GOCODE.is_dir():
        pytest.fail("Go is needed: scripts/ensure_go.sh installs Debian's (make test runs it)")
    gopath = tmp_path / "gopath"
    (gopath / "src" / GO_MODULE).parent.mkdir(parents=True)
    (gopath / "src" / GO_MODULE).symlink_to(ROOT)
    env = client_environment(server, issuer, tmp_path, "go")
    env.update(
        GOPATH=f"{gopath}:{GOCODE.parent}", GO111MODULE="off", GOPROXY="off", GOFLAGS="",
        GOCACHE=go_build_cache(tmp_path),
    )  # fmt: skip
    result = run([go, "test", "-v", "-count=1", f"{GO_MODULE}/clients/go/mlserve"], ROOT, env)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert result.stdout.count("--- PASS") == 2, result.stdout[-4000:]
