"""The inference log across a process's life, each test with its own MLServe and
Triton: SIGTERM writes what is queued; an unwritable log directory leaves
inference working and reports the log service NOT_SERVING."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2

from mlserve_api.v1 import deployment_pb2, inference_log_pb2
from tests.support.checks import wait_until
from tests.support.mlserve import MLServeProcess, Stubs
from tests.support.models import upload_add

LOG_SERVICE = "mlserve.v1.InferenceLogService"


def _serve(home: Path, *extra: str) -> tuple[MLServeProcess, Stubs]:
    process = MLServeProcess(home, *extra).start()
    stubs = process.stubs()
    upload_add(stubs, "add")
    deployment = deployment_pb2.Deployment(
        model="add",
        logging=inference_log_pb2.LoggingPolicy(mode=inference_log_pb2.LOGGING_MODE_ALL),
    )
    stubs.deployments.CreateDeployment(
        deployment_pb2.CreateDeploymentRequest(wait=True, deployment=deployment),
        metadata=stubs.auth,
    )
    return process, stubs


def _infer(process: MLServeProcess, times: int) -> None:
    client = triton.InferenceServerClient(process.address)
    inputs = [triton.InferInput("INPUT0", [4], "FP32"), triton.InferInput("INPUT1", [4], "FP32")]
    for tensor in inputs:
        tensor.set_data_from_numpy(np.ones(4, dtype=np.float32))
    for _ in range(times):
        result = client.infer("add", inputs, headers={"authorization": f"Bearer {process.key}"})
        assert result.as_numpy("OUTPUT0").tolist() == [2, 2, 2, 2]


def _health(stubs: Stubs, service: str) -> int:
    return int(stubs.health.Check(health_pb2.HealthCheckRequest(service=service)).status)


def test_sigterm_writes_what_is_queued(tmp_path: Path) -> None:
    # A flush interval longer than the test: only the shutdown can have written these.
    process, stubs = _serve(tmp_path / "home", "--log-flush-interval", "3600")
    try:
        _infer(process, 5)
        assert list((tmp_path / "home" / "logs").rglob("*.parquet")) == []
    finally:
        stubs.channel.close()
        assert process.stop() == 0
    table = ds.dataset(tmp_path / "home" / "logs", format="parquet", partitioning="hive").to_table()
    assert table.num_rows == 5
    assert set(table.column("model").to_pylist()) == {"add"}


def test_sigkill_leaves_only_files_readers_can_open(tmp_path: Path) -> None:
    process, stubs = _serve(tmp_path / "home", "--log-flush-interval", "0.05")
    logs = tmp_path / "home" / "logs"
    try:
        for _ in range(20):  # kill while the writer is busy
            _infer(process, 10)
        wait_until(lambda: any(logs.rglob("*.parquet")))
        process.kill()
    finally:
        stubs.channel.close()
        process.stop()
    table = ds.dataset(logs, format="parquet", partitioning="hive").to_table()
    assert 0 < table.num_rows <= 200


def test_an_unwritable_log_directory_keeps_inference_working(tmp_path: Path) -> None:
    process, stubs = _serve(tmp_path / "home", "--log-flush-interval", "0.2")
    logs = tmp_path / "home" / "logs"
    try:
        assert _health(stubs, LOG_SERVICE) == health_pb2.HealthCheckResponse.SERVING
        # A file where the directory was: every write and probe fails, as on a full disk.
        shutil.rmtree(logs)
        logs.write_text("in the way")
        _infer(process, 3)
        wait_until(
            lambda: _health(stubs, LOG_SERVICE) == health_pb2.HealthCheckResponse.NOT_SERVING
        )
        assert _health(stubs, "") == health_pb2.HealthCheckResponse.SERVING
        assert (
            _health(stubs, "inference.GRPCInferenceService")
            == health_pb2.HealthCheckResponse.SERVING
        )
        # The writer marks the log unwritable, then logs why: the health answer can
        # come between the two, so wait for the line before counting it.
        failure = "the inference log cannot write"
        wait_until(lambda: failure in process.log.read_text())
        assert process.log.read_text().count(failure) == 1  # once a minute, not per call
        logs.unlink()
        wait_until(lambda: _health(stubs, LOG_SERVICE) == health_pb2.HealthCheckResponse.SERVING)
        _infer(process, 1)
        wait_until(lambda: any(logs.rglob("*.parquet")))
    finally:
        stubs.channel.close()
        process.stop()
