"""The schema: peewee models for everything MLServe remembers, and migrations.

SQLite (WAL, busy timeout, foreign keys) in ``$MLSERVE_HOME`` by default;
PostgreSQL from a ``postgresql://`` URL, always through a connection pool
(``connect``). The schema carries a version number; ``migrate`` brings an
older database forward without losing rows. Domain code reaches the database
only through the gate (``db.run`` / ``db.in_thread``), which lends the call
one pooled connection and turns a lost database into ``errors.Unavailable``.

Each table has one owning domain module; only that module queries it
(``tests/core/test_layers.py`` holds the list and checks it).
"""

from __future__ import annotations

import json
from collections.abc import Callable

import peewee as pw
from playhouse.migrate import SchemaMigrator
from playhouse.migrate import migrate as migrate_schema

from mlserve.storage.db import database, open_database, run, utcnow

# Any number, as long as every MLServe on one database uses the same: the
# advisory lock that lets one replica at a time create or migrate the schema.
_MIGRATION_LOCK = 0x6D6C7376

SCHEMA_VERSION = 26


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


class OidcIdentity(BaseModel):
    """An OpenID Connect identity (issuer, subject) and the user it signs in as.

    Made on the identity's first sign-in. Deleting the user keeps the row with
    no user, so the identity's tokens are refused afterwards instead of making
    a fresh user.
    """

    issuer = pw.CharField(max_length=512)
    subject = pw.CharField(max_length=512)
    user = pw.ForeignKeyField(User, null=True, backref="identities", on_delete="SET NULL")
    create_time = pw.DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("issuer", "subject"), True),)


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
    # Schema 6: whose key it is (a user or an app consumer), how the secret
    # is hashed ("sha256" rows predate it and are re-hashed on first use),
    # and when it expires.
    user = pw.ForeignKeyField(User, null=True, backref="keys", on_delete="CASCADE")
    consumer = pw.ForeignKeyField(AppConsumer, null=True, backref="keys", on_delete="CASCADE")
    algorithm = pw.CharField(max_length=16, default="sha256")
    expire_time = pw.DateTimeField(null=True)


class Model(BaseModel):
    """A model's metadata. What ListModels filters or orders by is a column
    (or a row of model_tag / model_label) with an index; what is only
    returned is JSON text."""

    id = pw.AutoField()
    name = pw.CharField(unique=True, max_length=128)
    description = pw.TextField(default="")
    labels = pw.TextField(default="{}")  # JSON object; model_label indexes it
    create_time = pw.DateTimeField(default=utcnow)
    update_time = pw.DateTimeField(default=utcnow)
    kind = pw.CharField(max_length=32, default="", index=True)
    hyperparameters = pw.TextField(default="{}")  # JSON object
    performance = pw.TextField(default="[]")  # JSON list of metrics
    training_resources = pw.TextField(default="[]")  # JSON list of {resource, amount}
    run_resources = pw.TextField(default="[]")  # JSON list of {resource, amount}
    features = pw.TextField(default="[]")  # JSON list of {name, type, description}
    inference = pw.TextField(default="{}")  # JSON object of inference hints
    drift_detection = pw.TextField(default="{}")  # JSON object {enabled, method}
    # Schema 6: tenancy and per-model permissions.
    workspace = pw.ForeignKeyField(Workspace, null=True, backref="models", on_delete="RESTRICT")
    visibility = pw.CharField(max_length=16, default="private")
    allow_download = pw.BooleanField(default=True)
    allow_remote_inference = pw.BooleanField(default=True)

    class Meta:
        # Keyset paging orders by (key, id); these keep each order an index walk.
        indexes = (
            (("create_time", "id"), False),
            (("update_time", "id"), False),
        )


class ModelTag(BaseModel):
    """One tag of a model, in its own table so tag filters use an index."""

    model = pw.ForeignKeyField(Model, backref="tag_rows", on_delete="CASCADE")
    tag = pw.CharField(max_length=64, index=True)

    class Meta:
        indexes = ((("model", "tag"), True), (("tag", "model"), False))


class ModelLabel(BaseModel):
    """One label of a model, so label filters use an index (the model's
    ``labels`` column keeps the same pairs for returning them)."""

    model = pw.ForeignKeyField(Model, backref="label_rows", on_delete="CASCADE")
    key = pw.CharField(max_length=63)
    value = pw.CharField(max_length=256)

    class Meta:
        indexes = ((("model", "key"), True), (("key", "value", "model"), False))


