"""TrainingService against a real MLServe: a job trains the next model version from a
code artifact and a dataset version (with lineage), streams its log, and every bad
script or request ends with its reason or exact code and nothing committed."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from mlserve.training.sandboxed import TRUNCATED_MARK, JobLimits
from mlserve_api.v1 import dataset_pb2, model_pb2, training_pb2
from tests.support.checks import delete_model_quietly, expect_error, version_numbers
from tests.support.commands import grpcurl, mlserve_cli
from tests.support.mlserve import MLServeProcess, Stubs
from tests.support.training import (
    CSV,
    SLOW,
    TRAIN,
    attach_artifact,
    create,
    job_ids,
    make_dataset,
    make_trainable,
    watch,
)
from tests.support.users import PID, make_user

Code = grpc.StatusCode
NUMPY = importlib.metadata.version("numpy")
ENV = model_pb2.ARTIFACT_KIND_ENV
ENVS = {
    "env-ok.txt": f"# what train.py needs\nnumpy=={NUMPY}  # pinned\nscikit-learn\n"
    'no-such-package-mlserve; python_version < "3"\n',
    "env-missing.txt": "numpy\nno-such-package-mlserve>=1\n",
    "env-old.txt": "numpy<1\n",
    "env-option.txt": "-r other.txt\n",
    "env-url.txt": "numpy @ https://example.com/numpy.whl\n",
    "env-garbage.txt": "numpy>=>1\n",
}
# A hostile log: one 1 MiB line, then 100,000 lines, then exit 3.
FLOOD = (
    b"import sys\nsys.stdout.write('x' * 1024 * 1024 + '\\n')\n"
    b"for n in range(100_000):\n    print(n)\nprint('flooded')\nsys.exit(3)\n"
)


@pytest.fixture
def trainable(stubs: Stubs, model_name: str) -> Iterator[tuple[str, str]]:
    """A model with version 1, code and env artifacts, and a dataset with one CSV version."""
    dataset = make_trainable(
        stubs,
        model_name,
        {
            "train.py": TRAIN,
            "fails.py": b"import sys\nprint('bad data')\nsys.exit(3)\n",
            "slow.py": SLOW,
            "flood.py": FLOOD,
            "notes.txt": b"not code",
        },
    )
    for path, text in ENVS.items():
        attach_artifact(stubs, model_name, path, text.encode(), ENV)
    attach_artifact(stubs, model_name, "env-big.txt", b"numpy\n" * 20_000, ENV)
    yield model_name, dataset
    delete_model_quietly(stubs, model_name)
    stubs.datasets.DeleteDataset(
        dataset_pb2.DeleteDatasetRequest(name=dataset), metadata=stubs.auth
    )


def nothing_committed(stubs: Stubs, mlserve: MLServeProcess, model: str, jobs: list[str]) -> None:
    """No new version, no new job, no job folder left behind."""
    assert version_numbers(stubs, model) == [1]
    assert job_ids(stubs, model) == jobs
    folders = Path(mlserve.home, "training")
    assert not folders.exists() or sorted(p.name for p in folders.iterdir()) == []


def test_a_job_trains_the_next_version_with_its_lineage(
    stubs: Stubs, trainable: tuple[str, str]
) -> None:
    model, dataset = trainable
    job = create(stubs, model, dataset, "train.py", parameters={"note": "first"})
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
    again = watch(
        stubs, create(stubs, model, dataset, "train.py", parameters={"note": "first"}).id
    )[1]
    assert again.version == 2  # identical output: the existing version
    assert job_ids(stubs, model) == [again.id, job.id]
    got = stubs.training.GetTrainingJob(
        training_pb2.GetTrainingJobRequest(id=job.id), metadata=stubs.auth
    )
    assert (got.state, got.version, got.parameters, got.metrics) == (
        done.state, 2, {"note": "first"}, {"slope": 2.0},
    )  # fmt: skip
    assert got.start_time.seconds
    assert got.end_time.seconds
    assert got.instance


@pytest.mark.parametrize(
    ("script", "last_line"),
    [("fails.py", "bad data"), ("flood.py", "flooded")],
    ids=["exit", "flood"],
)
def test_a_failing_script_ends_failed_with_its_reason_and_commits_nothing(
    stubs: Stubs, trainable: tuple[str, str], script: str, last_line: str
) -> None:
    model, dataset = trainable
    lines, done = watch(stubs, create(stubs, model, dataset, script).id)
    assert done.state == training_pb2.TRAINING_JOB_STATE_FAILED
    assert done.reason == f"exited with code 3: {last_line}"
    # Streamed, each line within the cap (a flood's watcher that falls behind skips lines).
    cap = JobLimits().log_line_bytes  # the default
    longest = cap + len(TRUNCATED_MARK.format(cap=cap))
    assert lines
    assert max(len(line) for line in lines) <= longest
    assert done.version == 0
    assert version_numbers(stubs, model) == [1]


def test_cancel_ends_a_running_job(stubs: Stubs, trainable: tuple[str, str]) -> None:
    model, dataset = trainable
    job = create(stubs, model, dataset, "slow.py")
    events = stubs.training.WatchTrainingJob(
        training_pb2.WatchTrainingJobRequest(id=job.id), metadata=stubs.auth, timeout=120
    )
    try:
        for event in events:
            if event.log_line == "go":
                break
    finally:
        events.cancel()
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
    failures = mlserve_cli(mlserve, "training", "list", "--model", model, "--state", "failed")
    assert "FAILED" in failures.stdout
    assert "SUCCEEDED" not in failures.stdout
    placed = mlserve_cli(
        mlserve, "training", "run", model, "train.py", "--dataset", dataset, "--param",
        "note=env", "--env", "env-ok.txt", "--label", "local", "--follow", "--code-version", "1",
    )  # fmt: skip
    assert placed.returncode == 0, placed.stderr
    for flags, says in [
        (["--label", "gpu"], "no training runner has the label 'gpu'"),
        (["--network"], "--training-allow-network"),
        (["--env", "env-old.txt"], "is not met"),
    ]:
        refused = mlserve_cli(
            mlserve, "training", "run", model, "train.py", "--dataset", dataset,
            "--code-version", "1", *flags,
        )  # fmt: skip
        assert refused.returncode != 0
        assert says in refused.stderr
    missing = mlserve_cli(mlserve, "training", "cancel", "job-nope")
    assert missing.returncode != 0
    assert "does not exist" in missing.stderr


def json_messages(text: str) -> list[dict[str, Any]]:
    """grpcurl's output of a server stream: JSON objects one after another."""
    decoder, messages, at = json.JSONDecoder(), [], 0
    while text[at:].strip():
        at += len(text[at:]) - len(text[at:].lstrip())
        message, at = decoder.raw_decode(text, at)
        messages.append(message)
    return messages


