"""An older database opens under the current schema with every row intact."""

from __future__ import annotations

from pathlib import Path

import peewee as pw
import pytest
from playhouse.migrate import SchemaMigrator, migrate

from mlserve import store

ACCESS_TABLES = [
    store.AuditEvent,
    store.WorkspaceMember,
    store.AppRoute,
    store.AppConsumer,
    store.App,
    store.User,
    store.Workspace,
]
ACCESS_COLUMNS = {
    "api_key": ["user_id", "consumer_id", "algorithm", "expire_time"],
    "model": ["workspace_id", "visibility", "allow_download", "allow_remote_inference"],
}


def downgrade_to_schema_3(db: pw.Database) -> None:
    """Undo what schema 4 (access control) added."""
    migrator = SchemaMigrator.from_database(db)
    db.execute_sql("PRAGMA foreign_keys = OFF")
    migrate(
        *(
            migrator.drop_column(table, column, legacy=True)  # rebuilds: FKs block DROP COLUMN
            for table, columns in ACCESS_COLUMNS.items()
            for column in columns
        )
    )
    db.drop_tables(ACCESS_TABLES)
    db.execute_sql("PRAGMA foreign_keys = ON")
    store.SchemaInfo.update(version=3).execute()


def test_schema_1_database_is_migrated_without_losing_rows(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    db = store.connect(url)
    store.Model.create(name="kept", description="from schema 1")
    store.Server.create(name="local", address="127.0.0.1:1", embedded=True)
    store.Server.create(name="remote", address="127.0.0.1:2")
    downgrade_to_schema_3(db)
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


def test_schema_3_keys_become_users_and_models_move_into_the_admin_workspace(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    db = store.connect(url)
    downgrade_to_schema_3(db)
    db.execute_sql(
        'INSERT INTO "api_key" (prefix, secret_hash, owner, role, create_time, revoked) '
        "VALUES ('abc123', 'f00d', 'admin', 'admin', '2026-01-01 00:00:00', 0)"
    )
    db.execute_sql(
        'INSERT INTO "model" (name, description, labels, create_time, update_time) '
        "VALUES ('old-model', 'from schema 3', '{}', '2026-01-01', '2026-01-01')"
    )
    db.close()

    db = store.connect(url)
    assert store.SchemaInfo.get().version == store.SCHEMA_VERSION
    admin = store.User.get(store.User.name == "admin")
    assert admin.role == "admin"
    assert admin.active
    assert admin.default_workspace.name == "admin"
    key = store.ApiKey.get(store.ApiKey.prefix == "abc123")
    assert (key.user_id, key.algorithm, key.secret_hash) == (admin.id, "sha256", "f00d")
    model = store.Model.get(store.Model.name == "old-model")
    assert model.workspace_id == admin.default_workspace_id
    assert (model.visibility, model.allow_download, model.allow_remote_inference) == (
        "private",
        True,
        True,
    )
    member = store.WorkspaceMember.get(store.WorkspaceMember.user == admin)
    assert member.role == "owner"
    db.close()


def test_newer_database_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    db = store.connect(url)
    store.SchemaInfo.update(version=store.SCHEMA_VERSION + 1).execute()
    db.close()
    with pytest.raises(RuntimeError, match="newer than this MLServe"):
        store.connect(url)
