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
    serving = pw.TextField(default="{}")  # JSON: batching and instance settings


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


class Pipeline(BaseModel):
    """A DAG of model steps served as one Triton ensemble named ``name``."""

    name = pw.CharField(unique=True, max_length=128)
    description = pw.TextField(default="")
    create_time = pw.DateTimeField(default=utcnow)


class PipelineVersion(BaseModel):
    """One immutable version of a pipeline's inputs, outputs and steps."""

    pipeline = pw.ForeignKeyField(Pipeline, backref="versions", on_delete="CASCADE")
    version = pw.BigIntegerField()
    spec = pw.TextField()  # JSON: {"inputs": [...], "outputs": [...], "steps": [...]}
    create_time = pw.DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("pipeline", "version"), True),)


class PipelineDeployment(BaseModel):
    """Desired: ``pipeline`` at ``version`` (an ensemble plus its members) on targets."""

    pipeline = pw.ForeignKeyField(Pipeline, backref="deployments", on_delete="RESTRICT")
    version = pw.BigIntegerField()
    create_time = pw.DateTimeField(default=utcnow)
    update_time = pw.DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("pipeline",), True),)


class PipelineMember(BaseModel):
    """A member model version a deployed pipeline pins (its ensemble steps name it)."""

    deployment = pw.ForeignKeyField(PipelineDeployment, backref="members", on_delete="CASCADE")
    model = pw.ForeignKeyField(Model, backref="pipeline_members", on_delete="RESTRICT")
    version = pw.BigIntegerField()
    config = pw.TextField()  # the config.pbtxt Triton gets, settings applied


class PipelineTarget(BaseModel):
    """A pipeline deployment on one server: the ensemble's state and its members'."""

    deployment = pw.ForeignKeyField(PipelineDeployment, backref="targets", on_delete="CASCADE")
    server = pw.ForeignKeyField(Server, backref="pipeline_targets", on_delete="RESTRICT")
    position = pw.IntegerField(default=0)
    state = pw.CharField(max_length=32, default="PENDING")
    message = pw.TextField(default="")
    members = pw.TextField(default="[]")  # JSON: [[model, version, state, message], ...]
    update_time = pw.DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("deployment", "server"), True),)


PIPELINE_TABLES: list[type[BaseModel]] = [
    Pipeline,
    PipelineVersion,
    PipelineDeployment,
    PipelineMember,
    PipelineTarget,
]

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
    *PIPELINE_TABLES,
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


def _add_pipelines(db: pw.Database) -> None:
    db.create_tables(PIPELINE_TABLES)
    migrator = SchemaMigrator.from_database(db)
    migrate_schema(migrator.add_column("deployment", "serving", Deployment.serving))


MIGRATIONS: dict[int, Callable[[pw.Database], None]] = {
    1: _add_inference_counts,
    2: _add_shares_repository,
    3: _add_pipelines,
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
