"""TrainingService against a real MLServe: a job trains the next model version from a
code artifact and a dataset version (with lineage), streams its log, and every bad
script or request ends with its reason or exact code and nothing committed."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import grpc
import pytest

from mlserve_api.v1 import dataset_pb2, model_pb2, training_pb2
from tests.support.checks import delete_model_quietly, expect_error, version_numbers
from tests.support.commands import mlserve_cli
from tests.support.mlserve import MLServeProcess, Stubs
from tests.support.uploading import stream, upload

Code = grpc.StatusCode
CSV = b"x,y\n1,3\n2,5\n3,7\n"
TRAIN = b"""
import csv, json, os, pathlib
rows = list(csv.DictReader(open(pathlib.Path(os.environ["MLSERVE_DATA"], "train.csv"))))
params = json.load(open(os.environ["MLSERVE_PARAMS"]))
slope = (float(rows[-1]["y"]) - float(rows[0]["y"])) / (float(rows[-1]["x"]) - float(rows[0]["x"]))
out = pathlib.Path(os.environ["MLSERVE_OUTPUT"])
(out / "model.py").write_text(f"# slope {slope} note {params['note']}\\n")
(out / "metrics.json").write_text(json.dumps({"slope": slope}))
print("fitted", slope, flush=True)
"""


def attach_code(stubs: Stubs, model: str, path: str, script: bytes) -> None:
    manifest = model_pb2.FileManifest(
        path=path, size=len(script), sha256=hashlib.sha256(script).hexdigest()
    )
    messages = [
        model_pb2.UploadArtifactRequest(
            header=model_pb2.ArtifactUploadHeader(
                model=model, version=1, kind=model_pb2.ARTIFACT_KIND_CODE, file=manifest
            )
        ),
        model_pb2.UploadArtifactRequest(
            chunk=model_pb2.FileChunk(path=path, offset=0, data=script)
        ),
    ]
    stubs.models.UploadArtifact(iter(messages), metadata=stubs.auth, timeout=60)


@pytest.fixture
def trainable(stubs: Stubs, model_name: str) -> Iterator[tuple[str, str]]:
    """A model with version 1 and code artifacts, and a dataset with one CSV version."""
    upload(stubs, stream(model_name, {"model.py": b"# untrained\n"}))
    attach_code(stubs, model_name, "train.py", TRAIN)
    attach_code(stubs, model_name, "fails.py", b"import sys\nprint('bad data')\nsys.exit(3)\n")
    attach_code(
        stubs, model_name, "slow.py", b"import time\nprint('go', flush=True)\ntime.sleep(600)\n"
    )
    attach_code(stubs, model_name, "notes.txt", b"not code")
    dataset = "train-ds-" + model_name
    stubs.datasets.CreateDataset(
        dataset_pb2.CreateDatasetRequest(dataset=dataset_pb2.Dataset(name=dataset)),
        metadata=stubs.auth,
    )
    data = {"train.csv": CSV}
    header = dataset_pb2.UploadDatasetVersionRequest(
        header=dataset_pb2.DatasetUploadHeader(
            dataset=dataset,
            files=[
                model_pb2.FileManifest(
                    path="train.csv", size=len(CSV), sha256=hashlib.sha256(CSV).hexdigest()
                )
            ],
        )
    )
    chunk = dataset_pb2.UploadDatasetVersionRequest(
        chunk=model_pb2.FileChunk(path="train.csv", offset=0, data=data["train.csv"])
    )
    stubs.datasets.UploadDatasetVersion(iter([header, chunk]), metadata=stubs.auth, timeout=60)
    yield model_name, dataset
    delete_model_quietly(stubs, model_name)
    stubs.datasets.DeleteDataset(
        dataset_pb2.DeleteDatasetRequest(name=dataset), metadata=stubs.auth
    )


def create(
    stubs: Stubs, model: str, dataset: str, code_path: str, **params: str
) -> training_pb2.TrainingJob:
    job = training_pb2.TrainingJob(
        model=model,
        code_version=1,
        code_path=code_path,
        training_dataset=model_pb2.DatasetVersionRef(dataset=dataset),
        parameters=params,
    )
    return stubs.training.CreateTrainingJob(
        training_pb2.CreateTrainingJobRequest(job=job), metadata=stubs.auth
    )


def watch(stubs: Stubs, job_id: str) -> tuple[list[str], training_pb2.TrainingJob]:
    lines, last = [], None
    for event in stubs.training.WatchTrainingJob(
        training_pb2.WatchTrainingJobRequest(id=job_id), metadata=stubs.auth, timeout=120
    ):
        if event.HasField("log_line"):
            lines.append(event.log_line)
        else:
            last = event.job
    assert last is not None
    return lines, last


def test_a_job_trains_the_next_version_with_its_lineage(
    stubs: Stubs, trainable: tuple[str, str]
) -> None:
    model, dataset = trainable
    job = create(stubs, model, dataset, "train.py", note="first")
    lines, done = watch(stubs, job.id)
    assert done.state == training_pb2.TRAINING_JOB_STATE_SUCCEEDED, done.reason
    assert "fitted 2.0" in lines
    assert done.version == 2
    assert done.metrics["slope"] == 2.0
    assert done.code_sha256 == hashlib.sha256(TRAIN).hexdigest()
    assert done.dataset_sha256
    version = stubs.models.GetModelVersion(
        model_pb2.GetModelVersionRequest(model=model, version=2), metadata=stubs.auth
    )
    assert version.training_dataset.dataset == dataset
    assert version.training_dataset.version == 1
    assert [f.path for f in version.files] == ["model.py"]
    again = watch(stubs, create(stubs, model, dataset, "train.py", note="first").id)[1]
    assert again.version == 2  # identical output: the existing version
    listed = stubs.training.ListTrainingJobs(
        training_pb2.ListTrainingJobsRequest(model=model), metadata=stubs.auth
    )
    assert [j.id for j in listed.jobs] == [again.id, job.id]


def test_a_failing_script_ends_failed_with_its_reason_and_commits_nothing(
    stubs: Stubs, trainable: tuple[str, str]
) -> None:
    model, dataset = trainable
    lines, done = watch(stubs, create(stubs, model, dataset, "fails.py").id)
    assert done.state == training_pb2.TRAINING_JOB_STATE_FAILED
    assert done.reason == "exited with code 3: bad data"
    assert "bad data" in lines
    assert done.version == 0
    assert version_numbers(stubs, model) == [1]


def test_cancel_ends_a_running_job(stubs: Stubs, trainable: tuple[str, str]) -> None:
    model, dataset = trainable
    job = create(stubs, model, dataset, "slow.py")
    events = stubs.training.WatchTrainingJob(
        training_pb2.WatchTrainingJobRequest(id=job.id), metadata=stubs.auth, timeout=120
    )
    for event in events:
        if event.log_line == "go":
            break
    cancelled = stubs.training.CancelTrainingJob(
        training_pb2.CancelTrainingJobRequest(id=job.id), metadata=stubs.auth
    )
    assert cancelled.state == training_pb2.TRAINING_JOB_STATE_CANCELLED
    assert version_numbers(stubs, model) == [1]


def test_bad_requests_get_their_codes(stubs: Stubs, trainable: tuple[str, str]) -> None:
    model, dataset = trainable
    expect_error(Code.NOT_FOUND, create, stubs, model, dataset, "missing.py")
    expect_error(Code.INVALID_ARGUMENT, create, stubs, model, dataset, "notes.txt")
    expect_error(Code.NOT_FOUND, create, stubs, model, "no-such-dataset-" + dataset, "train.py")
    expect_error(Code.NOT_FOUND, create, stubs, "no-such-model-" + model, dataset, "train.py")
    expect_error(
        Code.NOT_FOUND,
        stubs.training.GetTrainingJob,
        training_pb2.GetTrainingJobRequest(id="job-nope"),
        metadata=stubs.auth,
    )
    assert version_numbers(stubs, model) == [1]


def test_the_cli_runs_follows_lists_and_cancels(
    mlserve: MLServeProcess, stubs: Stubs, trainable: tuple[str, str]
) -> None:
    model, dataset = trainable
    ran = mlserve_cli(
        mlserve, "training", "run", model, "train.py", "--dataset", dataset,
        "--param", "note=cli", "--follow",
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert "fitted 2.0" in ran.stdout
    assert "SUCCEEDED -> version 2" in ran.stdout
    failed = mlserve_cli(
        mlserve, "training", "run", model, "fails.py", "--dataset", dataset, "--follow",
        "--code-version", "1",
    )  # fmt: skip
    assert failed.returncode == 1
    assert "FAILED: exited with code 3: bad data" in failed.stdout
    listed = mlserve_cli(mlserve, "training", "list", "--model", model)
    assert "SUCCEEDED" in listed.stdout
    assert "FAILED" in listed.stdout
    missing = mlserve_cli(mlserve, "training", "cancel", "job-nope")
    assert missing.returncode != 0
    assert "does not exist" in missing.stderr
