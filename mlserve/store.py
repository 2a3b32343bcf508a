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


class Workspace(BaseModel):
    """A group of users sharing models, versions and deployments."""

    id = pw.AutoField()
    name = pw.CharField(unique=True, max_length=128)
    archived = pw.BooleanField(default=False)
    create_time = pw.DateTimeField(default=utcnow)


class User(BaseModel):
    """A person (or service account) with a role; keys stand for users."""

    id = pw.AutoField()
    name = pw.CharField(unique=True, max_length=128)
    display_name = pw.CharField(max_length=256, default="")
    role = pw.CharField(max_length=32)
    tags = pw.TextField(default="[]")  # JSON list
    active = pw.BooleanField(default=True)
    default_workspace = pw.ForeignKeyField(Workspace, null=True, on_delete="SET NULL")
    create_time = pw.DateTimeField(default=utcnow)
    update_time = pw.DateTimeField(default=utcnow)


class WorkspaceMember(BaseModel):
    """``user`` belongs to ``workspace`` as ``role`` (owner or collaborator)."""

    workspace = pw.ForeignKeyField(Workspace, backref="members", on_delete="CASCADE")
    user = pw.ForeignKeyField(User, backref="memberships", on_delete="CASCADE")
    role = pw.CharField(max_length=32)
    create_time = pw.DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("workspace", "user"), True),)


class App(BaseModel):
    """An application: routes (models it exposes) and consumers (who may call them)."""

    id = pw.AutoField()
    name = pw.CharField(unique=True, max_length=128)
    description = pw.TextField(default="")
    retries = pw.IntegerField(default=2)
    timeout_seconds = pw.FloatField(default=0.0)
    create_time = pw.DateTimeField(default=utcnow)


class AppRoute(BaseModel):
    """``app`` exposes the model named ``model`` to its consumers."""

    app = pw.ForeignKeyField(App, backref="routes", on_delete="CASCADE")
    model = pw.CharField(max_length=128, index=True)
    create_time = pw.DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("app", "model"), True),)


class AppConsumer(BaseModel):
    """A calling service of ``app``; its keys may infer on the app's routes only."""

    app = pw.ForeignKeyField(App, backref="consumers", on_delete="CASCADE")
    name = pw.CharField(max_length=128)
    create_time = pw.DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("app", "name"), True),)


class ApiKey(BaseModel):
    """An API key: looked up by its public prefix, verified by its hash."""

    id = pw.AutoField()
    prefix = pw.CharField(unique=True, max_length=32)
    secret_hash = pw.CharField(max_length=256)
    owner = pw.CharField(max_length=128)
    role = pw.CharField(max_length=32)
    create_time = pw.DateTimeField(default=utcnow)
    last_used_time = pw.DateTimeField(null=True)
    revoked = pw.BooleanField(default=False)
    # Schema 4: whose key it is (a user or an app consumer), how the secret
    # is hashed ("sha256" rows predate it and are re-hashed on first use),
    # and when it expires.
    user = pw.ForeignKeyField(User, null=True, backref="keys", on_delete="CASCADE")
    consumer = pw.ForeignKeyField(AppConsumer, null=True, backref="keys", on_delete="CASCADE")
    algorithm = pw.CharField(max_length=16, default="sha256")
    expire_time = pw.DateTimeField(null=True)


class Model(BaseModel):
    id = pw.AutoField()
    name = pw.CharField(unique=True, max_length=128)
    description = pw.TextField(default="")
    labels = pw.TextField(default="{}")  # JSON object
    create_time = pw.DateTimeField(default=utcnow)
    update_time = pw.DateTimeField(default=utcnow)
    # Schema 4: tenancy and per-model permissions.
    workspace = pw.ForeignKeyField(Workspace, null=True, backref="models", on_delete="RESTRICT")
    visibility = pw.CharField(max_length=16, default="private")
    allow_download = pw.BooleanField(default=True)
    allow_remote_inference = pw.BooleanField(default=True)


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


class AuditEvent(BaseModel):
    """Who did what to which resource, when, and how it ended."""

    id = pw.AutoField()
    time = pw.DateTimeField(default=utcnow, index=True)
    actor = pw.CharField(max_length=300, index=True)
    key_prefix = pw.CharField(max_length=32)
    method = pw.CharField(max_length=200)
    resource = pw.CharField(max_length=300, index=True)
    outcome = pw.CharField(max_length=32)


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
    Workspace,
    User,
    WorkspaceMember,
    App,
    AppRoute,
    AppConsumer,
    AuditEvent,
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


def _add_access_control(db: pw.Database) -> None:
    """Users, workspaces, apps and audit; keys and models gain owners.

    Every existing key owner becomes a user with the key's role, with a
    default workspace named after it; every existing model moves into the
    first admin's workspace (or a workspace named "default" when there is no
    key at all). Old keys keep their sha256 hash and are re-hashed with
    scrypt the first time they are used.
    """
    db.create_tables([Workspace, User, WorkspaceMember, App, AppRoute, AppConsumer, AuditEvent])
    migrator = SchemaMigrator.from_database(db)
    migrate_schema(
        migrator.add_column("api_key", "user_id", ApiKey.user),
        migrator.add_column("api_key", "consumer_id", ApiKey.consumer),
        migrator.add_column("api_key", "algorithm", ApiKey.algorithm),
        migrator.add_column("api_key", "expire_time", ApiKey.expire_time),
        migrator.add_column("model", "workspace_id", Model.workspace),
        migrator.add_column("model", "visibility", Model.visibility),
        migrator.add_column("model", "allow_download", Model.allow_download),
        migrator.add_column("model", "allow_remote_inference", Model.allow_remote_inference),
    )
    owners = ApiKey.select(ApiKey.owner, pw.fn.MIN(ApiKey.role)).group_by(ApiKey.owner)
    homes: dict[str, Workspace] = {}
    rows: list[tuple[str, str]] = list(owners.tuples())  # type: ignore[arg-type]  # .tuples()
    for owner, role in rows:
        workspace = homes[role] = Workspace.create(name=owner)
        user = User.create(name=owner, role=role, default_workspace=workspace)
        WorkspaceMember.create(workspace=workspace, user=user, role="owner")
        ApiKey.update(user=user).where(ApiKey.owner == owner).execute()
    home = homes.get("admin") or next(iter(homes.values()), None)
    if home is None and Model.select().exists():
        home = Workspace.create(name="default")
    if home is not None:
        Model.update(workspace=home).execute()


MIGRATIONS: dict[int, Callable[[pw.Database], None]] = {
    1: _add_inference_counts,
    2: _add_shares_repository,
    3: _add_access_control,
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
