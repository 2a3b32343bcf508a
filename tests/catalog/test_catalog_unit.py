"""The catalog's model metadata, filters, orders and keyset paging, on a real
store (``store_db``: a fresh migrated database) without a server."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import peewee as pw
import pytest

from mlserve.catalog.model_metadata import (
    DriftDetection,
    Feature,
    InferenceHints,
    Metric,
    ModelFields,
    ResourceAmount,
)
from mlserve.catalog.models import ModelQuery, ModelRecord
from mlserve.core.errors import AlreadyExists, InvalidArgument
from mlserve.core.paging import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from mlserve.storage import db, tables
from tests.support.catalog import Catalog, open_catalog

RICH = ModelFields(
    description="predicts churn",
    tags=["tabular", "churn"],
    labels={"team": "growth", "stage": "prod"},
    kind="classification",
    hyperparameters={"learning_rate": 0.01, "layers": [64, 32], "optimizer": "adam"},
    performance=[
        Metric("accuracy", 0.93, 0.9, "higher_is_better"),
        Metric("log_loss", 0.2, None, "lower_is_better"),
    ],
    training_resources=[ResourceAmount("nvidia.com/gpu", "1"), ResourceAmount("memory", "16Gi")],
    run_resources=[ResourceAmount("cpu", "500m")],
    features=[Feature("age", "INT64", "years"), Feature("plan", "categorical", "")],
    inference=InferenceHints(8, 2, "cpu", dt.timedelta(milliseconds=250)),
    drift_detection=DriftDetection(True, "psi"),
    visibility="public",
    allow_download=False,
    allow_remote_inference=True,
)


@pytest.fixture
def catalog(store_db: pw.Database, tmp_path: Path) -> Catalog:
    return open_catalog(tmp_path)


def run(awaitable: Any) -> Any:
    return asyncio.run(awaitable)


def snapshot() -> list[tuple[Any, ...]]:
    """Every model row, tag row and label row: to show nothing was written."""
    rows: list[tuple[Any, ...]] = []
    for table in (tables.Model, tables.ModelTag, tables.ModelLabel):
        rows += [tuple(row.values()) for row in table.select().order_by(table.id).dicts()]
    return rows


def listing(catalog: Catalog, query: ModelQuery, size: int = 100) -> Iterator[ModelRecord]:
    token = ""
    while True:
        page = run(catalog.models.list_models(size, token, query))
        yield from page.items
        token = page.next_page_token
        if not token:
            return


# --- metadata: create, get, update -----------------------------------------------


def test_create_and_get_keep_every_field(catalog: Catalog) -> None:
    created = run(catalog.models.create_model("churn", RICH))
    fetched = run(catalog.models.get_model("churn"))
    expected = dataclasses.replace(RICH, tags=["churn", "tabular"])
    assert created.fields == fetched.fields == expected
    assert (fetched.latest_version, fetched.version_count) == (0, 0)


def test_a_model_with_only_a_name_has_empty_metadata(catalog: Catalog) -> None:
    fields = run(catalog.models.create_model("bare", ModelFields())).fields
    assert fields == ModelFields(
        visibility="private", allow_download=True, allow_remote_inference=True
    )


def test_duplicate_name_is_already_exists_and_changes_nothing(catalog: Catalog) -> None:
    run(catalog.models.create_model("churn", RICH))
    before = snapshot()
    with pytest.raises(AlreadyExists):
        run(catalog.models.create_model("churn", ModelFields(description="other", tags=["x"])))
    assert snapshot() == before


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        (ModelFields(kind="ranking"), "model.kind"),
        (ModelFields(kind="7"), "model.kind"),
        (ModelFields(labels={"Bad Key": "x"}), "model.labels"),
        (ModelFields(tags=[""]), "model.tags"),
        (ModelFields(hyperparameters={"lr": float("nan")}), "model.hyperparameters['lr']"),
        (ModelFields(hyperparameters={"": 1.0}), "model.hyperparameters name"),
        (ModelFields(performance=[Metric("", 1.0)]), "model.performance[0].metric"),
        (ModelFields(performance=[Metric("a", 1.0), Metric("a", 2.0)]), "model.performance[1]"),
        (ModelFields(performance=[Metric("a", float("inf"))]), "model.performance[0].value"),
        (ModelFields(performance=[Metric("a", 1.0, None, "best")]), "model.performance[0].order"),
        (ModelFields(run_resources=[ResourceAmount("cpu", "-1")]), "model.run_resources[0].amount"),
        (ModelFields(run_resources=[ResourceAmount("cpu", "lots")]), "run_resources[0].amount"),
        (ModelFields(training_resources=[ResourceAmount("", "1")]), "training_resources[0]"),
        (ModelFields(features=[Feature("a"), Feature("a")]), "model.features[1]"),
        (ModelFields(inference=InferenceHints(max_batch_size=-1)), "inference.max_batch_size"),
        (ModelFields(inference=InferenceHints(timeout=dt.timedelta(0))), "inference.timeout"),
        (ModelFields(drift_detection=DriftDetection(True, "")), "drift_detection.method"),
    ],
)
def test_bad_metadata_is_refused_naming_the_field(
    catalog: Catalog, fields: ModelFields, named: str
) -> None:
    run(catalog.models.create_model("kept", RICH))
    before = snapshot()
    with pytest.raises(InvalidArgument, match=named.replace("[", r"\[").replace("]", r"\]")):
        run(catalog.models.create_model("new", fields))
    with pytest.raises(InvalidArgument):
        run(catalog.models.update_model("kept", fields, ["*"]))
    assert snapshot() == before


def test_update_changes_only_the_masked_fields(catalog: Catalog) -> None:
    run(catalog.models.create_model("churn", RICH))
    new = ModelFields(
        description="ignored: not in the mask",
        kind="regression",
        labels={"team": "core"},
        hyperparameters={"epochs": 3},
        drift_detection=DriftDetection(False, "ks"),
        inference=InferenceHints(max_batch_size=64),
    )
    mask = [
        "kind",
        "labels.team",
        "labels.stage",  # absent from new: removed
        "hyperparameters.epochs",
        "drift_detection.enabled",
        "inference.max_batch_size",
    ]
    updated = run(catalog.models.update_model("churn", new, mask)).fields
    assert updated == dataclasses.replace(
        RICH,
        tags=["churn", "tabular"],
        kind="regression",
        labels={"team": "core"},
        hyperparameters={**RICH.hyperparameters, "epochs": 3},
        drift_detection=DriftDetection(False, "psi"),
        inference=dataclasses.replace(RICH.inference, max_batch_size=64),
    )
    assert run(catalog.models.get_model("churn")).fields == updated
    # The label index follows: the old value no longer matches, the new one does.
    assert [m.name for m in listing(catalog, ModelQuery(labels=["team=core"]))] == ["churn"]
    assert list(listing(catalog, ModelQuery(labels=["stage=prod"]))) == []


def test_delete_removes_tag_and_label_rows(catalog: Catalog) -> None:
    run(catalog.models.create_model("kept", RICH))
    kept = snapshot()
    run(catalog.models.create_model("gone", RICH))
    run(catalog.models.delete_model("gone"))
    assert snapshot() == kept


def test_update_star_replaces_everything(catalog: Catalog) -> None:
    run(catalog.models.create_model("churn", RICH))
    updated = run(catalog.models.update_model("churn", ModelFields(description="fresh"), ["*"]))
    # Unset visibility and flags take a new model's defaults, not "off".
    expected = ModelFields(
        description="fresh", visibility="private", allow_download=True, allow_remote_inference=True
    )
    assert updated.fields == expected


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        ([], "update_mask is empty"),
        (["name"], "'name' cannot be changed"),
        (["create_time"], "'create_time' cannot be changed"),
        (["latest_version"], "cannot be changed"),
        (["colour"], "no field 'colour'"),
        (["drift_detection.colour"], "drift_detection has no field 'colour'"),
        (["kind.sub"], "kind has no sub-fields"),
        (["*", "kind"], "'\\*' must be the only path"),
    ],
)
def test_bad_update_mask_is_refused(catalog: Catalog, mask: list[str], message: str) -> None:
    run(catalog.models.create_model("churn", RICH))
    before = snapshot()
    with pytest.raises(InvalidArgument, match=message):
        run(catalog.models.update_model("churn", ModelFields(description="x"), mask))
    assert snapshot() == before


# --- filters and orders ---------------------------------------------------------


@pytest.fixture
def zoo(catalog: Catalog) -> Catalog:
    models = {
        "a-cls": ModelFields(kind="classification", tags=["vision", "small"], labels={"t": "x"}),
        "b-reg": ModelFields(kind="regression", tags=["tabular"], labels={"t": "y"}),
        "c-cls": ModelFields(kind="classification", tags=["vision"], labels={"t": "x", "u": ""}),
        "d-clu": ModelFields(kind="clustering", tags=["tabular", "small"]),
        "e-none": ModelFields(),
    }
    for name, fields in models.items():
        run(catalog.models.create_model(name, fields))
    return catalog


@pytest.mark.parametrize(
    ("query", "names"),
    [
        (ModelQuery(), ["a-cls", "b-reg", "c-cls", "d-clu", "e-none"]),
        (ModelQuery(kind="classification"), ["a-cls", "c-cls"]),
        (ModelQuery(tags_all=["vision", "small"]), ["a-cls"]),
        (ModelQuery(tags_any=["vision", "tabular"]), ["a-cls", "b-reg", "c-cls", "d-clu"]),
        (ModelQuery(tags_all=["small"], tags_any=["tabular"]), ["d-clu"]),
        (ModelQuery(labels=["t=x"]), ["a-cls", "c-cls"]),
        (ModelQuery(labels=["t=x", "u="]), ["c-cls"]),
        (ModelQuery(kind="regression", labels=["t=x"]), []),
        (ModelQuery(name_prefix="c"), ["c-cls"]),
        (ModelQuery(order_by="name desc"), ["e-none", "d-clu", "c-cls", "b-reg", "a-cls"]),
        (ModelQuery(order_by="create_time"), ["a-cls", "b-reg", "c-cls", "d-clu", "e-none"]),
        (
            ModelQuery(order_by=" create_time  desc "),
            ["e-none", "d-clu", "c-cls", "b-reg", "a-cls"],
        ),
    ],
)
def test_filters_and_orders(zoo: Catalog, query: ModelQuery, names: list[str]) -> None:
    for size in (1, 2, 100):
        assert [m.name for m in listing(zoo, query, size)] == names


def test_update_time_order_follows_updates(zoo: Catalog) -> None:
    run(zoo.models.update_model("b-reg", ModelFields(description="touched"), ["description"]))
    names = [m.name for m in listing(zoo, ModelQuery(order_by="update_time desc"), 2)]
    assert names[0] == "b-reg"
    assert sorted(names) == ["a-cls", "b-reg", "c-cls", "d-clu", "e-none"]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        (ModelQuery(kind="ranking"), "kind: unknown kind"),
        (ModelQuery(tags_all=[""]), "tags_all"),
        (ModelQuery(tags_any=["x" * 65]), "tags_any"),
        (ModelQuery(labels=["team"]), r"labels\[0\]: 'team' is not key=value"),
        (ModelQuery(labels=["t=x", "=x"]), r"labels\[1\]: label key ''"),
        (ModelQuery(labels=["Team=x"]), r"labels\[0\]"),
        (ModelQuery(order_by="size"), "order_by 'size'"),
        (ModelQuery(order_by="name sideways"), "order_by"),
        (ModelQuery(order_by="name desc asc"), "order_by"),
    ],
)
def test_bad_filter_is_refused_naming_the_field(
    zoo: Catalog, query: ModelQuery, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        run(zoo.models.list_models(10, "", query))


def test_token_is_bound_to_its_query_and_tamper_evident(zoo: Catalog) -> None:
    query = ModelQuery(tags_any=["vision", "tabular"], order_by="create_time")
    token = run(zoo.models.list_models(1, "", query)).next_page_token
    assert token
    others = [
        dataclasses.replace(query, order_by="create_time desc"),
        dataclasses.replace(query, order_by="name"),
        dataclasses.replace(query, tags_any=["vision"]),
        dataclasses.replace(query, kind="classification"),
        dataclasses.replace(query, labels=["t=x"]),
    ]
    for other in others:
        with pytest.raises(InvalidArgument, match="different query"):
            run(zoo.models.list_models(1, token, other))
    flipped = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    with pytest.raises(InvalidArgument):
        run(zoo.models.list_models(1, flipped, query))
    # Tag order and repeats do not make a different query.
    same = dataclasses.replace(query, tags_any=["tabular", "vision", "vision"])
    assert [m.name for m in run(zoo.models.list_models(1, token, same)).items] == ["b-reg"]


def test_page_size_rules(catalog: Catalog) -> None:
    tables.Model.insert_many([{"name": f"m{i:04d}"} for i in range(MAX_PAGE_SIZE + 1)]).execute()
    default = run(catalog.models.list_models(0, "", ModelQuery()))
    assert (len(default.items), bool(default.next_page_token)) == (DEFAULT_PAGE_SIZE, True)
    clamped = run(catalog.models.list_models(MAX_PAGE_SIZE * 5, "", ModelQuery()))
    assert (len(clamped.items), bool(clamped.next_page_token)) == (MAX_PAGE_SIZE, True)
    last = run(catalog.models.list_models(MAX_PAGE_SIZE, clamped.next_page_token, ModelQuery()))
    assert ([m.name for m in last.items], last.next_page_token) == ([f"m{MAX_PAGE_SIZE:04d}"], "")
    with pytest.raises(InvalidArgument, match="page_size"):
        run(catalog.models.list_models(-1, "", ModelQuery()))


# --- keyset paging under concurrent writes ----------------------------------------

TOTAL = 10_000
PAGE = 100


@pytest.mark.parametrize("order_by", ["name", "create_time desc", "update_time"])
def test_10000_models_page_without_gaps_or_duplicates_while_others_write(
    catalog: Catalog, order_by: str
) -> None:
    """Rows present for the whole listing appear exactly once, whatever is
    inserted or deleted meanwhile: by another thread inserting as fast as it
    can, and between every two pages, inserts and deletes on both sides of
    the page boundary. Many rows share a create/update time, so the id
    tie-breaker is exercised too."""
    rng = random.Random(5)
    base = dt.datetime(2026, 1, 1)
    names = [f"m{rng.randrange(10**9):09d}-{i}" for i in range(TOTAL)]
    rows = [
        {"name": name, "create_time": base + dt.timedelta(seconds=i // 50), "update_time": base}
        for i, name in enumerate(names)
    ]
    with db.database.atomic():
        for start in range(0, TOTAL, 1000):
            tables.Model.insert_many(rows[start : start + 1000]).execute()
    doomed = set(rng.sample(names, 500))  # deleted during the listing
    stable = set(names) - doomed
    deletions = iter(sorted(doomed))

    stop = threading.Event()
    inserted: list[str] = []

    def insert_meanwhile() -> None:
        while not stop.is_set():
            name = f"m{rng.randrange(10**9):09d}-new{len(inserted)}"
            run(catalog.models.create_model(name, ModelFields()))
            inserted.append(name)

    writer = threading.Thread(target=insert_meanwhile)
    writer.start()
    seen: list[str] = []
    try:
        token = ""
        while True:
            page = run(catalog.models.list_models(PAGE, token, ModelQuery(order_by=order_by)))
            seen += [record.name for record in page.items]
            token = page.next_page_token
            if not token:
                break
            with db.database.atomic():
                for _ in range(5):
                    name = next(deletions, None)
                    if name is not None:
                        tables.Model.delete().where(tables.Model.name == name).execute()
                tables.Model.insert_many(
                    [
                        {"name": f"m{rng.randrange(10**9):09d}-between{len(seen)}-{k}",
                         "create_time": base + dt.timedelta(seconds=rng.randrange(TOTAL // 50)),
                         "update_time": base}
                        for k in range(3)
                    ]
                ).execute()  # fmt: skip
    finally:
        stop.set()
        writer.join()
    assert len(seen) == len(set(seen)), "a model was listed twice"
    assert stable <= set(seen), f"{len(stable - set(seen))} models were skipped"
    assert inserted, "the writer thread inserted nothing"
