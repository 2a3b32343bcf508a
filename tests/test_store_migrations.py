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


def test_schema_3_database_gains_blobs_and_artifacts_with_rows_intact(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'schema3.db'}"
    db = store.connect(url)
    model = store.Model.create(name="kept")
    store.ModelVersion.create(
        model=model, version=1, sha256="0" * 64, size_bytes=3, files="[]", config="", upload_id="u"
    )
    store.Upload.create(upload_id="u", model="kept", files="[]", config="", manifest_sha256="0")
    # What schema 3 had: no blob tables, no artifact columns on uploads.
    for table in ("artifact", "blob_pin", "version_file", "blob"):
        db.execute_sql(f'DROP TABLE "{table}"')
    db.execute_sql('ALTER TABLE "upload" DROP COLUMN "artifact_kind"')
    db.execute_sql('ALTER TABLE "upload" DROP COLUMN "artifact_version"')
    store.SchemaInfo.update(version=3).execute()
    db.close()

    db = store.connect(url)
    assert store.SchemaInfo.get().version == store.SCHEMA_VERSION
    assert store.ModelVersion.get().version == 1
    upload = store.Upload.get(store.Upload.upload_id == "u")
    assert (upload.model, upload.artifact_kind, upload.artifact_version) == ("kept", "", 0)
    blob = store.Blob.create(sha256="a" * 64, size=3)
    store.VersionFile.create(version=store.ModelVersion.get(), path="f", blob=blob)
    store.BlobPin.create(upload=upload, blob=blob)
    db.close()