class Dataset(BaseModel):
    """A dataset's metadata (schema 13): a named, workspace-owned family of versions,
    seen and changed by the rules of models (visibility, workspace)."""

    id = pw.AutoField()
    name = pw.CharField(unique=True, max_length=128)
    description = pw.TextField(default="")
    workspace = pw.ForeignKeyField(Workspace, null=True, backref="datasets", on_delete="RESTRICT")
    visibility = pw.CharField(max_length=16, default="private")
    create_time = pw.DateTimeField(default=utcnow)
    update_time = pw.DateTimeField(default=utcnow)


class DatasetTag(BaseModel):
    """One tag of a dataset, in its own table so tag filters and counts use an index."""

    dataset = pw.ForeignKeyField(Dataset, backref="tag_rows", on_delete="CASCADE")
    tag = pw.CharField(max_length=64)

    class Meta:
        indexes = ((("dataset", "tag"), True), (("tag", "dataset"), False))


class DatasetVersion(BaseModel):
    """One immutable, numbered set of a dataset's files, with the schema read from them."""

    id = pw.AutoField()
    dataset = pw.ForeignKeyField(Dataset, backref="versions", on_delete="CASCADE")
    version = pw.BigIntegerField()
    sha256 = pw.CharField(max_length=64)
    size_bytes = pw.BigIntegerField()
    columns = pw.TextField()  # JSON list of [name, arrow type]
    row_count = pw.BigIntegerField()
    upload_id = pw.CharField(max_length=128)
    create_time = pw.DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("dataset", "version"), True), (("dataset", "sha256"), False))


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
    # Schema 13: the dataset version it was trained on; a dataset named here
    # cannot be deleted (RESTRICT, and the catalog refuses first).
    training_dataset = pw.ForeignKeyField(
        DatasetVersion, null=True, on_delete="RESTRICT", index=True
    )
    # Schema 18: the memory it was measured to need after its first load
    # (0: not yet), where, how ("triton" or "rss") and when.
    measured_memory = pw.BigIntegerField(default=0)
    measured_on = pw.CharField(max_length=128, default="")
    measurement = pw.CharField(max_length=16, default="")
    measure_time = pw.DateTimeField(null=True)

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
    # The user who began it: uploads are theirs alone (and admins'). Null for
    # uploads older than owners, and once the user is deleted.
    owner = pw.ForeignKeyField(User, null=True, on_delete="SET NULL")
    # Staging this upload may fill: declared bytes not already stored as blobs.
    # Counted against its owner's cap until it commits or goes.
    staging_bytes = pw.BigIntegerField(default=0)

    class Meta:
        indexes = ((("committed_version", "update_time"), False),)


class Blob(BaseModel):
    """A file's content, stored once under ``<home>/blobs`` by its sha256."""

    sha256 = pw.CharField(primary_key=True, max_length=64)
    size = pw.BigIntegerField()
    create_time = pw.DateTimeField(default=utcnow)
    # Where the store keeps it when that is not its digest's place: a bucket's
    # object key, written where the upload's parts went (S3Repository). "": by sha256.
    location = pw.TextField(default="")


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


class UploadPart(BaseModel):
    """A part of a staged file already in the bucket, as an S3 multipart upload's part.

    What a replica durably committed of an upload: a resume through another
    replica continues from these (``S3Repository``). Local storage has none.
    """

    upload = pw.ForeignKeyField(Upload, on_delete="CASCADE", column_name="upload_id")
    path = pw.TextField()
    multipart_id = pw.TextField()  # S3's UploadId of the multipart upload
    number = pw.IntegerField()  # S3's PartNumber, from 1
    size = pw.BigIntegerField()
    etag = pw.TextField()
    # The object key the multipart upload completes at ("": the staging key of
    # schema 22 and before).
    key = pw.TextField(default="")
    # The part's CRC32 as S3 answered it (base64), which completing a multipart
    # upload declared with CRC32 must repeat ("": none, as before schema 26).
    checksum = pw.TextField(default="")

    class Meta:
        table_name = "upload_part"
        indexes = ((("upload", "path", "number"), True),)


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


