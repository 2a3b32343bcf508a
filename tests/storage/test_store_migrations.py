"""An older database opens under the current schema with every row intact,
on SQLite and on PostgreSQL (``database_url`` gives a new database of each)."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import peewee as pw
import psycopg2
import pytest
from playhouse.migrate import SchemaMigrator
from playhouse.migrate import migrate as migrate_schema

from mlserve.storage import db, tables
from tests.support.databases import close_database

DATA = Path(__file__).resolve().parent / "data"
WHEN = dt.datetime(
    2026, 11, 1, 12, 0, 0
)  # as tests/storage/data/make_foundation_databases.py wrote


def restore_foundation(url: str) -> None:
    """Put the saved foundation-schema database (schema 3, 12c1548) at ``url``."""
    if url.startswith("sqlite:///"):
        shutil.copyfile(DATA / "foundation.sqlite3", url.removeprefix("sqlite:///"))
        return
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cursor:
            cursor.execute((DATA / "foundation.postgresql.sql").read_text())
    finally:
        conn.close()


def test_foundation_database_opens_with_every_row_intact(database_url: str) -> None:
    restore_foundation(database_url)
    opened = tables.connect(database_url)
    try:
        assert tables.SchemaInfo.get().version == tables.SCHEMA_VERSION
        assert bytes(tables.Setting.get_by_id("page_token_secret").value) == b"\x00\x01secret\xff"
        key = tables.ApiKey.get(tables.ApiKey.prefix == "oldprefix")
        assert (key.owner, key.role, key.revoked, key.create_time) == (
            "admin",
            "admin",
            False,
            WHEN,
        )

        resnet = tables.Model.get(tables.Model.name == "resnet")
        assert (resnet.description, json.loads(resnet.labels)) == (
            "image classifier",
            {"team": "vision"},
        )
        assert (resnet.create_time, resnet.update_time) == (WHEN, WHEN)
        assert sorted(row.tag for row in resnet.tag_rows) == ["prod", "vision"]
        assert tables.Model.get(tables.Model.name == "empty").description == ""
        # Schema 4 (model metadata): the label JSON is indexed in model_label,
        # the new columns hold their empty values, the keyset indexes exist.
        labels = {(row.key, row.value) for row in tables.ModelLabel.select()}
        assert labels == {("team", "vision")}
        assert (resnet.kind, resnet.features, resnet.hyperparameters) == ("", "[]", "{}")
        indexes = {index.name for index in opened.get_indexes("model")}
        assert {"model_kind", "model_create_time_id", "model_update_time_id"} <= indexes
        versions = {row.version: row for row in resnet.versions}
        assert sorted(versions) == [1, 2]
        assert json.loads(versions[2].files) == [["model.py", 20, f"{2:064x}"]]
        assert (versions[2].sha256, versions[2].size_bytes) == (f"{12:064x}", 20)
        uploads = {row.upload_id: row.committed_version for row in tables.Upload.select()}
        assert uploads == {"upload-1": 1, "upload-2": 2}

        servers = {row.name: row for row in tables.Server.select()}
        assert (servers["local"].embedded, servers["local"].shares_repository) == (True, True)
        assert (servers["remote"].embedded, servers["remote"].shares_repository) == (False, False)
        assert json.loads(servers["remote"].labels) == {"zone": "b"}
        deployment = tables.Deployment.get(tables.Deployment.name == "resnet")
        assert (deployment.model.name, deployment.version) == ("resnet", 2)
        targets = [
            (target.server.name, target.state)
            for target in deployment.targets.order_by(tables.DeploymentTarget.position)
        ]
        assert targets == [("local", "READY"), ("remote", "READY")]
        count = tables.InferenceCount.get()
        assert (count.model, count.version, count.count, count.failures, count.last_time) == (
            "resnet",
            2,
            42,
            1,
            WHEN,
        )

        # New rows take fresh ids: PostgreSQL's sequences came along.
        fresh = tables.Model.create(name="after-migration")
        assert fresh.id > resnet.id
        tables.ModelVersion.create(
            model=resnet, version=3, sha256="f" * 64, size_bytes=0, files="[]", config="",
            upload_id="upload-3",
        )  # fmt: skip
        assert tables.ModelVersion.select().count() == 3
        # Schema 5 (content-addressed files): uploads gained their artifact
        # columns, and the blob tables take rows that point at old versions.
        upload = tables.Upload.get(tables.Upload.upload_id == "upload-2")
        assert (upload.artifact_kind, upload.artifact_version) == ("", 0)
        blob = tables.Blob.create(sha256="a" * 64, size=3)
        tables.VersionFile.create(version=versions[2], path="model.py", blob=blob)
        tables.BlobPin.create(upload=upload, blob=blob)
        # Schema 6 (access control): the key's owner became a user with the
        # key's role and a default workspace it owns; the old key keeps its
        # sha256 hash (re-hashed on first use); models moved into the admin's
        # workspace, private, with both flags on.
        admin = tables.User.get(tables.User.name == "admin")
        assert (admin.role, admin.active, admin.default_workspace.name) == ("admin", True, "admin")
        key = tables.ApiKey.get(tables.ApiKey.prefix == "oldprefix")
        assert (key.user_id, key.algorithm) == (admin.id, "sha256")
        member = tables.WorkspaceMember.get(tables.WorkspaceMember.user == admin)
        assert (member.workspace_id, member.role) == (admin.default_workspace_id, "owner")
        for model in tables.Model.select().where(tables.Model.name.in_(["resnet", "empty"])):
            flags = (model.visibility, model.allow_download, model.allow_remote_inference)
            assert (model.workspace_id, flags) == (
                admin.default_workspace_id,
                ("private", True, True),
            )
        # Schema 7 (pipelines): deployments keep their rows with no serving
        # settings, and the pipeline tables take rows.
        assert tables.Deployment.get(tables.Deployment.name == "resnet").serving == "{}"
        tables.Pipeline.create(name="chain")
    finally:
        close_database(opened)


def test_schema_1_database_is_migrated_without_losing_rows(database_url: str) -> None:
    restore_foundation(database_url)
    # Take the saved database back to what the foundation's first schema wrote.
    opened = db.open_database(database_url)
    opened.execute_sql('DROP TABLE "inference_count"')
    opened.execute_sql('ALTER TABLE "server" DROP COLUMN "shares_repository"')
    opened.execute_sql('UPDATE "schema_info" SET "version" = 1')
    close_database(opened)

    opened = tables.connect(database_url)
    try:
        assert tables.SchemaInfo.get().version == tables.SCHEMA_VERSION
        assert tables.Model.get(tables.Model.name == "resnet").description == "image classifier"
        shares = {row.name: row.shares_repository for row in tables.Server.select()}
        assert shares == {"local": True, "remote": False}
        assert tables.DeploymentTarget.select().count() == 2
        tables.InferenceCount.create(model="resnet", version=1, count=1)
    finally:
        close_database(opened)


def test_newer_database_is_refused(database_url: str) -> None:
    opened = tables.connect(database_url)
    tables.SchemaInfo.update(version=tables.SCHEMA_VERSION + 1).execute()
    close_database(opened)
    with pytest.raises(RuntimeError, match="newer than this MLServe"):
        tables.connect(database_url)


def test_schema_11_pipeline_deployments_fold_into_deployments(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    restore_foundation(database_url)
    # Bring the foundation to schema 11 and deploy a pipeline there, as schema 11 did.
    with monkeypatch.context() as schema_11:
        schema_11.setattr(tables, "SCHEMA_VERSION", 11)
        opened = tables.connect(database_url)
    mark = opened.param

    def insert(sql: str, *values: object) -> None:
        opened.execute_sql(sql.replace("?", mark), values)

    with opened.atomic():
        resnet = tables.Model.get(tables.Model.name == "resnet")
        pipeline = tables.Pipeline.create(name="chain")
        tables.PipelineVersion.create(pipeline=pipeline, version=1, spec="{}")
        insert(
            'INSERT INTO "pipeline_deployment" ("id", "pipeline_id", "version", "create_time", '
            '"update_time") VALUES (7, ?, 1, ?, ?)',
            pipeline.id, WHEN, WHEN,
        )  # fmt: skip
        members = json.dumps([["resnet", 2, "READY", ""]])
        # Only the columns schema 11 had (later schemas add capacities).
        servers = tables.Server.select(tables.Server.id, tables.Server.name)
        for position, server in enumerate(servers.order_by(tables.Server.name)):
            insert(
                'INSERT INTO "pipeline_target" ("deployment_id", "server_id", "position", '
                '"state", "message", "members", "update_time") VALUES (7, ?, ?, ?, ?, ?, ?)',
                server.id, position, "READY", "", members, WHEN,
            )  # fmt: skip
        insert(
            'INSERT INTO "pipeline_member" ("deployment_id", "model_id", "version", "config") '
            "VALUES (7, ?, 2, ?)",
            resnet.id, 'backend: "python"',
        )  # fmt: skip
    close_database(opened)

    opened = tables.connect(database_url)
    try:
        assert tables.SchemaInfo.get().version == tables.SCHEMA_VERSION
        model = tables.Deployment.get(tables.Deployment.name == "resnet")
        assert (model.model.name, model.pipeline, model.version) == ("resnet", None, 2)
        assert model.targets.count() == 2
        folded = tables.Deployment.get(tables.Deployment.name == "chain")
        assert (folded.model, folded.pipeline.name, folded.version) == (None, "chain", 1)
        assert (folded.create_time, folded.serving) == (WHEN, "{}")
        targets = [
            (t.server.name, t.position, t.state, json.loads(t.members), t.update_time)
            for t in folded.targets.order_by(tables.DeploymentTarget.position)
        ]
        assert targets == [
            ("local", 0, "READY", [["resnet", 2, "READY", ""]], WHEN),
            ("remote", 1, "READY", [["resnet", 2, "READY", ""]], WHEN),
        ]
        assert [(m.model.name, m.version, m.config) for m in folded.members] == [
            ("resnet", 2, 'backend: "python"')
        ]
        assert not any(
            opened.table_exists(name)
            for name in ("pipeline_deployment", "pipeline_target", "pipeline_member")
        )
        # Model targets kept no members; a new pipeline deployment takes the same table.
        assert {t.members for t in model.targets} == {"[]"}
    finally:
        close_database(opened)


class _Schema16Assay(tables.BaseModel):
    """The assay table as schema 14 to 16 made it."""

    name = pw.CharField(unique=True, max_length=128)
    model = pw.ForeignKeyField(tables.Model, on_delete="CASCADE")
    spec = pw.TextField()
    active = pw.BooleanField(default=True, index=True)
    next_window = pw.DateTimeField(null=True)
    create_time = pw.DateTimeField()
    update_time = pw.DateTimeField()

    class Meta:
        table_name = "assay"


def test_schema_16_assays_keep_their_rows_and_may_name_a_pipeline(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    restore_foundation(database_url)
    with monkeypatch.context() as schema_16:
        schema_16.setattr(tables, "SCHEMA_VERSION", 16)
        opened = tables.connect(database_url)
    # Schema 14 creates the assay table from today's class; make it what schema 16 had:
    # no pipeline column, and a model required.
    opened.drop_tables([tables.AssayResult, tables.Assay])
    opened.create_tables([_Schema16Assay, tables.AssayResult])
    resnet = tables.Model.get(tables.Model.name == "resnet")
    _Schema16Assay.create(
        id=3, name="drift", model=resnet, spec="{}", create_time=WHEN, update_time=WHEN
    )
    tables.AssayResult.insert(
        assay=3, window_start=WHEN, window_end=WHEN, count=5, result="{}", status="ok",
        compute_time=WHEN,
    ).execute()  # fmt: skip
    close_database(opened)

    opened = tables.connect(database_url)
    try:
        assert tables.SchemaInfo.get().version == tables.SCHEMA_VERSION
        kept = tables.Assay.get(tables.Assay.name == "drift")
        assert (kept.model.name, kept.pipeline, kept.create_time) == ("resnet", None, WHEN)
        assert [(r.count, r.status) for r in kept.results] == [(5, "ok")]
        chain = tables.Pipeline.create(name="chain")
        tables.Assay.create(name="chain-drift", pipeline=chain, spec="{}")
        chain.delete_instance()  # the database cascades to the pipeline's assays
        assert not tables.Assay.select().where(tables.Assay.name == "chain-drift").exists()
        # The rebuilt table (SQLite) kept the model's cascade too.
        scratch = tables.Model.create(name="scratch")
        tables.Assay.create(name="scratch-drift", model=scratch, spec="{}")
        scratch.delete_instance()
        assert not tables.Assay.select().where(tables.Assay.name == "scratch-drift").exists()
    finally:
        close_database(opened)


def opened_at_schema(
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    version: int,
    added_later: Sequence[tuple[str, str]],
) -> pw.Database:
    """The foundation database migrated up to schema ``version`` only, open, without
    the (table, column)s of ``added_later``: an earlier migration that creates a
    table from today's class made them already."""
    restore_foundation(database_url)
    with monkeypatch.context() as older:
        older.setattr(tables, "SCHEMA_VERSION", version)
        opened = tables.connect(database_url)
    migrator = SchemaMigrator.from_database(opened)
    migrate_schema(*(migrator.drop_column(table, column) for table, column in added_later))
    return opened


