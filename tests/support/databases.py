"""A fresh, migrated store for domain-level tests: ``store_db``.

Domain tests (catalog, access, pipelines …) take the ``store_db`` fixture and
get an empty database bound to ``mlserve.store``. It is parametrized over
the database kinds MLServe supports, so the same test runs on each of them:
SQLite in the test's temporary directory, and a new database (``CREATE
DATABASE``, dropped afterwards) on one throwaway PostgreSQL cluster that the
session starts on first use (``postgres_cluster``). ``database_url`` is the
same thing before ``tables.connect``, for tests that open and reopen a URL.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import peewee as pw
import pytest
from playhouse.pool import PooledDatabase

from mlserve.storage import tables
from tests.support.postgres import PostgresCluster

DATABASE_KINDS = ["sqlite", "postgresql"]


def sqlite_url(directory: Path) -> str:
    return f"sqlite:///{directory / 'tables.db'}"


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """One PostgreSQL server for the session, stopped and deleted at its end."""
    cluster = PostgresCluster()
    try:
        yield cluster.start()
    finally:
        cluster.destroy()


@pytest.fixture(params=DATABASE_KINDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a new, empty database of each kind (nothing created in it yet)."""
    if request.param == "sqlite":
        yield sqlite_url(tmp_path)
        return
    cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
    name = cluster.create_database()
    try:
        yield cluster.url(name)
    finally:
        cluster.drop_database(name)


@pytest.fixture
def store_db(database_url: str) -> Iterator[pw.Database]:
    """An empty database at the current schema, bound to ``mlserve.store``."""
    db = tables.connect(database_url)
    try:
        yield db
    finally:
        close_database(db)


def close_database(db: pw.Database) -> None:
    """Close ``db`` for good: every pooled connection too, so it can be dropped."""
    if isinstance(db, PooledDatabase):
        db.close_all()
    else:
        db.close()