def test_grpcurl_creates_watches_lists_and_gets_jobs_by_reflection(
    mlserve: MLServeProcess, trainable: tuple[str, str]
) -> None:
    model, dataset = trainable
    service = "mlserve.v1.TrainingService/"
    job = {
        "model": model, "codeVersion": 1, "codePath": "train.py",
        "trainingDataset": {"dataset": dataset}, "parameters": {"note": "grpcurl"},
    }  # fmt: skip
    made = grpcurl(
        mlserve, "-d", json.dumps({"job": job}), mlserve.address, service + "CreateTrainingJob"
    )
    assert made.returncode == 0, made.stderr
    job_id = json.loads(made.stdout)["id"]
    watched = grpcurl(
        mlserve, "-d", json.dumps({"id": job_id}), mlserve.address, service + "WatchTrainingJob"
    )
    assert watched.returncode == 0, watched.stderr
    # The job may well have ended before grpcurl started: a finished job's watch is
    # its stored log, then its final state.
    messages = json_messages(watched.stdout)
    assert {"logLine": "fitted 2.0"} in messages
    final = messages[-1]["job"]
    assert (final["state"], final["version"]) == ("TRAINING_JOB_STATE_SUCCEEDED", "2")
    assert final["metrics"] == {"slope": 2}
    listed = grpcurl(
        mlserve, "-d", json.dumps({"model": model}), mlserve.address, service + "ListTrainingJobs"
    )
    assert [found["id"] for found in json.loads(listed.stdout)["jobs"]] == [job_id]
    missing = grpcurl(
        mlserve, "-d", json.dumps({"id": "job-nope"}), mlserve.address, service + "GetTrainingJob"
    )
    assert missing.returncode != 0
    assert "Code: NotFound" in missing.stderr
    assert "does not exist" in missing.stderr


