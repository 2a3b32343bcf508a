"""The example's training job (examples/diabetes) through MLServe against the same
script run by hand, side by side, in rounds.

- by hand: ``python examples/diabetes/train.py`` with $MLSERVE_DATA, $MLSERVE_OUTPUT
  and $MLSERVE_PARAMS set, from start to exit;
- MLServe: ``CreateTrainingJob`` until ``WatchTrainingJob`` reports SUCCEEDED, i.e. a
  committed, deployable version (the job's sandbox, copying the code and dataset
  in, the run itself, and committing the output through the upload machinery).

MLServe runs without its embedded Triton (the job needs only the sandbox).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import RESULTS_DIR, MLServeProcess, Report, Table
from mlserve_api.v1 import model_pb2, training_pb2
from mlserve_client import Client

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "diabetes"
MODEL, DATASET = "bench-diabetes", "bench-diabetes-data"
DEFAULT_ROUNDS = 5


def run(rounds: int = DEFAULT_ROUNDS) -> Report:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="training-", dir=RESULTS_DIR))
    try:
        by_hand, through = measure(work, rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    hand, job = statistics.median(by_hand), statistics.median(through)
    table = Table(
        ["way", "median s", "min s", "max s", "vs by hand"],
        [
            ["by hand", f"{hand:.2f}", f"{min(by_hand):.2f}", f"{max(by_hand):.2f}", "1.00"],
            ["MLServe job", f"{job:.2f}", f"{min(through):.2f}", f"{max(through):.2f}",
             f"{job / hand:.2f}"],
        ],
    )  # fmt: skip
    return Report(
        "training: examples/diabetes as a job vs by hand",
        [table],
        [f"{rounds} interleaved rounds; a job ends at a committed, deployable version"],
    )


def by_hand_once(data: Path, output: Path) -> float:
    shutil.rmtree(output, ignore_errors=True)
    output.mkdir(parents=True)
    params = output.parent / "params.json"
    params.write_text("{}")
    env = {**os.environ, "MLSERVE_DATA": str(data), "MLSERVE_OUTPUT": str(output),
           "MLSERVE_PARAMS": str(params)}  # fmt: skip
    began = time.perf_counter()
    subprocess.run([sys.executable, str(EXAMPLE / "train.py")], env=env, check=True)
    return time.perf_counter() - began


def measure(work: Path, rounds: int) -> tuple[list[float], list[float]]:
    data = work / "data"
    data.mkdir()
    csv = data / "diabetes.csv"
    subprocess.run([sys.executable, str(EXAMPLE / "make_data.py"), str(csv)], check=True)
    server = MLServeProcess(work / "home", "--no-embedded-triton")
    server.start(wait_for_triton=False)
    try:
        with Client(server.address, server.key) as client:
            client.create_dataset(DATASET)
            client.upload_dataset(DATASET, [csv])
            by_hand_once(data, work / "v1")
            client.upload(work / "v1", MODEL)
            script = (EXAMPLE / "train.py").read_bytes()
            manifest = model_pb2.FileManifest(
                path="train.py", size=len(script), sha256=hashlib.sha256(script).hexdigest()
            )
            client.models.UploadArtifact(
                iter([
                    model_pb2.UploadArtifactRequest(header=model_pb2.ArtifactUploadHeader(
                        model=MODEL, version=1, kind=model_pb2.ARTIFACT_KIND_CODE, file=manifest)),
                    model_pb2.UploadArtifactRequest(
                        chunk=model_pb2.FileChunk(path="train.py", offset=0, data=script)),
                ])
            )  # fmt: skip
            by_hand, through = [], []
            for _ in range(rounds):
                by_hand.append(by_hand_once(data, work / "by-hand"))
                began = time.perf_counter()
                job = client.train(MODEL, "train.py", DATASET, code_version=1)
                done = client.follow_training(job.id)
                through.append(time.perf_counter() - began)
                if done.state != training_pb2.TRAINING_JOB_STATE_SUCCEEDED:
                    raise RuntimeError(f"the job failed: {done.reason}")
    finally:
        server.stop()
    return by_hand, through
