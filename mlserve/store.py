"""The store: peewee models for everything MLServe remembers, and migrations.

SQLite (WAL, busy timeout, foreign keys) in ``$MLSERVE_HOME`` by default; any
peewee database URL (``postgresql://…``) through ``connect``. The schema
carries a version number; ``migrate`` brings an older database forward
without losing rows.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import peewee as pw
from playhouse.db_url import connect as connect_url
from playhouse.migrate import SchemaMigrator
from playhouse.migrate import migrate as migrate_schema

database = pw.DatabaseProxy()

SCHEMA_VERSION = 4


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class BaseModel(pw.Model):
    class Meta:
        database = database
        legacy_table_names = False


class SchemaInfo(BaseModel):
    """One row: the schema version this database is at."""

    version = pw.IntegerField()


class Setting(BaseModel):
    """Server-wide values that must survive restarts (e.g. the page token secret)."""

    key = pw.CharField(primary_key=True, max_length=64)
    value = pw.BlobField()


class ApiKey(BaseModel):
    """An API key: looked up by its public prefix, verified by its hash."""

    prefix = pw.CharField(unique=True, max_length=32)
    secret_hash = pw.CharField(max_length=128)
    owner = pw.CharField(max_length=128)
    role = pw.CharField(max_length=32)
    create_time = pw.DateTimeField(default=utcnow)
    last_used_time = pw.DateTimeField(null=True)
    revoked = pw.BooleanField(default=False)


class Model(BaseModel):
    id = pw.AutoField()
    name = pw.CharField(unique=True, max_length=128)
    description = pw.TextField(default="")
    labels = pw.TextField(default="{}")  # JSON object
    create_time = pw.DateTimeField(default=utcnow)
    update_time = pw.DateTimeField(default=utcnow)


class ModelTag(BaseModel):
    """One tag of a model, in its own table so tag filters use an index."""

    model = pw.ForeignKeyField(Model, backref="tag_rows", on_delete="CASCADE")
    tag = pw.CharField(max_length=64, index=True)

    class Meta:
        indexes = ((("model", "tag"), True),)


class ModelVersion(BaseModel):
    id = pw.AutoField()
    model = pw.ForeignKeyField(Model, backref="versions", on_delete="CASCADE")
    version = pw.BigIntegerField()
    sha256 = pw.CharField(max_length=64, index=True)
    size_bytes = pw.BigIntegerField()
    files = pw.TextField()  # JSON list of {path, size, sha256}, ordered by path
    config = pw.TextField()
    upload_id = pw.CharField(max_length=128)
    create_time = pw.DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("model", "version"), True),)


class Upload(BaseModel):
    upload_id = pw.CharField(primary_key=True, max_length=128)
    model = pw.CharField(max_length=128)
    files = pw.TextField()  # JSON list of {path, size, sha256}, ordered by path
    config = pw.TextField()
    manifest_sha256 = pw.CharField(max_length=64)
    committed_version = pw.BigIntegerField(default=0)
    create_time = pw.DateTimeField(default=utcnow)
    update_time = pw.DateTimeField(default=utcnow)
    # Set for an artifact upload: its kind, and the version it attaches to.
    artifact_kind = pw.CharField(max_length=16, default="")
    artifact_version = pw.BigIntegerField(default=0)


class Blob(BaseModel):
    """A file's content, stored once under ``<home>/blobs`` by its sha256."""

    sha256 = pw.CharField(primary_key=True, max_length=64)
    size = pw.BigIntegerField()
    create_time = pw.DateTimeField(default=utcnow)


class VersionFile(BaseModel):
    """A file of a version, hard-linked from the blob holding its bytes."""

    version = pw.ForeignKeyField(ModelVersion, backref="file_rows", on_delete="CASCADE")
    path = pw.TextField()
    blob = pw.ForeignKeyField(Blob, on_delete="RESTRICT", column_name="blob_sha256", index=True)


class BlobPin(BaseModel):
    """A blob an unfinished upload counts on: garbage collection keeps it."""

    upload = pw.ForeignKeyField(Upload, on_delete="CASCADE", column_name="upload_id")
    blob = pw.ForeignKeyField(Blob, on_delete="RESTRICT", column_name="blob_sha256", index=True)

    class Meta:
        indexes = ((("upload", "blob"), True),)


class Artifact(BaseModel):
    """A file attached to a model version (training data, code, environment …)."""

    version = pw.ForeignKeyField(ModelVersion, backref="artifacts", on_delete="CASCADE")
    path = pw.CharField(max_length=1024)
    kind = pw.CharField(max_length=16)
    blob = pw.ForeignKeyField(Blob, on_delete="RESTRICT", column_name="blob_sha256", index=True)
    upload_id = pw.CharField(max_length=128)
    create_time = pw.DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("version", "path"), True),)


