"""Faults survived: a server killed mid-upload, concurrent uploads, and a
graceful stop that takes the embedded Triton with it. Real processes only."""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from mlserve_api.v1 import model_pb2
from tests.support.checks import delete_model_quietly, download, wait_until
from tests.support.mlserve import MLServeProcess, Stubs
from tests.support.procfs import triton_pid
from tests.support.uploading import Request, chunk, header, stream

MiB = 1024 * 1024

# Over ~20 s each (or a slow module start): `pytest -m "not slow"` leaves them out.
pytestmark = pytest.mark.slow


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_sigkill_mid_upload_then_resume(tmp_path: Path) -> None:
    home = tmp_path / "home"
    server = MLServeProcess(home, "--no-embedded-triton").start(wait_for_triton=False)
    restarted: MLServeProcess | None = None
    try:
        data = os.urandom(24 * MiB)
        files = {"weights.bin": data, "model.py": b"# killed mid-upload\n"}
        upload_id = "killed-upload"
        stubs = server.stubs()
        sent_before_kill = 10

        def killing() -> Iterator[Request]:
            yield header("survivor", files, upload_id=upload_id)
            for index, offset in enumerate(range(0, len(data), MiB)):
                if index == sent_before_kill:
                    # Let the server take in what was sent, then kill it without warning.
                    staged = home / "staging" / upload_id / "weights.bin"
                    deadline = time.monotonic() + 60
                    while time.monotonic() < deadline and (
                        not staged.exists() or staged.stat().st_size < MiB
                    ):
                        time.sleep(0.02)
                    server.kill()
                    return
                yield chunk("weights.bin", offset, data[offset : offset + MiB])

        with pytest.raises(grpc.RpcError) as interrupted:
            stubs.models.UploadModelVersion(killing(), metadata=stubs.auth, timeout=60)
        assert interrupted.value.code() == grpc.StatusCode.UNAVAILABLE
        stubs.channel.close()
        assert server.process is not None
        assert server.process.wait(30) == -9  # killed, not stopped

        restarted = MLServeProcess(home, "--no-embedded-triton", port=server.port)
        restarted.start(wait_for_triton=False)
        stubs = restarted.stubs()
        status = stubs.models.GetUpload(
            model_pb2.GetUploadRequest(upload_id=upload_id), metadata=stubs.auth
        )
        staged = home / "staging" / upload_id / "weights.bin"
        received = {f.path: f.received_bytes for f in status.files}
        assert status.state == model_pb2.UPLOAD_STATE_RECEIVING
        assert 0 < received["weights.bin"] <= sent_before_kill * MiB
        assert received["weights.bin"] == staged.stat().st_size
        assert status.received_bytes == sum(received.values())
        assert staged.read_bytes() == data[: received["weights.bin"]]
        # No half version was ever listed.
        models = stubs.models.ListModels(model_pb2.ListModelsRequest(), metadata=stubs.auth)
        assert list(models.models) == []
        assert list((home / "repository").iterdir()) == []

        def resume() -> Iterator[Request]:
            yield header("survivor", files, upload_id=upload_id)
            for path, content in sorted(files.items()):
                for offset in range(received[path], len(content), MiB):
                    yield chunk(path, offset, content[offset : offset + MiB])

        version = stubs.models.UploadModelVersion(resume(), metadata=stubs.auth, timeout=120)
        assert (version.model, version.version) == ("survivor", 1)
        assert {f.path: f.sha256 for f in version.files} == {p: sha(d) for p, d in files.items()}
        assert version.size_bytes == sum(len(d) for d in files.values())
        listed = stubs.models.ListModelVersions(
            model_pb2.ListModelVersionsRequest(model="survivor"), metadata=stubs.auth
        )
        assert [v.version for v in listed.versions] == [1]
        assert download(stubs, "survivor") == files
        assert not (home / "staging" / upload_id).exists()
        stubs.channel.close()
    finally:
        server.kill()
        if restarted is not None:
            assert restarted.stop() == 0


def test_two_clients_upload_versions_of_one_model_at_once(stubs: Stubs, model_name: str) -> None:
    contents = [
        {"model.py": f"# client {i}\n".encode(), "weights.bin": os.urandom(2 * MiB)}
        for i in range(2)
    ]
    both_started = threading.Barrier(2, timeout=60)

    def client_stream(files: dict[str, bytes]) -> Iterator[Request]:
        yield header(model_name, files)
        yield chunk("model.py", 0, files["model.py"])
        both_started.wait()
        data = files["weights.bin"]
        for offset in range(0, len(data), MiB):
            yield chunk("weights.bin", offset, data[offset : offset + MiB])

    with ThreadPoolExecutor(2) as pool:
        futures = [
            pool.submit(
                stubs.models.UploadModelVersion,
                client_stream(files),
                metadata=stubs.auth,
                timeout=120,
            )
            for files in contents
        ]
        versions = [future.result() for future in futures]
    assert {v.version for v in versions} == {1, 2}
    for version, files in zip(versions, contents, strict=True):
        assert download(stubs, model_name, version.version) == files
    listed = stubs.models.ListModelVersions(
        model_pb2.ListModelVersionsRequest(model=model_name), metadata=stubs.auth
    )
    assert [v.version for v in listed.versions] == [1, 2]
    delete_model_quietly(stubs, model_name)