class DatasetFile(BaseModel):
    """A file of a dataset version: a use of the blob holding its bytes."""

    version = pw.ForeignKeyField(DatasetVersion, backref="file_rows", on_delete="CASCADE")
    path = pw.TextField()
    blob = pw.ForeignKeyField(Blob, on_delete="RESTRICT", column_name="blob_sha256", index=True)
    row_count = pw.BigIntegerField()


class Server(BaseModel):
    name = pw.CharField(unique=True, max_length=128)
    address = pw.CharField(max_length=300)
    description = pw.TextField(default="")
    labels = pw.TextField(default="{}")
    embedded = pw.BooleanField(default=False)
    shares_repository = pw.BooleanField(default=False)
    create_time = pw.DateTimeField(default=utcnow)
    # JSON list of workspace names whose models it may hold; [] means any.
    workspaces = pw.TextField(default="[]")
    # Schema 18: its capacity for models; host_memory 0 means not stated.
    gpu_count = pw.IntegerField(default=0)
    gpu_memory = pw.BigIntegerField(default=0)
    host_memory = pw.BigIntegerField(default=0)


class Pipeline(BaseModel):
    """A DAG of model steps served as one Triton ensemble named ``name``."""

    name = pw.CharField(unique=True, max_length=128)
    description = pw.TextField(default="")
    # Pipelines belong to a workspace, as models do; private to it for now.
    workspace = pw.ForeignKeyField(Workspace, null=True, backref="pipelines", on_delete="RESTRICT")
    visibility = pw.CharField(max_length=16, default="private")
    create_time = pw.DateTimeField(default=utcnow)


class PipelineVersion(BaseModel):
    """One immutable version of a pipeline's inputs, outputs and steps."""

    pipeline = pw.ForeignKeyField(Pipeline, backref="versions", on_delete="CASCADE")
    version = pw.BigIntegerField()
    spec = pw.TextField()  # JSON: {"inputs": [...], "outputs": [...], "steps": [...]}
    create_time = pw.DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("pipeline", "version"), True),)


class Deployment(BaseModel):
    """Desired: a model, or a pipeline (its Triton ensemble and members), at
    ``version`` on its targets. Named after what it deploys: models and
    pipelines share one namespace, so one table holds both (schema 12)."""

    name = pw.CharField(unique=True, max_length=128)
    model = pw.ForeignKeyField(Model, null=True, backref="deployments", on_delete="RESTRICT")
    version = pw.BigIntegerField()
    create_time = pw.DateTimeField(default=utcnow)
    update_time = pw.DateTimeField(default=utcnow)
    serving = pw.TextField(default="{}")  # JSON: batching and instance settings
    pipeline = pw.ForeignKeyField(Pipeline, null=True, backref="deployments", on_delete="RESTRICT")
    # Seconds one load on one server may take (schema 16); 0: the server's default.
    load_timeout = pw.FloatField(default=0.0)
    # Schema 20: "eager" or "on_demand", and the on-demand limits (issue 16).
    loading = pw.CharField(max_length=16, default="eager")
    min_copies = pw.IntegerField(default=0)
    max_copies = pw.IntegerField(default=0)
    idle_unload_after = pw.FloatField(default=0.0)
    pinned = pw.BooleanField(default=False)


class DeploymentTarget(BaseModel):
    """Desired: ``deployment`` on ``server``; observed: its last state there."""

    deployment = pw.ForeignKeyField(Deployment, backref="targets", on_delete="CASCADE")
    server = pw.ForeignKeyField(Server, backref="targets", on_delete="RESTRICT")
    position = pw.IntegerField(default=0)
    state = pw.CharField(max_length=32, default="PENDING")
    message = pw.TextField(default="")
    update_time = pw.DateTimeField(default=utcnow)
    members = pw.TextField(default="[]")  # a pipeline's: [[model, version, state, message], ...]

    class Meta:
        indexes = ((("deployment", "server"), True),)


class DeploymentMember(BaseModel):
    """A member model version a deployed pipeline pins (its ensemble steps name it)."""

    deployment = pw.ForeignKeyField(Deployment, backref="members", on_delete="CASCADE")
    model = pw.ForeignKeyField(Model, backref="deployed_as_member", on_delete="RESTRICT")
    version = pw.BigIntegerField()
    config = pw.TextField()  # the config.pbtxt Triton gets, settings applied


