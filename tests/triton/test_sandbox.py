"""Model code run by the embedded Triton cannot reach MLServe's secrets.

An editor's Python model is arbitrary code. Here a model tries, as an
attacker would, every read and write the sandbox must stop — admin.key, the
database, the blob store, staging, the TLS key, MLServe's environment
(through ``os.environ`` and every ``/proc/*/environ``), writes into the home
and the repository — and returns, as its output, what each attempt got. Each
must fail inside the model, while its scratch space (``/tmp``) works, and
MLServe's files must be byte-identical afterwards.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc

from mlserve.core.errors import FailedPrecondition
from mlserve.triton.launcher import EmbeddedTriton
from mlserve.triton.sandbox import PASSED_VARIABLES, UNSAFE_FLAG, Sandbox
from mlserve_api.v1 import server_pb2
from tests.server.test_tls import make_certificate
from tests.support.mlserve import MLServeProcess, Stubs
from tests.support.tritons import deploy, remove_model
from tests.support.uploading import stream

pytestmark = pytest.mark.integration

# Set in MLServe's environment only; the model must never see it.
FAKE_SECRET = "fake-secret-7c1d0e5f9b"
SECRET_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "PGPASSWORD", "MLSERVE_TEST_DATABASE_URL")

_PROBE_CONFIG = """
backend: "python"
max_batch_size: 0
input [ { name: "DUMMY" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "REPORT" data_type: TYPE_STRING dims: [ 1 ] } ]
instance_group [ { kind: KIND_CPU count: 1 } ]
"""

# Runs in initialize(), as soon as Triton loads it; execute() returns the report.
_PROBE_MODEL = """\
import glob
import asyncio
import hashlib
import json
import os

import grpc
import numpy as np
import triton_python_backend_utils as pb_utils

READS = {reads!r}
LISTINGS = {listings!r}
WRITES = {writes!r}
SECRET = {secret!r}


def attempt(action):
    try:
        return "ok: " + str(action())[:300]
    except Exception as exc:
        return "error: " + type(exc).__name__


def read(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def write(path):
    with open(path, "a") as handle:
        handle.write("written by model code")
    return "written"


def variables(path):
    with open(path, "rb") as handle:
        entries = handle.read().split(b"\\0")
    return sorted(entry.split(b"=")[0].decode() for entry in entries if entry)


def environs_with_secret():
    found = []
    for path in glob.glob("/proc/*/environ"):
        try:
            with open(path, "rb") as handle:
                if SECRET.encode() in handle.read():
                    found.append(path)
        except OSError:
            pass
    return found


class TritonPythonModel:
    def initialize(self, args):
        report = {{}}
        for name, path in READS.items():
            report["read " + name] = attempt(lambda: read(path))
        for name, path in LISTINGS.items():
            report["list " + name] = attempt(lambda: sorted(os.listdir(path)))
        for name, path in WRITES.items():
            report["write " + name] = attempt(lambda: write(path))
        report["environ files holding the secret"] = environs_with_secret()
        report["/proc/1/environ"] = variables("/proc/1/environ")
        report["os.environ holding the secret"] = sorted(
            name for name, value in os.environ.items() if SECRET in value
        )
        report["scratch"] = attempt(lambda: write("/tmp/scratch.txt"))
        report["uid"] = os.getuid()
        self.report = json.dumps(report)

    def execute(self, requests):
        report = np.array([self.report.encode()], dtype=np.object_)
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor("REPORT", report)]) for _ in requests
        ]
