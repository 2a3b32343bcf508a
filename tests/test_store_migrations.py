"""An older database opens under the current schema with every row intact."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlserve import store


def test_schema_1_database_is_migrated_without_losing_rows(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    db = store.connect(url)
    store.Model.create(name="kept", description="from schema 1")
    store.Server.create(name="local", address="127.0.0.1:1", embedded=True)
    store.Server.create(name="remote", address="127.0.0.1:2")
    # Turn it into what the foundation's first schema wrote.
    db.execute_sql('DROP TABLE "inference_count"')
    db.execute_sql('ALTER TABLE "server" DROP COLUMN "shares_repository"')
    db.drop_tables(store.PIPELINE_TABLES)
    db.execute_sql('ALTER TABLE "deployment" DROP COLUMN "serving"')
    store.SchemaInfo.update(version=1).execute()
    db.close()

    db = store.connect(url)
    assert store.SchemaInfo.get().version == store.SCHEMA_VERSION
    assert store.Model.get(store.Model.name == "kept").description == "from schema 1"
    shares = {row.name: row.shares_repository for row in store.Server.select()}
    assert shares == {"local": True, "remote": False}
    store.InferenceCount.create(model="kept", version=1, count=1)
    db.close()


def test_newer_database_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    db = store.connect(url)
    store.SchemaInfo.update(version=store.SCHEMA_VERSION + 1).execute()
    db.close()
    with pytest.raises(RuntimeError, match="newer than this MLServe"):
        store.connect(url)


def test_schema_3_database_gains_pipelines_and_keeps_its_deployments(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'three.db'}"
    db = store.connect(url)
    model = store.Model.create(name="kept")
    store.Deployment.create(name="kept", model=model, version=1)
    # What schema 3 had: no pipeline tables, no deployment.serving.
    db.drop_tables(store.PIPELINE_TABLES)
    db.execute_sql('ALTER TABLE "deployment" DROP COLUMN "serving"')
    store.SchemaInfo.update(version=3).execute()
    db.close()

    db = store.connect(url)
    assert store.SchemaInfo.get().version == store.SCHEMA_VERSION
    assert store.Deployment.get(store.Deployment.name == "kept").serving == "{}"
    pipeline = store.Pipeline.create(name="chain")
    store.PipelineVersion.create(pipeline=pipeline, version=1, spec="{}")
    db.close()
