"""Training jobs in the database, on SQLite and PostgreSQL: stored and found again,
listed newest first in tamper-evident keyset pages filtered by model and state,
hidden with their model, ended FAILED when their instance restarts, and deleted
with their model."""

from __future__ import annotations

import dataclasses

import peewee as pw
import pytest

from mlserve.access import current_principal, rules
from mlserve.core.errors import InvalidArgument, NotFound
from mlserve.core.paging import PageTokens
from mlserve.storage import tables
from mlserve.training import store
from mlserve.training.runner import JobState
from mlserve.training.store import TrainingJobRecord

TOKENS = PageTokens(b"training-job-store-test")


def job(job_id: str, model: str, instance: str = "here") -> TrainingJobRecord:
    return TrainingJobRecord(
        job_id=job_id,
        model=model,
        code_version=1,
        code_path="train.py",
        dataset="ds",
        dataset_version=1,
        instance=instance,
        parameters={"alpha": "0.5"},
        env_requirements=["numpy>=1"],
        runner_labels=["cpu"],
    )


@pytest.fixture
def two_models(store_db: pw.Database) -> tuple[object, object]:
    """A private model of workspace "ann" and a private one of workspace "bob"."""
    ann = tables.Workspace.create(name="ann")
    bob = tables.Workspace.create(name="bob")
    return (
        tables.Model.create(name="anns", workspace=ann),
        tables.Model.create(name="bobs", workspace=bob),
    )


def as_bob() -> object:
    bob = tables.Workspace.get(tables.Workspace.name == "bob")
    return current_principal.set(
        rules.Principal("b", "bob", "editor", workspaces={bob.id: "owner"})
    )


def every_page(model: str = "", state: JobState | None = None, size: int = 2) -> list[str]:
    ids, token = [], ""
    while True:
        page = store.list_jobs(TOKENS, model, state, size, token)
        ids += [record.job_id for record in page.items]
        if not page.next_page_token:
            return ids
        token = page.next_page_token


def test_jobs_are_stored_found_and_paged_newest_first(two_models: tuple[object, object]) -> None:
    anns, bobs = two_models
    for number in range(5):
        store.insert_job(job(f"job-a{number}", "anns"), anns)
    store.insert_job(job("job-b0", "bobs"), bobs)
    found = store.find_job("job-a1")
    assert (found.model, found.state, found.parameters) == (
        "anns",
        JobState.QUEUED,
        {"alpha": "0.5"},
    )
    assert (found.env_requirements, found.runner_labels, found.instance) == (
        ["numpy>=1"],
        ["cpu"],
        "here",
    )
    assert found.create_time is not None
    assert every_page() == ["job-b0", "job-a4", "job-a3", "job-a2", "job-a1", "job-a0"]
    assert every_page("anns") == ["job-a4", "job-a3", "job-a2", "job-a1", "job-a0"]
    store.record_start("job-a2", None)
    store.record_end("job-a3", JobState.SUCCEEDED, "", None, {"r2": 0.5}, 2)
    assert every_page(state=JobState.RUNNING) == ["job-a2"]
    done = store.find_job("job-a3")
    assert (done.state, done.metrics, done.version) == (JobState.SUCCEEDED, {"r2": 0.5}, 2)
    assert done.end_time is not None
    # A final state stays final: a late word from the runner changes nothing.
    store.record_end("job-a3", JobState.FAILED, "late", None, {}, 0)
    assert store.find_job("job-a3").state is JobState.SUCCEEDED


def test_bad_page_tokens_are_invalid_argument(two_models: tuple[object, object]) -> None:
    anns, _ = two_models
    for number in range(3):
        store.insert_job(job(f"job-a{number}", "anns"), anns)
    token = store.list_jobs(TOKENS, "anns", None, 1, "").next_page_token
    assert token
    tampered = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    for bad in (tampered, "not a token", token + "x"):
        with pytest.raises(InvalidArgument):
            store.list_jobs(TOKENS, "anns", None, 1, bad)
    with pytest.raises(InvalidArgument, match="different query"):
        store.list_jobs(TOKENS, "", None, 1, token)  # another filter's token
    with pytest.raises(InvalidArgument, match="different query"):
        store.list_jobs(TOKENS, "anns", JobState.QUEUED, 1, token)
    with pytest.raises(InvalidArgument, match="page_size"):
        store.list_jobs(TOKENS, "anns", None, -1, "")


def test_a_private_models_jobs_answer_like_missing_ones(two_models: tuple[object, object]) -> None:
    anns, bobs = two_models
    store.insert_job(job("job-a0", "anns"), anns)
    store.insert_job(job("job-b0", "bobs"), bobs)
    token = as_bob()
    try:
        with pytest.raises(NotFound) as hidden:
            store.find_job("job-a0")
        with pytest.raises(NotFound) as missing:
            store.find_job("job-nope")
        assert hidden.value.message.replace("job-a0", "X") == missing.value.message.replace(
            "job-nope", "X"
        )
        assert every_page() == ["job-b0"]
        with pytest.raises(NotFound):
            store.list_jobs(TOKENS, "anns", None, 0, "")
        assert store.find_job("job-b0").model == "bobs"
    finally:
        current_principal.reset(token)  # type: ignore[arg-type]


def test_a_restart_fails_its_own_unfinished_jobs_only(two_models: tuple[object, object]) -> None:
    anns, _ = two_models
    for name in ("queued", "running", "done"):
        store.insert_job(job(f"job-{name}", "anns"), anns)
    store.insert_job(job("job-elsewhere", "anns", instance="other"), anns)
    store.record_start("job-running", None)
    store.record_end("job-done", JobState.SUCCEEDED, "", None, {}, 2)
    assert sorted(store.interrupt_unfinished("here")) == ["job-queued", "job-running"]
    for name in ("queued", "running"):
        interrupted = store.find_job(f"job-{name}")
        assert (interrupted.state, interrupted.reason) == (JobState.FAILED, store.INTERRUPTED)
        assert interrupted.end_time is not None
    assert store.find_job("job-done").state is JobState.SUCCEEDED
    assert store.find_job("job-elsewhere").state is JobState.QUEUED
    assert store.interrupt_unfinished("here") == []


def test_deleting_the_model_deletes_its_jobs(two_models: tuple[object, object]) -> None:
    anns, _ = two_models
    store.insert_job(job("job-a0", "anns"), anns)
    anns.delete_instance()  # type: ignore[attr-defined]
    assert not store.job_exists("job-a0")
    with pytest.raises(NotFound):
        store.find_job("job-a0")


def test_a_job_id_is_unique(two_models: tuple[object, object]) -> None:
    anns, _ = two_models
    store.insert_job(job("job-a0", "anns"), anns)
    with pytest.raises(pw.IntegrityError):
        store.insert_job(dataclasses.replace(job("job-a0", "anns")), anns)