def test_an_env_artifacts_requirements_are_checked_and_recorded(
    stubs: Stubs, trainable: tuple[str, str]
) -> None:
    model, dataset = trainable
    job = create(
        stubs, model, dataset, "train.py", parameters={"note": "env"}, env_path="env-ok.txt"
    )
    assert list(job.env_requirements) == [
        f"numpy=={NUMPY}",
        "scikit-learn",
        'no-such-package-mlserve; python_version < "3"',  # its marker drops it here
    ]
    assert job.env_sha256 == hashlib.sha256(ENVS["env-ok.txt"].encode()).hexdigest()
    done = watch(stubs, job.id)[1]
    assert done.state == training_pb2.TRAINING_JOB_STATE_SUCCEEDED, done.reason
    assert done.env_path == "env-ok.txt"
    assert list(done.env_requirements) == list(job.env_requirements)


@pytest.mark.parametrize(
    ("env_path", "code", "says"),
    [
        ("env-missing.txt", Code.FAILED_PRECONDITION, "'no-such-package-mlserve>=1'"),
        (
            "env-old.txt",
            Code.FAILED_PRECONDITION,
            f"'numpy<1' of env artifact 'env-old.txt' is not met: the training runner has "
            f"numpy {NUMPY}",
        ),
        ("env-option.txt", Code.INVALID_ARGUMENT, "line 1: '-r other.txt' is a pip option"),
        ("env-url.txt", Code.INVALID_ARGUMENT, "names a URL"),
        ("env-garbage.txt", Code.INVALID_ARGUMENT, "line 1: 'numpy>=>1' is not a requirement"),
        ("env-big.txt", Code.INVALID_ARGUMENT, "more than 65536"),
        ("no-such-env.txt", Code.NOT_FOUND, "no artifact 'no-such-env.txt'"),
        ("notes.txt", Code.INVALID_ARGUMENT, "of kind 'code', not 'env'"),
    ],
    ids=["missing", "old", "option", "url", "garbage", "big", "absent", "wrong-kind"],
)
def test_an_env_the_runner_does_not_meet_is_refused_at_create(
    stubs: Stubs,
    mlserve: MLServeProcess,
    trainable: tuple[str, str],
    env_path: str,
    code: grpc.StatusCode,
    says: str,
) -> None:
    model, dataset = trainable
    error = expect_error(code, create, stubs, model, dataset, "train.py", env_path=env_path)
    assert says in error.details()
    nothing_committed(stubs, mlserve, model, [])


def test_runner_labels_place_a_job_or_refuse_it(
    stubs: Stubs, mlserve: MLServeProcess, trainable: tuple[str, str]
) -> None:
    model, dataset = trainable
    error = expect_error(
        Code.FAILED_PRECONDITION, create, stubs, model, dataset, "train.py",
        runner_labels=["local", "gpu"],
    )  # fmt: skip
    assert "no training runner has the label 'gpu'" in error.details()
    assert "has: local" in error.details()
    expect_error(
        Code.INVALID_ARGUMENT, create, stubs, model, dataset, "train.py", runner_labels=[" "]
    )
    nothing_committed(stubs, mlserve, model, [])
    placed = create(
        stubs, model, dataset, "train.py", parameters={"note": "x"}, runner_labels=["local"]
    )
    assert list(placed.runner_labels) == ["local"]
    assert watch(stubs, placed.id)[1].state == training_pb2.TRAINING_JOB_STATE_SUCCEEDED


def test_network_is_refused_unless_the_admin_allows_it(
    stubs: Stubs, mlserve: MLServeProcess, trainable: tuple[str, str]
) -> None:
    model, dataset = trainable
    error = expect_error(
        Code.FAILED_PRECONDITION, create, stubs, model, dataset, "train.py", network=True
    )
    assert "--training-allow-network" in error.details()
    nothing_committed(stubs, mlserve, model, [])