def test_twenty_concurrent_uploads_of_different_models(stubs: Stubs, model_name: str) -> None:
    names = [f"{model_name}-{i:02d}" for i in range(20)]
    contents = {
        name: {
            "model.py": f"# {name}\n".encode(),
            "weights.bin": os.urandom(MiB + 1000 * i),
        }
        for i, name in enumerate(names)
    }

    def upload_one(name: str) -> model_pb2.ModelVersion:
        result: model_pb2.ModelVersion = stubs.models.UploadModelVersion(
            stream(name, contents[name], size=256 * 1024), metadata=stubs.auth, timeout=120
        )
        return result

    try:
        with ThreadPoolExecutor(20) as pool:
            versions = dict(zip(names, pool.map(upload_one, names), strict=True))
        for name in names:
            assert versions[name].version == 1
            assert download(stubs, name) == contents[name]
        listed = stubs.models.ListModels(
            model_pb2.ListModelsRequest(name_prefix=f"{model_name}-"), metadata=stubs.auth
        )
        assert [m.name for m in listed.models] == names
        assert all(m.version_count == 1 for m in listed.models)
    finally:
        for name in names:
            delete_model_quietly(stubs, name)


def _gone(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


def test_sigterm_stops_gracefully_with_its_triton(tmp_path: Path) -> None:
    server = MLServeProcess(tmp_path / "home").start()
    try:
        assert server.process is not None
        triton = triton_pid(server.process.pid)
        server.process.terminate()
        # Graceful: nothing is in flight, so it stops with Triton well within the
        # bound (which is only there for a stop that hangs, on a loaded machine).
        code = server.process.wait(120)
        assert code == 0, (server.home / "mlserve.log").read_text()[-3000:]
        deadline = time.monotonic() + 30
        while not _gone(triton):
            assert time.monotonic() < deadline, f"Triton (pid {triton}) outlived MLServe"
            time.sleep(0.1)
        log = (server.home / "mlserve.log").read_text()
        assert "embedded Triton stopped" in log
    finally:
        with contextlib.suppress(Exception):
            server.kill()


def test_sigterm_lets_an_inflight_upload_finish_and_keep_its_bytes(tmp_path: Path) -> None:
    home = tmp_path / "home"
    # A grace period that a loaded machine cannot outrun: the stream must end by itself.
    server = MLServeProcess(home, "--no-embedded-triton", "--shutdown-grace", "60")
    server.start(wait_for_triton=False)
    restarted: MLServeProcess | None = None
    try:
        data = os.urandom(8 * MiB)
        files = {"weights.bin": data, "model.py": b"# in flight\n"}
        upload_id = "in-flight"
        stubs = server.stubs()
        release = threading.Event()

        def held_open() -> Iterator[Request]:
            yield header("inflight", files, upload_id=upload_id)
            for offset in range(0, 3 * MiB, MiB):
                yield chunk("weights.bin", offset, data[offset : offset + MiB])
            release.wait(60)
            for offset in range(3 * MiB, 5 * MiB, MiB):
                yield chunk("weights.bin", offset, data[offset : offset + MiB])

        call = stubs.models.UploadModelVersion.future(held_open(), metadata=stubs.auth, timeout=60)
        staged = home / "staging" / upload_id / "weights.bin"
        deadline = time.monotonic() + 30
        while not staged.exists() or staged.stat().st_size < 3 * MiB:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert server.process is not None
        server.process.terminate()
        # Shutdown has begun while the stream is open (its first step says so).
        wait_until(lambda: "shutting down: in-flight calls" in server.log.read_text(), 60)
        release.set()
        with pytest.raises(grpc.RpcError) as incomplete:
            call.result(timeout=60)
        # The stream ran to its end within the grace period and was judged on its bytes.
        assert incomplete.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert server.process.wait(90) == 0
        stubs.channel.close()

        restarted = MLServeProcess(home, "--no-embedded-triton", port=server.port)
        restarted.start(wait_for_triton=False)
        stubs = restarted.stubs()
        status = stubs.models.GetUpload(
            model_pb2.GetUploadRequest(upload_id=upload_id), metadata=stubs.auth
        )
        assert {f.path: f.received_bytes for f in status.files}["weights.bin"] == 5 * MiB
        version = stubs.models.UploadModelVersion(
            stream("inflight", files, upload_id=upload_id), metadata=stubs.auth, timeout=60
        )
        assert version.version == 1
        assert download(stubs, "inflight") == files
        stubs.channel.close()
    finally:
        server.kill()
        if restarted is not None:
            assert restarted.stop() == 0