class Server(BaseModel):
    name = pw.CharField(unique=True, max_length=128)
    address = pw.CharField(max_length=300)
    description = pw.TextField(default="")
    labels = pw.TextField(default="{}")
    embedded = pw.BooleanField(default=False)
    shares_repository = pw.BooleanField(default=False)
    create_time = pw.DateTimeField(default=utcnow)


class Deployment(BaseModel):
    name = pw.CharField(unique=True, max_length=128)
    model = pw.ForeignKeyField(Model, backref="deployments", on_delete="RESTRICT")
    version = pw.BigIntegerField()
    create_time = pw.DateTimeField(default=utcnow)
    update_time = pw.DateTimeField(default=utcnow)


class DeploymentTarget(BaseModel):
    """Desired: ``deployment`` on ``server``; observed: its last state there."""

    deployment = pw.ForeignKeyField(Deployment, backref="targets", on_delete="CASCADE")
    server = pw.ForeignKeyField(Server, backref="targets", on_delete="RESTRICT")
    position = pw.IntegerField(default=0)
    state = pw.CharField(max_length=32, default="PENDING")
    message = pw.TextField(default="")
    update_time = pw.DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("deployment", "server"), True),)


class InferenceCount(BaseModel):
    """Inferences served per model version, flushed from memory every few seconds."""

    model = pw.CharField(max_length=128)
    version = pw.BigIntegerField()
    count = pw.BigIntegerField(default=0)
    failures = pw.BigIntegerField(default=0)
    last_time = pw.DateTimeField(null=True)

    class Meta:
        indexes = ((("model", "version"), True),)


TABLES: list[type[BaseModel]] = [
    SchemaInfo,
    Setting,
    ApiKey,
    Model,
    ModelTag,
    ModelVersion,
    Upload,
    Server,
    Deployment,
    DeploymentTarget,
    InferenceCount,
    Blob,
    VersionFile,
    BlobPin,
    Artifact,
]


# MIGRATIONS[n] brings a database from schema version n to n + 1. Later
# issues append here (playhouse.migrate); never edit an entry once released.
def _add_inference_counts(db: pw.Database) -> None:
    db.create_tables([InferenceCount])


def _add_shares_repository(db: pw.Database) -> None:
    migrator = SchemaMigrator.from_database(db)
    migrate_schema(migrator.add_column("server", "shares_repository", Server.shares_repository))
    # The embedded Triton has always read the repository directly.
    Server.update(shares_repository=True).where(Server.embedded == True).execute()  # noqa: E712


def _add_blobs_and_artifacts(db: pw.Database) -> None:
    # Versions committed before this keep their plain files and have no
    # VersionFile rows: they are neither deduplicated nor garbage-collected.
    db.create_tables([Blob, VersionFile, BlobPin, Artifact])
    present = {column.name for column in db.get_columns(Upload._meta.table_name)}
    migrator = SchemaMigrator.from_database(db)
    migrate_schema(
        *(
            migrator.add_column(Upload._meta.table_name, name, getattr(Upload, name))
            for name in ("artifact_kind", "artifact_version")
            if name not in present
        )
    )


MIGRATIONS: dict[int, Callable[[pw.Database], None]] = {
    1: _add_inference_counts,
    2: _add_shares_repository,
    3: _add_blobs_and_artifacts,
}


def connect(url: str) -> pw.Database:
    """Open the database at ``url``, bind the models to it, and migrate it."""
    db: pw.Database
    if url.startswith("sqlite:"):
        db = connect_url(
            url,
            pragmas={
                "journal_mode": "wal",
                "busy_timeout": 10_000,
                "foreign_keys": 1,
                "synchronous": "normal",
            },
            # Writers take the lock at BEGIN, so two writers queue on the busy
            # timeout instead of deadlocking on a read-to-write upgrade.
            lock_type="IMMEDIATE",
        )
    else:
        db = connect_url(url)
    database.initialize(db)
    migrate(db)
    return db


def migrate(db: pw.Database) -> None:
    with db.atomic():
        if not db.table_exists(SchemaInfo._meta.table_name):
            db.create_tables(TABLES)
            SchemaInfo.create(version=SCHEMA_VERSION)
            return
        info = SchemaInfo.get()
        if info.version > SCHEMA_VERSION:
            raise RuntimeError(
                f"the database is at schema version {info.version}, newer than this "
                f"MLServe ({SCHEMA_VERSION}): upgrade MLServe"
            )
        while info.version < SCHEMA_VERSION:
            MIGRATIONS[info.version](db)
            info.version += 1
        info.save()


def get_or_create_setting(key: str, make: Callable[[], bytes]) -> bytes:
    with database.atomic():
        row = Setting.get_or_none(Setting.key == key)
        if row is None:
            row = Setting.create(key=key, value=make())
        return bytes(row.value)


def as_dict(row: Any) -> dict[str, Any]:
    return dict(row.__data__)