def test_jobs_are_listed_in_pages_by_model_and_state(
    stubs: Stubs, trainable: tuple[str, str]
) -> None:
    model, dataset = trainable
    jobs = [create(stubs, model, dataset, "fails.py").id for _ in range(3)]
    for job_id in jobs:
        watch(stubs, job_id)
    newest_first = list(reversed(jobs))
    assert job_ids(stubs, model) == newest_first
    assert job_ids(stubs, model, state=training_pb2.TRAINING_JOB_STATE_FAILED) == newest_first
    assert job_ids(stubs, model, state=training_pb2.TRAINING_JOB_STATE_SUCCEEDED) == []
    assert set(jobs) <= set(job_ids(stubs))  # every visible model's jobs
    first = stubs.training.ListTrainingJobs(
        training_pb2.ListTrainingJobsRequest(model=model, page_size=1), metadata=stubs.auth
    )
    token = first.next_page_token
    assert [j.id for j in first.jobs] == newest_first[:1]
    assert token

    def listing(**fields: object) -> training_pb2.ListTrainingJobsResponse:
        request = training_pb2.ListTrainingJobsRequest(**fields)  # type: ignore[arg-type]
        return stubs.training.ListTrainingJobs(request, metadata=stubs.auth)

    tampered = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    expect_error(Code.INVALID_ARGUMENT, listing, model=model, page_size=1, page_token=tampered)
    expect_error(Code.INVALID_ARGUMENT, listing, page_size=1, page_token=token)  # other filter
    expect_error(Code.INVALID_ARGUMENT, listing, model=model, page_size=-1)
    expect_error(Code.INVALID_ARGUMENT, listing, model=model, state=99)
    expect_error(Code.NOT_FOUND, listing, model="no-such-model-" + model)


def test_a_private_models_jobs_answer_not_found_to_other_workspaces(
    stubs: Stubs, trainable: tuple[str, str], model_name: str
) -> None:
    model, dataset = trainable
    job = create(stubs, model, dataset, "fails.py")
    watch(stubs, job.id)
    outsider = make_user(stubs, f"train-outsider-{PID}-{len(model_name)}", "editor")
    missing = expect_error(
        Code.NOT_FOUND,
        outsider.training.GetTrainingJob,
        training_pb2.GetTrainingJobRequest(id="job-0000000000000000"),
        metadata=outsider.auth,
    )
    for call, request in [
        (outsider.training.GetTrainingJob, training_pb2.GetTrainingJobRequest(id=job.id)),
        (outsider.training.CancelTrainingJob, training_pb2.CancelTrainingJobRequest(id=job.id)),
        (outsider.training.WatchTrainingJob, training_pb2.WatchTrainingJobRequest(id=job.id)),
    ]:
        hidden = expect_error(Code.NOT_FOUND, call, request, metadata=outsider.auth)
        assert hidden.details().replace(job.id, "X") == missing.details().replace(
            "job-0000000000000000", "X"
        )
    expect_error(
        Code.NOT_FOUND,
        outsider.training.ListTrainingJobs,
        training_pb2.ListTrainingJobsRequest(model=model),
        metadata=outsider.auth,
    )
    assert job.id not in job_ids(outsider)
    expect_error(Code.NOT_FOUND, create, outsider, model, dataset, "train.py")
    assert job_ids(stubs, model) == [job.id]


HELPER = b"def slope(rows):\n    return (rows[-1][1] - rows[0][1]) / (rows[-1][0] - rows[0][0])\n"
FROM_DATASET = b"""
import csv, json, os, pathlib
from lib.fit import slope
rows = [(float(r["x"]), float(r["y"])) for r in csv.DictReader(
    open(pathlib.Path(os.environ["MLSERVE_DATA"], "train.csv")))]
out = pathlib.Path(os.environ["MLSERVE_OUTPUT"])
(out / "model.py").write_text(f"# slope {slope(rows)} from a dataset's script\\n")
(out / "metrics.json").write_text(json.dumps({"slope": slope(rows)}))
"""