class AuditEvent(BaseModel):
    """Who did what to which resource, when, and how it ended."""

    id = pw.AutoField()
    time = pw.DateTimeField(default=utcnow, index=True)
    actor = pw.CharField(max_length=300, index=True)
    key_prefix = pw.CharField(max_length=32)
    method = pw.CharField(max_length=200)
    resource = pw.CharField(max_length=300, index=True)
    # Text since schema 22: MLServe's own events (an eviction, a scale-up) say why.
    outcome = pw.TextField()


class InferenceCount(BaseModel):
    """Inferences served per model version, flushed from memory every few seconds."""

    model = pw.CharField(max_length=128)
    version = pw.BigIntegerField()
    count = pw.BigIntegerField(default=0)
    failures = pw.BigIntegerField(default=0)
    last_time = pw.DateTimeField(null=True)

    class Meta:
        indexes = ((("model", "version"), True),)


class LoggingPolicy(BaseModel):
    """Which calls to a deployment the inference log records (owned by mlserve.monitor).

    Keyed by deployment name, not a foreign key: a model's and a pipeline's
    deployments share the name space, and a policy may be set before deploying.
    """

    deployment = pw.CharField(primary_key=True, max_length=128)
    mode = pw.CharField(max_length=16)
    sample_rate = pw.DoubleField()
    sampling_key = pw.CharField(max_length=256, default="")
    max_payload_bytes = pw.BigIntegerField()
    update_time = pw.DateTimeField(default=utcnow)


class Assay(BaseModel):
    """A drift assay over a model's (or, schema 17, a pipeline's) inference log
    (owned by mlserve.assays); exactly one of ``model`` and ``pipeline`` is set.

    The spec (path, baseline, window, summarizer) is one JSON document: it is
    only ever read whole. ``next_window`` is where the scheduler goes on.
    ``baseline_summary`` (JSON) and ``baseline_values`` (float64 bytes, only for
    the metrics that read them) keep the baseline as binned when the assay was
    created or last re-binned (schema 25, mlserve.assays.binned); NULL before.
    """

    id = pw.AutoField()
    name = pw.CharField(unique=True, max_length=128)
    model = pw.ForeignKeyField(Model, null=True, backref="assays", on_delete="CASCADE")
    spec = pw.TextField()
    active = pw.BooleanField(default=True, index=True)
    next_window = pw.DateTimeField(null=True)
    create_time = pw.DateTimeField(default=utcnow)
    update_time = pw.DateTimeField(default=utcnow)
    pipeline = pw.ForeignKeyField(Pipeline, null=True, backref="assays", on_delete="CASCADE")
    baseline_summary = pw.TextField(null=True)
    baseline_values = pw.BlobField(null=True)


class AssayResult(BaseModel):
    """One scheduled window of an assay; (assay, window_start) is unique, so several
    replicas never store a window twice."""

    id = pw.AutoField()
    assay = pw.ForeignKeyField(Assay, backref="results", on_delete="CASCADE")
    window_start = pw.DateTimeField()
    window_end = pw.DateTimeField()
    count = pw.BigIntegerField()
    result = pw.TextField()  # JSON: edges, both densities, per-bin scores, score, status
    status = pw.CharField(max_length=16)
    compute_time = pw.DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("assay", "window_start"), True),)


