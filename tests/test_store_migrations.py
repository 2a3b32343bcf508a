"""An older database opens under the current schema with every row intact."""

from __future__ import annotations

import json
from pathlib import Path

import peewee as pw
import pytest

from mlserve import store

METADATA_COLUMNS = (
    "kind", "hyperparameters", "performance", "training_resources", "run_resources",
    "features", "inference", "drift_detection",
)  # fmt: skip


def undo_model_metadata(db: pw.Database) -> None:
    """Turn a current database back into schema 3 (before issue 5's catalog)."""
    for index in ("model_kind", "model_create_time_id", "model_update_time_id"):
        db.execute_sql(f'DROP INDEX "{index}"')
    db.execute_sql('DROP INDEX "model_tag_tag_model_id"')
    for column in METADATA_COLUMNS:
        db.execute_sql(f'ALTER TABLE "model" DROP COLUMN "{column}"')
    db.execute_sql('DROP TABLE "model_label"')


def test_schema_1_database_is_migrated_without_losing_rows(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    db = store.connect(url)
    store.Model.create(name="kept", description="from schema 1")
    store.Server.create(name="local", address="127.0.0.1:1", embedded=True)
    store.Server.create(name="remote", address="127.0.0.1:2")
    # Turn it into what the foundation's first schema wrote.
    undo_model_metadata(db)
    db.execute_sql('DROP TABLE "inference_count"')
    db.execute_sql('ALTER TABLE "server" DROP COLUMN "shares_repository"')
    store.SchemaInfo.update(version=1).execute()
    db.close()

    db = store.connect(url)
    assert store.SchemaInfo.get().version == store.SCHEMA_VERSION
    assert store.Model.get(store.Model.name == "kept").description == "from schema 1"
    shares = {row.name: row.shares_repository for row in store.Server.select()}
    assert shares == {"local": True, "remote": False}
    store.InferenceCount.create(model="kept", version=1, count=1)
    db.close()


def test_schema_3_database_gains_model_metadata(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    db = store.connect(url)
    undo_model_metadata(db)
    store.SchemaInfo.update(version=3).execute()
    db.execute_sql(
        'INSERT INTO "model" (name, description, labels, create_time, update_time) '
        "VALUES ('kept', 'from schema 3', ?, '2026-01-01 00:00:00', '2026-01-02 00:00:00')",
        (json.dumps({"team": "vision", "stage": "prod"}),),
    )
    db.close()

    db = store.connect(url)
    assert store.SchemaInfo.get().version == store.SCHEMA_VERSION
    kept = store.Model.get(store.Model.name == "kept")
    assert (kept.description, kept.kind, kept.features) == ("from schema 3", "", "[]")
    labels = {(row.key, row.value) for row in store.ModelLabel.select()}
    assert labels == {("team", "vision"), ("stage", "prod")}
    indexes = {index.name for index in db.get_indexes("model")}
    assert {"model_kind", "model_create_time_id", "model_update_time_id"} <= indexes
    db.close()


def test_newer_database_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    db = store.connect(url)
    store.SchemaInfo.update(version=store.SCHEMA_VERSION + 1).execute()
    db.close()
    with pytest.raises(RuntimeError, match="newer than this MLServe"):
        store.connect(url)
