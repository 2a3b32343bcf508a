"""Training jobs for tests: a model with code and env artifacts, a dataset, and the
calls that create, watch and list jobs."""

from __future__ import annotations

import hashlib
from typing import Any

from mlserve_api.v1 import dataset_pb2, model_pb2, training_pb2
from tests.support.mlserve import Stubs
from tests.support.uploading import stream, upload

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
SLOW = b"import time\nprint('go', flush=True)\ntime.sleep(600)\n"


def attach_artifact(
    stubs: Stubs,
    model: str,
    path: str,
    content: bytes,
    kind: model_pb2.ArtifactKind.ValueType = model_pb2.ARTIFACT_KIND_CODE,
) -> None:
    """Attach ``content`` to version 1 of ``model`` as artifact ``path`` of ``kind``."""
    manifest = model_pb2.FileManifest(
        path=path, size=len(content), sha256=hashlib.sha256(content).hexdigest()
    )
    messages = [
        model_pb2.UploadArtifactRequest(
            header=model_pb2.ArtifactUploadHeader(model=model, version=1, kind=kind, file=manifest)
        ),
        model_pb2.UploadArtifactRequest(
            chunk=model_pb2.FileChunk(path=path, offset=0, data=content)
        ),
    ]
    stubs.models.UploadArtifact(iter(messages), metadata=stubs.auth, timeout=60)


def attach_code(stubs: Stubs, model: str, path: str, script: bytes) -> None:
    attach_artifact(stubs, model, path, script)


def make_dataset(
    stubs: Stubs, dataset: str, files: dict[str, bytes] | None = None
) -> dataset_pb2.DatasetVersion:
    """Dataset ``dataset`` with one version of ``files`` (default: ``train.csv``)."""
    files = {"train.csv": CSV} if files is None else files
    stubs.datasets.CreateDataset(
        dataset_pb2.CreateDatasetRequest(dataset=dataset_pb2.Dataset(name=dataset)),
        metadata=stubs.auth,
    )
    header = dataset_pb2.UploadDatasetVersionRequest(
        header=dataset_pb2.DatasetUploadHeader(
            dataset=dataset,
            files=[
                model_pb2.FileManifest(
                    path=path, size=len(data), sha256=hashlib.sha256(data).hexdigest()
                )
                for path, data in files.items()
            ],
        )
    )
    chunks = [
        dataset_pb2.UploadDatasetVersionRequest(
            chunk=model_pb2.FileChunk(path=path, offset=0, data=data)
        )
        for path, data in files.items()
    ]
    return stubs.datasets.UploadDatasetVersion(
        iter([header, *chunks]), metadata=stubs.auth, timeout=60
    )


def make_trainable(stubs: Stubs, model: str, scripts: dict[str, bytes]) -> str:
    """``model`` at version 1 with ``scripts`` as code artifacts, and a dataset for it
    (its name returned)."""
    upload(stubs, stream(model, {"model.py": b"# untrained\n"}))
    for path, script in scripts.items():
        attach_code(stubs, model, path, script)
    dataset = "train-ds-" + model
    make_dataset(stubs, dataset)
    return dataset


def create(
    stubs: Stubs, model: str, dataset: str, code_path: str, **fields: Any
) -> training_pb2.TrainingJob:
    """CreateTrainingJob of ``code_path`` (version 1) on ``dataset``; ``fields`` are more
    TrainingJob fields (parameters, env_path, runner_labels, network)."""
    job = training_pb2.TrainingJob(
        model=model,
        code_version=1,
        code_path=code_path,
        training_dataset=model_pb2.DatasetVersionRef(dataset=dataset),
        **fields,
    )
    return stubs.training.CreateTrainingJob(
        training_pb2.CreateTrainingJobRequest(job=job), metadata=stubs.auth
    )


def watch(stubs: Stubs, job_id: str) -> tuple[list[str], training_pb2.TrainingJob]:
    """The job's log lines and its final state (watched to its end)."""
    lines, last = [], None
    events = stubs.training.WatchTrainingJob(
        training_pb2.WatchTrainingJobRequest(id=job_id), metadata=stubs.auth, timeout=120
    )
    try:
        for event in events:
            if event.HasField("log_line"):
                lines.append(event.log_line)
            else:
                last = event.job
    finally:
        events.cancel()  # a failing read must not leave the stream open
    assert last is not None
    return lines, last


def wait_running(stubs: Stubs, job_id: str) -> None:
    """Return once the job printed its first line (it runs)."""
    events = stubs.training.WatchTrainingJob(
        training_pb2.WatchTrainingJobRequest(id=job_id), metadata=stubs.auth, timeout=120
    )
    try:
        for event in events:
            if event.HasField("log_line"):
                return
    finally:
        events.cancel()  # the job runs on: stop watching it here
    raise AssertionError(f"job {job_id} ended before it printed")


def job_ids(stubs: Stubs, model: str = "", **filters: Any) -> list[str]:
    """Every job of ``model`` (all visible ones when empty), newest first, by pages of 2."""
    ids, token = [], ""
    while True:
        page = stubs.training.ListTrainingJobs(
            training_pb2.ListTrainingJobsRequest(
                model=model, page_size=2, page_token=token, **filters
            ),
            metadata=stubs.auth,
        )
        ids += [job.id for job in page.jobs]
        if not page.next_page_token:
            return ids
        token = page.next_page_token