def insert_sql(database_url: str, sql: str, params: tuple[object, ...] = ()) -> None:
    """Run ``sql`` with %s placeholders on either database kind."""
    placeholder = "?" if database_url.startswith("sqlite") else "%s"
    db.database.execute_sql(sql.replace("%s", placeholder), params)


def test_schema_20_training_jobs_keep_their_rows_and_gain_a_code_dataset(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Schema 18 creates training_job from today's class; make it what schema 20 had.
    added = [("training_job", "code_dataset"), ("training_job", "code_dataset_version")]
    opened = opened_at_schema(database_url, monkeypatch, 20, added)
    resnet = tables.Model.get(tables.Model.name == "resnet")
    insert_sql(
        database_url,
        "INSERT INTO training_job (job_id, model_id, code_version, code_path, code_sha256, "
        "dataset, dataset_version, dataset_sha256, parameters, env_path, env_sha256, "
        "env_requirements, runner_labels, network, instance, state, reason, metrics, version, "
        "create_time) VALUES ('job-old', %s, 1, 'train.py', 'c', 'ds', 1, 'd', '{}', '', '', "
        "'[]', '[]', %s, 'here', 'SUCCEEDED', '', '{}', 2, %s)",
        (resnet.id, False, WHEN),
    )
    close_database(opened)

    opened = tables.connect(database_url)
    try:
        assert tables.SchemaInfo.get().version == tables.SCHEMA_VERSION
        kept = tables.TrainingJob.get(tables.TrainingJob.job_id == "job-old")
        assert (kept.model.name, kept.version, kept.create_time) == ("resnet", 2, WHEN)
        assert (kept.code_dataset, kept.code_dataset_version) == ("", 0)
        scratch = tables.Model.create(name="scratch")
        tables.TrainingJob.create(
            job_id="job-new", model=scratch, code_version=0, code_path="train.py",
            code_dataset="code", code_dataset_version=3, dataset="ds", dataset_version=1,
            instance="here", state="QUEUED",
        )  # fmt: skip
        scratch.delete_instance()  # the rebuilt table (SQLite) kept the model's cascade
        assert [job.job_id for job in tables.TrainingJob.select()] == ["job-old"]
    finally:
        close_database(opened)


def test_schema_21_gains_busy_marks_and_audit_outcomes_of_any_length(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened = opened_at_schema(database_url, monkeypatch, 21, [])
    assert not opened.table_exists("busy_mark")
    if isinstance(opened, pw.PostgresqlDatabase):  # schema 5 makes it from today's class
        opened.execute_sql('ALTER TABLE "audit_event" ALTER COLUMN "outcome" TYPE VARCHAR(32)')
    insert_sql(
        database_url,
        "INSERT INTO audit_event (time, actor, key_prefix, method, resource, outcome) "
        "VALUES (%s, 'admin', 'k', 'CreateModel', 'm', 'OK')",
        (WHEN,),
    )
    close_database(opened)

    opened = tables.connect(database_url)
    try:
        assert tables.SchemaInfo.get().version == tables.SCHEMA_VERSION
        assert [e.outcome for e in tables.AuditEvent.select()] == ["OK"]
        why = "evicted to make room for 'big' on server 'local': " + "x" * 200
        tables.AuditEvent.create(actor="mlserve", key_prefix="", method="Evict",
                                 resource="m", outcome=why)  # fmt: skip
        assert tables.AuditEvent.get(tables.AuditEvent.method == "Evict").outcome == why
        tables.BusyMark.create(process="p", server="s", model="m", expire_time=WHEN)
        assert tables.BusyMark.select().count() == 1
    finally:
        close_database(opened)


def test_schema_22_blobs_and_upload_parts_keep_their_rows_and_gain_locations(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Schemas 4 and 12 create these tables from today's classes; make them schema 22's.
    added = [("blob", "location"), ("upload_part", "key"), ("upload_part", "checksum")]
    opened = opened_at_schema(database_url, monkeypatch, 22, added)
    sha = "ab" * 32
    insert_sql(
        database_url, "INSERT INTO blob (sha256, size, create_time) VALUES (%s, 5, %s)", (sha, WHEN)
    )
    tables.Upload.create(upload_id="old", model="m", files="[]", config="", manifest_sha256="0")
    insert_sql(
        database_url,
        "INSERT INTO upload_part (upload_id, path, multipart_id, number, size, etag) "
        "VALUES ('old', 'w.bin', 'mp', 1, 5242880, 'e')",
    )
    close_database(opened)

    opened = tables.connect(database_url)
    try:
        assert tables.SchemaInfo.get().version == tables.SCHEMA_VERSION
        blob = tables.Blob.get(tables.Blob.sha256 == sha)
        assert (blob.size, blob.create_time, blob.location) == (5, WHEN, "")
        part = tables.UploadPart.get()
        assert (part.upload_id, part.number, part.multipart_id, part.key) == ("old", 1, "mp", "")
        tables.Blob.create(sha256="cd" * 32, size=1, location="blobs/uploads/new/1")
        assert tables.Blob.get(tables.Blob.sha256 == "cd" * 32).location == "blobs/uploads/new/1"
    finally:
        close_database(opened)


def test_schema_23_gains_training_job_log_lines_that_go_with_their_job(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened = opened_at_schema(database_url, monkeypatch, 23, [])
    assert not opened.table_exists("training_job_log_line")
    close_database(opened)

    opened = tables.connect(database_url)
    try:
        assert tables.SchemaInfo.get().version == tables.SCHEMA_VERSION
        scratch = tables.Model.create(name="scratch")
        job = tables.TrainingJob.create(
            job_id="job-logged", model=scratch, code_version=1, code_path="train.py",
            dataset="ds", dataset_version=1, instance="here", state="RUNNING",
        )  # fmt: skip
        tables.TrainingJobLogLine.create(job=job.job_id, seq=1, line="epoch 1")
        with pytest.raises(pw.IntegrityError), opened.atomic():  # one row per line number
            tables.TrainingJobLogLine.create(job=job.job_id, seq=1, line="again")
        scratch.delete_instance()  # the model's jobs go, and their lines with them
        assert tables.TrainingJobLogLine.select().count() == 0
    finally:
        close_database(opened)


def test_schema_24_assays_keep_their_rows_and_gain_an_empty_kept_baseline(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Schema 14 creates the assay table from today's class; make it what schema 24 had.
    added = [("assay", "baseline_summary"), ("assay", "baseline_values")]
    opened = opened_at_schema(database_url, monkeypatch, 24, added)
    resnet = tables.Model.get(tables.Model.name == "resnet")
    insert_sql(
        database_url,
        "INSERT INTO assay (name, model_id, spec, active, create_time, update_time) "
        "VALUES ('drift', %s, '{}', %s, %s, %s)",
        (resnet.id, True, WHEN, WHEN),
    )
    close_database(opened)

    opened = tables.connect(database_url)
    try:
        assert tables.SchemaInfo.get().version == tables.SCHEMA_VERSION
        kept = tables.Assay.get(tables.Assay.name == "drift")
        assert (kept.model.name, kept.spec, kept.create_time) == ("resnet", "{}", WHEN)
        # None kept yet: mlserve.assays bins it at first use.
        assert (kept.baseline_summary, kept.baseline_values) == (None, None)
        tables.Assay.update(baseline_summary="{}", baseline_values=b"\x00\xff").execute()
        assert bytes(tables.Assay.get_by_id(kept.id).baseline_values) == b"\x00\xff"
    finally:
        close_database(opened)


def test_schema_25_upload_parts_keep_their_rows_and_gain_an_empty_checksum(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Schema 12 creates the table from today's class; make it what schema 25 had.
    opened = opened_at_schema(database_url, monkeypatch, 25, [("upload_part", "checksum")])
    tables.Upload.create(upload_id="old", model="m", files="[]", config="", manifest_sha256="0")
    insert_sql(
        database_url,
        "INSERT INTO upload_part (upload_id, path, multipart_id, number, size, etag, key) "
        "VALUES ('old', 'w.bin', 'mp', 1, 5242880, 'e', 'blobs/uploads/old/1')",
    )
    close_database(opened)

    opened = tables.connect(database_url)
    try:
        assert tables.SchemaInfo.get().version == tables.SCHEMA_VERSION
        part = tables.UploadPart.get()
        # Completed without a checksum, as the multipart upload was begun without one.
        assert (part.upload_id, part.number, part.etag, part.checksum) == ("old", 1, "e", "")
        tables.UploadPart.update(checksum="AAAAAA==").execute()
        assert tables.UploadPart.get().checksum == "AAAAAA=="
    finally:
        close_database(opened)