@pytest.fixture
def code_dataset(stubs: Stubs, model_name: str) -> Iterator[str]:
    """A dataset holding a training script, the module it imports, and a table."""
    name = "code-ds-" + model_name
    version = make_dataset(
        stubs,
        name,
        {"train.py": FROM_DATASET, "lib/__init__.py": b"", "lib/fit.py": HELPER, "t.csv": CSV},
    )
    # The schema is the table's; the scripts are kept unread.
    assert [column.name for column in version.columns] == ["x", "y"]
    assert version.row_count == 3
    yield name
    stubs.datasets.DeleteDataset(dataset_pb2.DeleteDatasetRequest(name=name), metadata=stubs.auth)


def from_dataset(
    stubs: Stubs, model: str, dataset: str, source: str, code_path: str = "train.py", **fields: Any
) -> training_pb2.TrainingJob:
    job = training_pb2.TrainingJob(
        model=model,
        code_path=code_path,
        code_dataset=model_pb2.DatasetVersionRef(dataset=source),
        training_dataset=model_pb2.DatasetVersionRef(dataset=dataset),
        **fields,
    )
    return stubs.training.CreateTrainingJob(
        training_pb2.CreateTrainingJobRequest(job=job), metadata=stubs.auth
    )


def test_the_script_may_come_from_a_dataset(
    stubs: Stubs, trainable: tuple[str, str], code_dataset: str
) -> None:
    model, dataset = trainable
    job = from_dataset(stubs, model, dataset, code_dataset)
    assert (job.code_dataset.dataset, job.code_dataset.version) == (code_dataset, 1)
    assert job.code_sha256 == hashlib.sha256(FROM_DATASET).hexdigest()
    assert job.code_version == 0
    done = watch(stubs, job.id)[1]
    assert done.state == training_pb2.TRAINING_JOB_STATE_SUCCEEDED, done.reason
    assert (done.version, done.metrics["slope"]) == (2, 2.0)


def test_bad_code_datasets_get_their_codes(
    stubs: Stubs, mlserve: MLServeProcess, trainable: tuple[str, str], code_dataset: str
) -> None:
    model, dataset = trainable
    cases: list[tuple[grpc.StatusCode, dict[str, Any], str]] = [
        (Code.INVALID_ARGUMENT, {"code_version": 1}, "not both"),
        (Code.INVALID_ARGUMENT, {"env_path": "env-ok.txt"}, "drop env_path"),
        (Code.NOT_FOUND, {"code_path": "lib/missing.py"}, "has no script 'lib/missing.py'"),
        (Code.NOT_FOUND, {"code_path": "t.py"}, "it has: lib/__init__.py, lib/fit.py, train.py"),
        (Code.INVALID_ARGUMENT, {"code_path": "t.csv"}, "not a Python script"),
    ]
    for code, fields, says in cases:
        error = expect_error(code, from_dataset, stubs, model, dataset, code_dataset, **fields)
        assert says in error.details(), fields
    expect_error(Code.NOT_FOUND, from_dataset, stubs, model, dataset, "no-such-" + code_dataset)
    nothing_committed(stubs, mlserve, model, [])


def test_a_code_dataset_the_caller_may_not_see_is_not_found(
    stubs: Stubs, code_dataset: str, model_name: str
) -> None:
    outsider = make_user(stubs, f"train-coder-{PID}-{len(model_name)}", "editor")
    own = "own-" + model_name
    dataset = make_trainable(outsider, own, {})
    try:
        error = expect_error(Code.NOT_FOUND, from_dataset, outsider, own, dataset, code_dataset)
        missing = expect_error(
            Code.NOT_FOUND, from_dataset, outsider, own, dataset, "no-such-" + code_dataset
        )
        assert error.details().replace(code_dataset, "X") == missing.details().replace(
            "no-such-" + code_dataset, "X"
        )
        assert version_numbers(outsider, own) == [1]
        assert job_ids(outsider, own) == []
    finally:
        delete_model_quietly(outsider, own)
        outsider.datasets.DeleteDataset(
            dataset_pb2.DeleteDatasetRequest(name=dataset), metadata=outsider.auth
        )
