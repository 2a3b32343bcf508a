"""The user's path through the CLI and the Python client, against a real
MLServe and Triton: upload (interrupted, then resumed), deploy, list, undeploy."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import grpc
import pytest

from mlserve_api.v1 import model_pb2
from mlserve_client import Client
from tests.support.commands import mlserve_cli
from tests.support.mlserve import MLServeProcess

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_upload_deploy_list_undeploy_from_the_shell(
    mlserve: MLServeProcess, tmp_path: Path, model_name: str
) -> None:
    model_dir = tmp_path / "add"
    shutil.copytree(EXAMPLES / "add", model_dir)

    uploaded = mlserve_cli(mlserve, "models", "upload", str(model_dir), "--name", model_name)
    assert uploaded.returncode == 0, uploaded.stderr
    assert f"model {model_name} version 1" in uploaded.stdout

    deployed = mlserve_cli(mlserve, "deploy", model_name)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert "READY" in deployed.stdout

    servers = mlserve_cli(mlserve, "servers", "list")
    assert servers.returncode == 0, servers.stderr
    local = next(line for line in servers.stdout.splitlines() if line.startswith("local"))
    assert "READY" in local
    assert f"{model_name}:1" in local

    listed = mlserve_cli(mlserve, "models", "list")
    assert model_name in listed.stdout

    undeployed = mlserve_cli(mlserve, "undeploy", model_name)
    assert undeployed.returncode == 0, undeployed.stderr
    again = mlserve_cli(mlserve, "undeploy", model_name)
    assert again.returncode == 1
    assert "NOT_FOUND" in again.stderr


class Interrupted(Exception):
    """Raised from the progress callback, it cancels the upload like a dropped connection."""


def test_interrupted_upload_resumes_with_only_the_rest(
    mlserve: MLServeProcess, tmp_path: Path, model_name: str
) -> None:
    folder = tmp_path / "flat"
    folder.mkdir()
    (folder / "model.py").write_text("# weights beside me\n")
    (folder / "weights.bin").write_bytes(os.urandom(9 * 1024 * 1024))

    def stop_after_first_chunk(done: int, total: int) -> None:
        if done > 0:
            raise Interrupted

    with Client(mlserve.address, mlserve.key) as client:
        with pytest.raises(grpc.RpcError):  # the call is cancelled mid-stream
            client.upload(
                folder, model_name, chunk_size=1024 * 1024, progress=stop_after_first_chunk
            )
        listed = client.models.ListModels(model_pb2.ListModelsRequest(name_prefix=model_name))
        assert not [m for m in listed.models if m.latest_version]  # no half version, ever

    resumed = mlserve_cli(mlserve, "models", "upload", str(folder), "--name", model_name)
    assert resumed.returncode == 0, resumed.stderr
    assert f"model {model_name} version 1" in resumed.stdout

    with Client(mlserve.address, mlserve.key) as client:
        upload_id = client.models.GetModelVersion(
            model_pb2.GetModelVersionRequest(model=model_name, version=1)
        ).upload_id
        upload = client.models.GetUpload(model_pb2.GetUploadRequest(upload_id=upload_id))
        assert upload.state == model_pb2.UPLOAD_STATE_COMMITTED
        downloaded = tmp_path / "back"
        client.download(model_name, 1, downloaded)
    assert (downloaded / "weights.bin").read_bytes() == (folder / "weights.bin").read_bytes()


def test_resume_sends_only_missing_bytes(
    mlserve: MLServeProcess, tmp_path: Path, model_name: str
) -> None:
    folder = tmp_path / "flat"
    folder.mkdir()
    (folder / "model.py").write_text("# x\n")
    (folder / "blob.bin").write_bytes(os.urandom(6 * 1024 * 1024))
    upload_id = f"resume-{model_name}"
    seen: list[int] = []

    with Client(mlserve.address, mlserve.key) as client:

        def received() -> int:
            request = model_pb2.GetUploadRequest(upload_id=upload_id)
            return int(client.models.GetUpload(request).received_bytes)

        def stop_once_the_server_has_some(done: int, total: int) -> None:
            if done >= total // 2:
                deadline = time.monotonic() + 60  # only for a server that never records it
                while received() < 1024 * 1024 and time.monotonic() < deadline:
                    time.sleep(0.05)
                raise Interrupted

        with pytest.raises(grpc.RpcError):
            client.upload(
                folder, model_name, upload_id=upload_id, chunk_size=1024 * 1024,
                progress=stop_once_the_server_has_some,
            )  # fmt: skip
        kept = received()
        assert kept >= 1024 * 1024
        version = client.upload(
            folder, model_name, upload_id=upload_id, chunk_size=1024 * 1024,
            progress=lambda done, total: seen.append(done),
        )  # fmt: skip
    assert version.version == 1
    assert seen[0] >= kept, "the resumed upload sent bytes the server already had"
    assert seen[-1] == 6 * 1024 * 1024 + 4
