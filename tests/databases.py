"""A fresh, migrated store for domain-level tests: ``store_db``.

Domain tests (catalog, access, pipelines …) take the ``store_db`` fixture and
get an empty database bound to ``mlserve.store``. It is parametrized over
the database kinds MLServe supports, so the same test runs on each of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import peewee as pw
import pytest

from mlserve import store

DATABASE_KINDS = ["sqlite"]


def sqlite_url(directory: Path) -> str:
    return f"sqlite:///{directory / 'store.db'}"


@pytest.fixture(params=DATABASE_KINDS)
def store_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[pw.Database]:
    """An empty database at the current schema, bound to ``mlserve.store``."""
    url = sqlite_url(tmp_path)
    db = store.connect(url)
    try:
        yield db
    finally:
        db.close()
