"""The store: peewee models for everything MLServe remembers, and migrations.

SQLite (WAL, busy timeout, foreign keys) in ``$MLSERVE_HOME`` by default;
PostgreSQL from a ``postgresql://`` URL, always through a connection pool
(``connect``). The schema carries a version number; ``migrate`` brings an
older database forward without losing rows. Domain code reaches the database
only inside ``run`` (``aio.in_thread`` calls it), which lends the call one
pooled connection and turns a lost database into ``errors.Unavailable``.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar
from urllib.parse import parse_qsl, urlsplit

import peewee as pw
from playhouse.db_url import connect as connect_url
from playhouse.migrate import SchemaMigrator
from playhouse.migrate import migrate as migrate_schema
from playhouse.pool import MaxConnectionsExceeded, PooledDatabase

from mlserve.errors import Unavailable

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

database = pw.DatabaseProxy()

POSTGRESQL_SCHEMES = ("postgresql", "postgres", "postgresql+pool", "postgres+pool")
# Pool settings a postgresql:// URL gets unless its query string says otherwise
# (e.g. ?max_connections=50&timeout=30). Limits are per MLServe process.
POSTGRESQL_POOL_DEFAULTS: dict[str, Any] = {
    # Connections open at once; more callers wait ... (32 is the most threads
    # asyncio's default executor runs, so by default no call waits.)
    "max_connections": 32,
    "timeout": 10,  # ... this many seconds for one, then get UNAVAILABLE
    "stale_timeout": 300,  # seconds before an idle connection is replaced
    "connect_timeout": 5,  # seconds to reach the server (libpq)
}
# Any number, as long as every MLServe on one database uses the same: the
# advisory lock that lets one replica at a time create or migrate the schema.
_MIGRATION_LOCK = 0x6D6C7376

SCHEMA_VERSION = 3


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


MIGRATIONS: dict[int, Callable[[pw.Database], None]] = {
    1: _add_inference_counts,
    2: _add_shares_repository,
}


def connect(url: str) -> pw.Database:
    """Open the database at ``url``, bind the models to it, and migrate it.

    ``sqlite:///PATH`` or ``postgresql://USER[:PASSWORD]@HOST[:PORT]/NAME``
    (``postgres://`` and the ``+pool`` forms mean the same; user and password
    percent-encoded, e.g. ``%40`` for ``@``); a PostgreSQL URL's
    query string may set the pool's limits (``POSTGRESQL_POOL_DEFAULTS``) and
    any libpq parameter (``sslmode``, ``application_name`` …).
    """
    db = open_database(url)
    database.initialize(db)
    run(migrate, db)
    return db


def open_database(url: str) -> pw.Database:
    """The database at ``url``, configured for MLServe but not yet bound or migrated."""
    scheme, _, rest = url.partition("://")
    if scheme in POSTGRESQL_SCHEMES:
        given = {key for key, _ in parse_qsl(urlsplit(url).query)}
        defaults = {k: v for k, v in POSTGRESQL_POOL_DEFAULTS.items() if k not in given}
        db: pw.Database = connect_url(
            f"postgresql+pool://{rest}", unquote_password=True, unquote_user=True, **defaults
        )
        return db
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
    return db


def run(function: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Call blocking store work in this thread: the one gate to the database.

    On a pooled database the call takes a connection when it first queries
    (work that never queries, such as reading a file, takes none) and hands
    it back at the end; the pool checks a connection before lending it again,
    so after a database restart dead connections are dropped and new ones
    opened. A database that cannot be reached (refused, dropped mid-call, no
    free connection in time) becomes ``Unavailable`` naming the database.
    """
    try:
        return function(*args, **kwargs)
    except (pw.OperationalError, pw.InterfaceError, MaxConnectionsExceeded) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        log.warning("database call failed: %s", reason, exc_info=error)
        raise Unavailable(
            f"the {describe(database.obj)} cannot be reached or is busy ({reason}); "
            "retry once it is back"
        ) from None
    finally:
        # Read again: the call may have bound the database (startup does).
        db = database.obj
        if isinstance(db, PooledDatabase) and not db.is_closed() and not db.in_transaction():
            db.close()


def describe(db: pw.Database | None) -> str:
    """``db`` for messages and logs: kind, place and name, never a password."""
    if isinstance(db, pw.PostgresqlDatabase):
        params = db.connect_params
        where = f"{params.get('host', 'local socket')}:{params.get('port', 5432)}"
        return f"PostgreSQL database {db.database!r} at {where}"
    if isinstance(db, pw.SqliteDatabase):
        return f"SQLite database {db.database}"
    return "database"


def migrate(db: pw.Database) -> None:
    """Create the schema in an empty database, or bring an older one forward.

    One transaction: a failed migration leaves the database as it was. On
    SQLite, playhouse.migrate rebuilds a table to change a column (copy, drop,
    rename), which the foreign keys of the rows pointing at it would refuse;
    so, as SQLite's ALTER TABLE guide says, they are off while migrating and
    checked before the commit. (The pragma has no effect inside a transaction.)
    """
    sqlite = db if isinstance(db, pw.SqliteDatabase) else None
    if sqlite is not None:
        sqlite.pragma("foreign_keys", 0)
    try:
        with db.atomic():
            _migrate(db)
            if sqlite is not None and (broken := sqlite.pragma("foreign_key_check")):
                raise RuntimeError(f"migrating left rows in {broken!r} whose references broke")
    finally:
        if sqlite is not None:
            sqlite.pragma("foreign_keys", 1)


def _migrate(db: pw.Database) -> None:
    if isinstance(db, pw.PostgresqlDatabase):
        # Replicas starting together on one database take turns here.
        pw.Select(columns=[pw.fn.pg_advisory_xact_lock(_MIGRATION_LOCK)]).bind(db).scalar()
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