class TrainingJob(BaseModel):
    """One training job (owned by mlserve.training; schema 19): what was asked, where it
    is, and what it made. Keyset-paged newest first by id; deleting the model deletes
    its jobs. The dataset is kept by name and number: a job does not hold its
    dataset back from deletion (it copied the files before it ran)."""

    id = pw.AutoField()
    job_id = pw.CharField(unique=True, max_length=64)
    model = pw.ForeignKeyField(Model, backref="training_jobs", on_delete="CASCADE")
    code_version = pw.BigIntegerField()
    code_path = pw.TextField()
    code_sha256 = pw.CharField(max_length=64, default="")
    # Schema 21: the script from a dataset version instead of a code artifact.
    code_dataset = pw.CharField(max_length=128, default="")
    code_dataset_version = pw.BigIntegerField(default=0)
    dataset = pw.CharField(max_length=128)
    dataset_version = pw.BigIntegerField()
    dataset_sha256 = pw.CharField(max_length=64, default="")
    parameters = pw.TextField(default="{}")  # JSON object of strings
    env_path = pw.TextField(default="")
    env_sha256 = pw.CharField(max_length=64, default="")
    env_requirements = pw.TextField(default="[]")  # JSON list of requirement strings
    runner_labels = pw.TextField(default="[]")  # JSON list
    network = pw.BooleanField(default=False)
    # The MLServe instance whose runner has it: a restart fails only its own jobs.
    instance = pw.CharField(max_length=253)
    state = pw.CharField(max_length=16)
    reason = pw.TextField(default="")
    metrics = pw.TextField(default="{}")  # JSON object of numbers
    version = pw.BigIntegerField(default=0)
    create_time = pw.DateTimeField(default=utcnow)
    start_time = pw.DateTimeField(null=True)
    end_time = pw.DateTimeField(null=True)

    class Meta:
        table_name = "training_job"
        indexes = ((("model", "id"), False), (("state", "id"), False))


class BusyMark(BaseModel):
    """MLServe process ``process`` has requests in flight for ``model`` on ``server``
    ("" = any of its servers: requests waiting for its on-demand load) until
    ``expire_time`` at least (schema 22, owned by mlserve.deploy.busy). Refreshed
    while the process stays busy; a crashed process's marks simply expire."""

    process = pw.CharField(max_length=253)
    server = pw.CharField(max_length=128)
    model = pw.CharField(max_length=128)
    expire_time = pw.DateTimeField(index=True)

    class Meta:
        table_name = "busy_mark"
        indexes = ((("process", "server", "model"), True),)


class TrainingJobLogLine(BaseModel):
    """One line of a training job's log (owned by mlserve.training; schema 24), so every
    replica and worker reads it and it outlives the process that ran the job. ``seq``
    numbers the job's lines from 1 as the script printed them; only the newest
    ``--training-log-lines`` of a job are kept (older ones are deleted as new ones
    come). Deleting the job (with its model) deletes its lines."""

    id = pw.AutoField()
    job = pw.ForeignKeyField(
        TrainingJob, field=TrainingJob.job_id, backref="log_lines", on_delete="CASCADE"
    )
    seq = pw.BigIntegerField()
    line = pw.TextField()

    class Meta:
        table_name = "training_job_log_line"
        indexes = ((("job", "seq"), True),)


