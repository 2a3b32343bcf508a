"""A database outage is two log lines, not a traceback per call: one when calls start
failing, one when a call reaches the database again; tracebacks only at DEBUG. The
outage is real: an SQLite file whose folder does not exist yet."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import peewee as pw
import pytest

from mlserve.core.errors import Unavailable
from mlserve.storage import db


@pytest.fixture
def missing_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    folder = tmp_path / "not-yet"
    # The outage log is the process's: a test before this one (same xdist worker)
    # may have left an outage begun, and its first line would not come again.
    monkeypatch.setattr(db, "_outage", db._OutageLog())
    before = db.database.obj
    db.database.initialize(pw.SqliteDatabase(str(folder / "mlserve.db")))
    try:
        yield folder
    finally:
        if not db.database.is_closed():
            db.database.close()
        db.database.initialize(before)


def select_one() -> int:
    return int(db.database.execute_sql("select 1").fetchone()[0])


def test_an_outage_logs_one_line_when_it_starts_and_one_when_it_ends(
    missing_folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="mlserve.storage.db")
    for _ in range(5):
        with pytest.raises(Unavailable, match="SQLite database"):
            db.run(select_one)
    assert db.run(lambda: "no query") == "no query"  # proves nothing: the outage goes on
    missing_folder.mkdir()
    assert db.run(select_one) == 1
    assert db.run(select_one) == 1

    loud = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    where = f"the SQLite database {missing_folder / 'mlserve.db'}"
    assert len(loud) == 2, loud
    assert loud[0].startswith(f"{where} cannot be reached or is busy (unable to open database")
    assert loud[1].startswith(f"{where} is back after ")
    assert loud[1].endswith("; 5 call(s) failed meanwhile")
    assert all(r.exc_info is None for r in caplog.records if r.levelno >= logging.INFO)
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG]
    assert len(debug) == 5
    assert all(r.exc_info is not None for r in debug)
