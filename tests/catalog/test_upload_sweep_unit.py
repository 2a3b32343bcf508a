"""The sweep for abandoned uploads at the domain level: what it takes and what it
leaves (an upload a stream holds, an unfinished upload whose id ends in .lock),
decided without waiting: the expiry is zero or a day."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import peewee as pw
import pytest

from mlserve.catalog.uploads import Chunk, UploadHeader, UploadLimits, Uploads
from mlserve.core.errors import FailedPrecondition
from mlserve.storage import tables
from mlserve.storage.blobs import FileSpec
from tests.support.catalog import open_catalog

DATA = b"half of this arrives" * 100


def uploads_in(home: Path, expire_after: dt.timedelta) -> Uploads:
    catalog = open_catalog(home)
    return Uploads(
        catalog.repository,
        catalog.versions,
        catalog.artifacts,
        catalog.blobs,
        UploadLimits(expire_after=expire_after),
    )


def begin(uploads: Uploads, upload_id: str) -> None:
    """An unfinished upload: half of its one file staged."""
    spec = FileSpec("weights.bin", len(DATA), hashlib.sha256(DATA).hexdigest())
    files = [FileSpec("model.py", 2, hashlib.sha256(b"#\n").hexdigest()), spec]

    async def parts() -> AsyncIterator[UploadHeader | Chunk]:
        yield UploadHeader("m", upload_id, files)
        yield Chunk("weights.bin", 0, DATA[: len(DATA) // 2])

    with pytest.raises(FailedPrecondition, match="incomplete"):
        asyncio.run(uploads.receive(parts()))


def unfinished() -> list[str]:
    return sorted(row.upload_id for row in tables.Upload.select())


def test_an_upload_a_stream_holds_is_not_expired(store_db: pw.Database, tmp_path: Path) -> None:
    uploads = uploads_in(tmp_path, dt.timedelta(0))
    begin(uploads, "held")
    with uploads.repository.upload_lock("held"):
        assert asyncio.run(uploads.expire_abandoned()) == []
    assert unfinished() == ["held"]
    assert (tmp_path / "staging" / "held" / "weights.bin").exists()
    assert asyncio.run(uploads.expire_abandoned()) == ["held"]
    assert unfinished() == []
    assert not (tmp_path / "staging" / "held").exists()
    assert not (tmp_path / "upload-locks" / "held").exists()


def test_leftovers_go_and_fresh_uploads_stay(store_db: pw.Database, tmp_path: Path) -> None:
    uploads = uploads_in(tmp_path, dt.timedelta(days=1))
    begin(uploads, "x")
    begin(uploads, "x.lock")  # its staging directory is named like an old lock file
    staging = tmp_path / "staging"
    (staging / "ghost").mkdir()  # left by a crash between a row's deletion and its files
    (staging / "ghost" / "part").write_bytes(b"left over")
    (staging / "old.lock").write_bytes(b"")  # a lock file of the old layout
    assert asyncio.run(uploads.expire_abandoned()) == []
    assert sorted(entry.name for entry in staging.iterdir()) == ["x", "x.lock"]
    assert unfinished() == ["x", "x.lock"]