TABLES: list[type[BaseModel]] = [
    SchemaInfo,
    Setting,
    ApiKey,
    Model,
    ModelTag,
    ModelLabel,
    ModelVersion,
    Upload,
    Server,
    Pipeline,
    PipelineVersion,
    Deployment,
    DeploymentTarget,
    DeploymentMember,
    InferenceCount,
    Blob,
    VersionFile,
    BlobPin,
    Artifact,
    Workspace,
    User,
    WorkspaceMember,
    App,
    AppRoute,
    AppConsumer,
    AuditEvent,
    LoggingPolicy,
    OidcIdentity,
    UploadPart,
    Dataset,
    DatasetTag,
    DatasetVersion,
    DatasetFile,
    Assay,
    AssayResult,
    TrainingJob,
    BusyMark,
    TrainingJobLogLine,
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


def _add_model_metadata(db: pw.Database) -> None:
    """Issue 5's catalog: metadata columns, their indexes, and model_label."""
    migrator = SchemaMigrator.from_database(db)
    text_columns = {
        "hyperparameters": "{}",
        "performance": "[]",
        "training_resources": "[]",
        "run_resources": "[]",
        "features": "[]",
        "inference": "{}",
        "drift_detection": "{}",
    }
    migrate_schema(
        migrator.add_column("model", "kind", pw.CharField(max_length=32, default="")),
        *(
            migrator.add_column("model", column, pw.TextField(default=empty))
            for column, empty in text_columns.items()
        ),
        migrator.add_index("model", ("kind",)),
        migrator.add_index("model", ("create_time", "id")),
        migrator.add_index("model", ("update_time", "id")),
        migrator.add_index("model_tag", ("tag", "model_id")),
    )
    db.create_tables([ModelLabel])
    query = Model.select(Model.id, Model.labels).tuples()
    rows: list[tuple[int, str]] = list(query)  # type: ignore[arg-type]  # .tuples()
    pairs = [
        {"model": model_id, "key": key, "value": value}
        for model_id, labels in rows
        for key, value in json.loads(labels).items()
    ]
    for start in range(0, len(pairs), 500):
        ModelLabel.insert_many(pairs[start : start + 500]).execute()


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


# The pipeline deployment tables as schemas 7 to 11 had them, frozen for the
# migrations that create (6) and fold (11) them; schema 12 keeps pipeline
# deployments in deployment / deployment_target / deployment_member. They
# point at stand-ins of the tables they reference, so that the live models
# (Pipeline, Model, Server) know nothing of them (a recursive delete would
# look for their rows).
class _UnfoldedPipeline(BaseModel):
    class Meta:
        table_name = "pipeline"


class _UnfoldedModel(BaseModel):
    class Meta:
        table_name = "model"


class _UnfoldedServer(BaseModel):
    class Meta:
        table_name = "server"


class _UnfoldedPipelineDeployment(BaseModel):
    pipeline = pw.ForeignKeyField(_UnfoldedPipeline, on_delete="RESTRICT")
    version = pw.BigIntegerField()
    create_time = pw.DateTimeField(default=utcnow)
    update_time = pw.DateTimeField(default=utcnow)

    class Meta:
        table_name = "pipeline_deployment"
        indexes = ((("pipeline",), True),)


class _UnfoldedPipelineMember(BaseModel):
    deployment = pw.ForeignKeyField(_UnfoldedPipelineDeployment, on_delete="CASCADE")
    model = pw.ForeignKeyField(_UnfoldedModel, on_delete="RESTRICT")
    version = pw.BigIntegerField()
    config = pw.TextField()

    class Meta:
        table_name = "pipeline_member"


class _UnfoldedPipelineTarget(BaseModel):
    deployment = pw.ForeignKeyField(_UnfoldedPipelineDeployment, on_delete="CASCADE")
    server = pw.ForeignKeyField(_UnfoldedServer, on_delete="RESTRICT")
    position = pw.IntegerField(default=0)
    state = pw.CharField(max_length=32, default="PENDING")
    message = pw.TextField(default="")
    members = pw.TextField(default="[]")
    update_time = pw.DateTimeField(default=utcnow)

    class Meta:
        table_name = "pipeline_target"
        indexes = ((("deployment", "server"), True),)


_UNFOLDED_PIPELINE_DEPLOYMENT_TABLES: list[type[BaseModel]] = [
    _UnfoldedPipelineDeployment,
    _UnfoldedPipelineMember,
    _UnfoldedPipelineTarget,
]


def _add_pipelines(db: pw.Database) -> None:
    db.create_tables([Pipeline, PipelineVersion])
    for table in _UNFOLDED_PIPELINE_DEPLOYMENT_TABLES:  # only these, not their stand-ins
        table.create_table()
    migrator = SchemaMigrator.from_database(db)
    migrate_schema(migrator.add_column("deployment", "serving", Deployment.serving))


def _add_upload_owners(db: pw.Database) -> None:
    """Uploads gain an owner and a staging size; older uploads have neither (admins only)."""
    migrator = SchemaMigrator.from_database(db)
    migrate_schema(
        migrator.add_column("upload", "owner_id", Upload.owner),
        migrator.add_column("upload", "staging_bytes", Upload.staging_bytes),
        migrator.add_index("upload", ("committed_version", "update_time")),
    )


def _add_server_workspaces(db: pw.Database) -> None:
    migrator = SchemaMigrator.from_database(db)
    migrate_schema(migrator.add_column("server", "workspaces", Server.workspaces))


_NEW_ID = (
    'JOIN "pipeline_deployment" d ON d."id" = old."deployment_id" '
    'JOIN "deployment" n ON n."pipeline_id" = d."pipeline_id"'
)
_FOLD_PIPELINE_DEPLOYMENTS = (
    'INSERT INTO "deployment" '
    '("name", "pipeline_id", "version", "create_time", "update_time", "serving") '
    'SELECT p."name", p."id", d."version", d."create_time", d."update_time", \'{}\' '
    'FROM "pipeline_deployment" d JOIN "pipeline" p ON p."id" = d."pipeline_id"',
    'INSERT INTO "deployment_target" ("deployment_id", "server_id", "position", "state", '
    '"message", "update_time", "members") SELECT n."id", old."server_id", old."position", '
    'old."state", old."message", old."update_time", old."members" '
    f'FROM "pipeline_target" old {_NEW_ID}',
    'INSERT INTO "deployment_member" ("deployment_id", "model_id", "version", "config") '
    'SELECT n."id", old."model_id", old."version", old."config" '
    f'FROM "pipeline_member" old {_NEW_ID}',
)


def _fold_pipeline_deployments(db: pw.Database) -> None:
    """One deployment table for models and pipelines.

    Each pipeline deployment becomes a deployment row named after its
    pipeline (no model, no serving settings), its targets deployment_target
    rows (with their member states), its members deployment_member rows.
    """
    migrator = SchemaMigrator.from_database(db)
    migrate_schema(
        migrator.add_column("deployment", "pipeline_id", Deployment.pipeline),
        migrator.drop_not_null("deployment", "model_id"),
        migrator.add_column("deployment_target", "members", DeploymentTarget.members),
    )
    db.create_tables([DeploymentMember])
    # Plain SQL naming every column: later schemas may add columns these
    # tables do not have yet when this step runs.
    for statement in _FOLD_PIPELINE_DEPLOYMENTS:
        db.execute_sql(statement)  # type: ignore[no-untyped-call]
    db.drop_tables(list(reversed(_UNFOLDED_PIPELINE_DEPLOYMENT_TABLES)))


def _add_logging_policies(db: pw.Database) -> None:
    db.create_tables([LoggingPolicy])


def _add_oidc_identities(db: pw.Database) -> None:
    db.create_tables([OidcIdentity])


def _add_upload_parts(db: pw.Database) -> None:
    db.create_tables([UploadPart])


def _add_datasets(db: pw.Database) -> None:
    """Datasets (issue 15), and the training dataset a model version names."""
    db.create_tables([Dataset, DatasetTag, DatasetVersion, DatasetFile])
    migrator = SchemaMigrator.from_database(db)
    migrate_schema(
        # An indexed column: add_column makes its index too.
        migrator.add_column("model_version", "training_dataset_id", ModelVersion.training_dataset),
    )


def _add_assays(db: pw.Database) -> None:
    db.create_tables([Assay, AssayResult])


def _add_load_timeouts(db: pw.Database) -> None:
    """Each deployment's load deadline (issue 11)."""
    migrate_schema(
        SchemaMigrator.from_database(db).add_column(
            "deployment", "load_timeout", Deployment.load_timeout
        )
    )


def _add_pipeline_assays(db: pw.Database) -> None:
    """An assay may read a pipeline's log instead of a model's (issue 14).

    Schema 14 created the assay table from the current class, so a database
    that passed through it since has the new column already.
    """
    columns = {column.name: column for column in db.get_columns("assay")}
    if "pipeline_id" in columns:
        return
    migrator = SchemaMigrator.from_database(db)
    migrate_schema(
        migrator.add_column("assay", "pipeline_id", Assay.pipeline),
        migrator.drop_not_null("assay", "model_id"),
    )


def _add_capacities(db: pw.Database) -> None:
    """Servers' capacities and versions' measured memory (issue 16)."""
    migrator = SchemaMigrator.from_database(db)
    migrate_schema(
        migrator.add_column("server", "gpu_count", Server.gpu_count),
        migrator.add_column("server", "gpu_memory", Server.gpu_memory),
        migrator.add_column("server", "host_memory", Server.host_memory),
        migrator.add_column("model_version", "measured_memory", ModelVersion.measured_memory),
        migrator.add_column("model_version", "measured_on", ModelVersion.measured_on),
        migrator.add_column("model_version", "measurement", ModelVersion.measurement),
        migrator.add_column("model_version", "measure_time", ModelVersion.measure_time),
    )


def _add_training_jobs(db: pw.Database) -> None:
    """Training jobs in the database, not only in a process's memory (issue 15)."""
    db.create_tables([TrainingJob])


def _add_on_demand_loading(db: pw.Database) -> None:
    """Deployments loaded on demand, their copies, idle unloading and pins (issue 16)."""
    migrator = SchemaMigrator.from_database(db)
    migrate_schema(
        *(
            migrator.add_column("deployment", column, getattr(Deployment, column))
            for column in ("loading", "min_copies", "max_copies", "idle_unload_after", "pinned")
        )
    )


def _add_training_code_datasets(db: pw.Database) -> None:
    """A training job's script may come from a dataset version (issue 15).

    Schema 18's migration creates the table from the current class, so a database
    that passed through it since has the columns already.
    """
    columns = {column.name for column in db.get_columns("training_job")}
    if "code_dataset" in columns:
        return
    migrator = SchemaMigrator.from_database(db)
    migrate_schema(
        migrator.add_column("training_job", "code_dataset", TrainingJob.code_dataset),
        migrator.add_column(
            "training_job", "code_dataset_version", TrainingJob.code_dataset_version
        ),
    )


def _add_blob_locations(db: pw.Database) -> None:
    """A blob's object key in the bucket, and the key an upload's parts complete at
    (issue 16: no copy from a staging key to the blob's).

    Schemas 4 and 12 create these tables from the current classes, so a database
    that passed through them since has the columns already.
    """
    migrator = SchemaMigrator.from_database(db)
    missing = [
        migrator.add_column(table, column.column_name, column)
        for table, column in (("blob", Blob.location), ("upload_part", UploadPart.key))
        if column.column_name not in {c.name for c in db.get_columns(table)}
    ]
    if missing:
        migrate_schema(*missing)


def _add_part_checksums(db: pw.Database) -> None:
    """Each upload part's CRC32: multipart uploads declare it, as boto3's own do, so S3
    keeps a composite CRC32 of the object (and moto need not checksum it whole).

    Schema 12 creates the table from the current class, so a database that passed
    through it since has the column already.
    """
    if "checksum" not in {c.name for c in db.get_columns("upload_part")}:
        migrator = SchemaMigrator.from_database(db)
        migrate_schema(migrator.add_column("upload_part", "checksum", UploadPart.checksum))


def _add_busy_marks(db: pw.Database) -> None:
    """Requests in flight, shared by every MLServe process on the database; and audit
    outcomes of any length, for the eviction and scale-up events that say why (on
    PostgreSQL their 32 characters refused them; issue 16)."""
    db.create_tables([BusyMark])
    if isinstance(db, pw.PostgresqlDatabase):  # SQLite never enforced the length
        db.execute_sql('ALTER TABLE "audit_event" ALTER COLUMN "outcome" TYPE TEXT')  # type: ignore[no-untyped-call]


def _add_training_job_logs(db: pw.Database) -> None:
    """Training jobs' log lines in the database, readable by every replica (issue 15)."""
    db.create_tables([TrainingJobLogLine])


def _add_assay_baselines(db: pw.Database) -> None:
    """Assays keep their binned baseline (issue 14); rows stored before have none
    and are binned at first use.

    Schema 14 creates the assay table from the current class, so a database that
    passed through it since has the columns already.
    """
    columns = {column.name for column in db.get_columns("assay")}
    if "baseline_summary" in columns:
        return
    migrator = SchemaMigrator.from_database(db)
    migrate_schema(
        migrator.add_column("assay", "baseline_summary", Assay.baseline_summary),
        migrator.add_column("assay", "baseline_values", Assay.baseline_values),
    )


MIGRATIONS: dict[int, Callable[[pw.Database], None]] = {
    1: _add_inference_counts,
    2: _add_shares_repository,
    3: _add_model_metadata,
    4: _add_blobs_and_artifacts,
    5: _add_access_control,
    6: _add_pipelines,
    7: _add_server_workspaces,
    8: _add_upload_owners,
    9: _add_logging_policies,
    10: _add_oidc_identities,
    11: _fold_pipeline_deployments,
    12: _add_upload_parts,
    13: _add_datasets,
    14: _add_assays,
    15: _add_load_timeouts,
    16: _add_pipeline_assays,
    17: _add_capacities,
    18: _add_training_jobs,
    19: _add_on_demand_loading,
    20: _add_training_code_datasets,
    21: _add_busy_marks,
    22: _add_blob_locations,
    23: _add_training_job_logs,
    24: _add_assay_baselines,
    25: _add_part_checksums,
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