"""


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLServeProcess]:
    """An MLServe serving TLS, with fake secrets in its environment, and a staged upload."""
    home = tmp_path_factory.mktemp("sandbox-home")
    cert, key = make_certificate(home)
    process = MLServeProcess(home, "--tls-cert", str(cert), "--tls-key", str(key), ca=cert)
    with pytest.MonkeyPatch.context() as environment:
        for name in SECRET_VARIABLES:
            environment.setenv(name, FAKE_SECRET)
        process.start()
    try:
        yield process
    finally:
        process.stop()


def probe_files(home: Path, model: str, mlserve_pid: int) -> dict[str, bytes]:
    repository = home / "repository"
    source = _PROBE_MODEL.format(
        reads={
            "admin.key": str(home / "admin.key"),
            "database": str(home / "mlserve.db"),
            "tls key": str(home / "key.pem"),
            "a blob": str(_any_blob(home)),
            "MLServe's environ": f"/proc/{mlserve_pid}/environ",
        },
        listings={
            "home": str(home),
            "blobs": str(home / "blobs"),
            "staging": str(home / "staging"),
        },
        writes={
            "home": str(home / "written-by-model"),
            "admin.key": str(home / "admin.key"),
            "repository": str(repository / "written-by-model"),
            "own model.py": str(repository / model / "1" / "model.py"),
        },
        secret=FAKE_SECRET,
    )
    return {"model.py": source.encode()}


def _any_blob(home: Path) -> Path:
    return next(path for path in (home / "blobs").rglob("*") if path.is_file())


def fingerprints(home: Path) -> dict[str, str]:
    """sha256 of every file MLServe keeps, except the live database and logs."""
    skipped = {"mlserve.db", "mlserve.db-wal", "mlserve.db-shm", "mlserve.log", "triton.log"}
    return {
        str(path.relative_to(home)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(home.rglob("*"))
        if path.is_file() and not path.is_symlink() and path.name not in skipped
    }


def upload_and_deploy(stubs: Stubs, model: str, files: dict[str, bytes]) -> None:
    version = stubs.models.UploadModelVersion(
        stream(model, files, config=_PROBE_CONFIG), metadata=stubs.auth, timeout=120
    )
    assert version.version == 1
    deploy(stubs, model)


def report_of(guarded: MLServeProcess, model: str) -> dict[str, object]:
    assert guarded.ca is not None
    client = triton_grpc.InferenceServerClient(
        guarded.address, ssl=True, root_certificates=str(guarded.ca)
    )
    dummy = triton_grpc.InferInput("DUMMY", [1], "INT32")
    dummy.set_data_from_numpy(np.zeros(1, dtype=np.int32))
    headers = {"authorization": f"Bearer {guarded.key}"}
    result = client.infer(model, [dummy], headers=headers)
    client.close()
    report: dict[str, object] = json.loads(result.as_numpy("REPORT")[0])
    return report


def test_model_code_reads_and_writes_nothing_of_mlserve(guarded: MLServeProcess) -> None:
    stubs = guarded.stubs()
    model = "sandbox-probe"
    # Something in the blob store and in staging before the probe runs.
    stubs.models.UploadModelVersion(
        stream("sandbox-bystander", {"model.py": b"# bystander\n"}, config='backend: "python"'),
        metadata=stubs.auth,
        timeout=120,
    )
    interrupted = [*stream("sandbox-staged", {"model.py": b"x" * 10}, upload_id="staged")][:1]
    with pytest.raises(grpc.RpcError):  # incomplete: kept in staging for a resume
        stubs.models.UploadModelVersion(iter(interrupted), metadata=stubs.auth, timeout=60)
    assert (guarded.home / "staging").exists()
    assert guarded.process is not None
    files = probe_files(guarded.home, model, guarded.process.pid)
    before = fingerprints(guarded.home)
    try:
        upload_and_deploy(stubs, model, files)
        before |= {  # the probe's own version, now committed
            name: digest
            for name, digest in fingerprints(guarded.home).items()
            if name.startswith((f"repository/{model}/", "blobs/"))
        }
        report = report_of(guarded, model)
    finally:
        remove_model(stubs, model)
        remove_model(stubs, "sandbox-bystander")
        stubs.channel.close()

    for name, outcome in report.items():
        if name.startswith(("read ", "list ", "write ")):
            assert str(outcome).startswith("error: "), f"model code could {name}: {outcome}"
    assert report["environ files holding the secret"] == []
    assert report["os.environ holding the secret"] == []
    # /proc/1 is Triton itself, with its allow-listed environment (and the
    # PWD bubblewrap sets for --chdir).
    init_environment = set(report["/proc/1/environ"])  # type: ignore[call-overload]
    assert {"HOME", "LD_LIBRARY_PATH", "PATH"} <= init_environment
    assert init_environment <= {"HOME", "LD_LIBRARY_PATH", "PATH", "PWD", *PASSED_VARIABLES}
    assert report["scratch"] == "ok: written", "the model's own /tmp must be writable"
    assert report["uid"] == 65534
    after = fingerprints(guarded.home)
    assert {k: v for k, v in after.items() if k in before} == {
        k: v for k, v in before.items() if k in after
    }
    assert not (guarded.home / "written-by-model").exists()
    assert not (guarded.home / "repository" / "written-by-model").exists()


# --- without a sandbox -------------------------------------------------------


def _path_without_bwrap(tmp_path: Path) -> str:
    # The interpreter is started by absolute path; only bwrap must be missing.
    empty = tmp_path / "bin"
    empty.mkdir()
    return str(empty)


def test_no_bubblewrap_is_refused_unless_unsafe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", _path_without_bwrap(tmp_path))
    with pytest.raises(FailedPrecondition) as refusal:
        Sandbox.find()
    assert UNSAFE_FLAG in str(refusal.value)
    assert "bubblewrap" in str(refusal.value)
    unconfined = Sandbox.find(unsafe_shared_user=True)
    assert not unconfined.confined
    assert unconfined.wrap(
        ["tritonserver", "--x"], placed={"repository": tmp_path}, read_only=[tmp_path]
    ) == ["tritonserver", "--x"]


def test_serve_without_a_sandbox_exits_and_writes_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {**os.environ, "PATH": _path_without_bwrap(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "mlserve", "--home", str(home), "serve", "--listen", "127.0.0.1:0"],
        capture_output=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    message = result.stderr.decode()
    assert "refusing to start the embedded Triton without a sandbox" in message
    assert UNSAFE_FLAG in message
    assert "Traceback" not in message
    assert not home.exists()


def test_unsafe_shared_user_starts_the_embedded_triton(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", _path_without_bwrap(tmp_path))
    process = MLServeProcess(tmp_path / "home", UNSAFE_FLAG)
    try:
        process.start()  # waits until the embedded Triton serves
        log = process.log.read_text()
        assert "the embedded Triton runs unconfined" in log
        stubs = process.stubs()
        servers = stubs.servers.ListServers(
            server_pb2.ListServersRequest(),
            metadata=stubs.auth,
            timeout=30,
        )
        assert [server.name for server in servers.servers] == ["local"]
        stubs.channel.close()
    finally:
        process.stop()


def test_stop_reaches_triton_itself_so_it_stops_gracefully(tmp_path: Path) -> None:
    # SIGTERM to bubblewrap would kill it, and Triton with it by SIGKILL.
    triton = EmbeddedTriton(tmp_path / "repository", tmp_path / "work", log_path=tmp_path / "log")
    asyncio.run(triton.start())
    asyncio.run(triton.stop())
    log = (tmp_path / "log").read_text()
    assert "--as-pid-1" in log  # the command line logged: it ran sandboxed
    assert "Signal (15) received" in log
    assert "Waiting for in-flight requests to complete" in log
