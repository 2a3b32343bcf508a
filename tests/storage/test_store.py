"""The store on every database kind (``store_db``: SQLite and PostgreSQL).

Model rows and unique names, version numbering under real concurrency,
deployment rows and their foreign keys, inference counts from two replicas;
then, on PostgreSQL only, the pool's limit and a database restart seen
through ``db.run``. (Listing, filters and paging are the catalog's tests,
which take ``store_db`` too and so run on both kinds.)
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import peewee as pw
import pytest
from playhouse.pool import PooledDatabase

from mlserve.catalog.model_metadata import ModelFields
from mlserve.core.errors import AlreadyExists, FailedPrecondition, Unavailable
from mlserve.gateway.stats import InferenceStats
from mlserve.storage import db, tables
from mlserve.storage.blobs import FileSpec
from tests.support.catalog import Catalog, open_catalog
from tests.support.postgres import PostgresCluster


@pytest.fixture
def catalog(store_db: pw.Database, tmp_path: Path) -> Catalog:
    return open_catalog(tmp_path, b"secret" * 4)


def stage(catalog: Catalog, upload_id: str, content: bytes) -> list[FileSpec]:
    path = catalog.repository.staging_dir(upload_id) / "model.bin"
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    return [FileSpec("model.bin", len(content), hashlib.sha256(content).hexdigest())]


def commit(catalog: Catalog, model: str, upload_id: str, content: bytes) -> int:
    """Commit ``content`` as an upload does: staged, verified, moved into the blob store."""
    files = stage(catalog, upload_id, content)
    db.run(
        tables.Upload.create,
        upload_id=upload_id, model=model, files="[]", config="", manifest_sha256="",
    )  # fmt: skip
    for spec in files:
        db.run(catalog.blobs.ingest, upload_id, spec)
    record = db.run(
        catalog.versions.commit_version,
        model=model,
        upload_id=upload_id,
        files=files,
        config="",
        manifest_sha256=hashlib.sha256(content).hexdigest(),
    )
    return record.version


def test_duplicate_model_is_refused_and_nothing_changes(catalog: Catalog) -> None:
    asyncio.run(catalog.models.create_model("dup", ModelFields(description="first", tags=["one"])))
    with pytest.raises(AlreadyExists):
        asyncio.run(
            catalog.models.create_model("dup", ModelFields(description="second", tags=["two"]))
        )
    assert tables.Model.get(tables.Model.name == "dup").description == "first"
    assert [row.tag for row in tables.ModelTag.select()] == ["one"]
    assert tables.Model.select().count() == 1
    # The failed insert left the connection usable (PostgreSQL aborts a
    # transaction on a unique violation; the atomic block rolled it back).
    asyncio.run(catalog.models.create_model("after-dup", ModelFields()))


def test_versions_are_numbered_from_one_and_identical_content_is_reused(
    catalog: Catalog,
) -> None:
    assert commit(catalog, "numbered", "up-1", b"first") == 1
    assert commit(catalog, "numbered", "up-2", b"second") == 2
    assert commit(catalog, "numbered", "up-3", b"first") == 1
    versions = [
        row.version for row in tables.ModelVersion.select().order_by(tables.ModelVersion.id)
    ]
    assert versions == [1, 2]
    assert (catalog.repository.version_dir("numbered", 2) / "model.bin").read_bytes() == b"second"


def test_concurrent_commits_get_distinct_version_numbers(catalog: Catalog) -> None:
    """Threads commit at once, each on its own connection: the unique index decides."""
    count = 8
    barrier = threading.Barrier(count)

    def one(index: int) -> int:
        barrier.wait()
        return commit(catalog, "raced", f"race-{index}", f"content {index}".encode())

    with ThreadPoolExecutor(count) as pool:
        numbers = sorted(pool.map(one, range(count)))
    assert numbers == list(range(1, count + 1))
    stored = sorted(row.version for row in tables.ModelVersion.select())
    assert stored == numbers
    for number in numbers:
        assert (catalog.repository.version_dir("raced", number) / "model.bin").is_file()


def test_unique_version_index_is_enforced_by_the_database(store_db: pw.Database) -> None:
    model = tables.Model.create(name="indexed")
    row = {"model": model, "sha256": "0" * 64, "size_bytes": 0, "files": "[]", "config": ""}
    tables.ModelVersion.create(version=1, upload_id="a", **row)
    with pytest.raises(pw.IntegrityError), store_db.atomic():
        tables.ModelVersion.create(version=1, upload_id="b", **row)
    assert tables.ModelVersion.select().count() == 1


def test_deployed_model_cannot_be_deleted(catalog: Catalog) -> None:
    commit(catalog, "deployed", "dep-1", b"weights")
    model = tables.Model.get(tables.Model.name == "deployed")
    server = tables.Server.create(name="triton-a", address="127.0.0.1:1")
    deployment = tables.Deployment.create(name="deployed", model=model, version=1)
    tables.DeploymentTarget.create(deployment=deployment, server=server)
    with pytest.raises(FailedPrecondition, match="undeploy it first"):
        asyncio.run(catalog.models.delete_model("deployed"))
    # The database itself refuses too (ON DELETE RESTRICT), on both kinds.
    with pytest.raises(pw.IntegrityError), db.database.atomic():
        tables.Model.delete().where(tables.Model.id == model.id).execute()
    deployment.delete_instance(recursive=True)
    asyncio.run(catalog.models.delete_model("deployed"))
    assert not tables.ModelVersion.select().exists()


def test_inference_counts_add_up_across_flushes(store_db: pw.Database) -> None:
    first, second = InferenceStats(), InferenceStats()  # two replicas' counters
    for stats, ok in [(first, True), (first, False), (second, True)]:
        stats.record("counted", 1, ok)
    asyncio.run(first.flush())
    asyncio.run(second.flush())
    usage = asyncio.run(first.usage("counted", 1))
    assert (usage.count, usage.failures) == (3, 1)


# --- PostgreSQL only: the pool and outages -------------------------------------


@pytest.fixture
def pg_database(postgres_cluster: PostgresCluster) -> Iterator[str]:
    name = postgres_cluster.create_database("pool")
    try:
        yield name
    finally:
        postgres_cluster.drop_database(name)


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "postgresql+pool", "postgres+pool"])
def test_postgresql_url_forms(scheme: str) -> None:
    opened = db.open_database(f"{scheme}://ml%40user:p%40ss@db.example:6543/registry?timeout=3")
    assert isinstance(opened, PooledDatabase)
    assert isinstance(opened, pw.PostgresqlDatabase)
    assert opened.database == "registry"
    assert (opened._max_connections, opened._wait_timeout) == (32, 3)  # default, and from the URL
    assert opened.connect_params == {
        "user": "ml@user",
        "password": "p@ss",
        "host": "db.example",
        "port": 6543,
        "connect_timeout": 5,
    }
    assert db.describe(opened) == "PostgreSQL database 'registry' at db.example:6543"


def test_postgresql_urls_always_get_a_pool_with_limits(
    postgres_cluster: PostgresCluster, pg_database: str
) -> None:
    opened = tables.connect(postgres_cluster.url(pg_database, max_connections=1, timeout=1))
    try:
        assert isinstance(opened, PooledDatabase)
        assert opened._max_connections == 1
        holding, release = threading.Event(), threading.Event()

        def hold() -> None:
            db.run(lambda: (tables.Model.select().count(), holding.set(), release.wait(30)))

        with ThreadPoolExecutor(1) as pool:
            held = pool.submit(hold)
            assert holding.wait(30)
            with pytest.raises(Unavailable, match="cannot be reached or is busy"):
                db.run(tables.Model.select().count)
            release.set()
            held.result()
        assert db.run(tables.Model.select().count) == 0
    finally:
        opened.close_all()


def test_postgresql_restart_is_unavailable_then_recovers(
    postgres_cluster: PostgresCluster, pg_database: str
) -> None:
    opened = tables.connect(postgres_cluster.url(pg_database))
    try:
        db.run(tables.Model.create, name="before")
        postgres_cluster.stop()
        try:
            with pytest.raises(Unavailable) as refused:
                db.run(tables.Model.create, name="during")
            assert f"PostgreSQL database {pg_database!r}" in refused.value.message
            with pytest.raises(Unavailable):
                db.run(tables.Model.select().count)
        finally:
            postgres_cluster.start()
        # The pooled connections died with the server: they are dropped and
        # new ones opened, with no reconnect by hand.
        db.run(tables.Model.create, name="after")
        names = db.run(lambda: sorted(row.name for row in tables.Model.select()))
        assert names == ["after", "before"]
    finally:
        opened.close_all()
