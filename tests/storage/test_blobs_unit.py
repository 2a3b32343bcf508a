"""Content-addressed storage at the domain level: dedup, hard-linked versions, and
garbage collection racing an upload of the same content (deterministically: the
collector runs at a chosen point inside the upload stream)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import peewee as pw
import pytest

from mlserve.catalog.uploads import Chunk, UploadHeader, UploadLimits, Uploads
from mlserve.catalog.versions import VersionRecord
from mlserve.storage import db, tables
from mlserve.storage.blobs import Blobs, FileSpec
from mlserve.storage.repository import Repository
from tests.support.catalog import Catalog, open_catalog

WEIGHTS = os.urandom(3 * 1024 * 1024 + 17)
SHA = hashlib.sha256(WEIGHTS).hexdigest()


@dataclass
class Domain:
    home: Path
    repository: Repository
    blobs: Blobs
    catalog: Catalog
    uploads: Uploads

    def blob_file(self, sha256: str = SHA) -> Path:
        return self.home / "blobs" / "sha256" / sha256[:2] / sha256

    def version_file(self, model: str, version: int, path: str = "weights.bin") -> Path:
        return self.home / "repository" / model / str(version) / path


@pytest.fixture
def domain(store_db: pw.Database, tmp_path: Path) -> Domain:
    catalog = open_catalog(tmp_path)
    uploads = Uploads(
        catalog.repository, catalog.versions, catalog.artifacts, catalog.blobs, UploadLimits()
    )
    return Domain(tmp_path, catalog.repository, catalog.blobs, catalog, uploads)


def specs(files: Mapping[str, bytes]) -> list[FileSpec]:
    return [FileSpec(p, len(d), hashlib.sha256(d).hexdigest()) for p, d in sorted(files.items())]


Hook = Callable[[], Awaitable[None]]


async def _nothing() -> None:
    return None


def upload(
    domain: Domain,
    model: str,
    files: Mapping[str, bytes],
    *,
    send: Mapping[str, bytes] | None = None,
    after_header: Hook = _nothing,
    upload_id: str = "",
    config: str = "",
) -> VersionRecord:
    """Upload ``files``, sending the bytes of ``send`` only (all by default)."""

    async def parts() -> AsyncIterator[UploadHeader | Chunk]:
        yield UploadHeader(model, upload_id, specs(files), config)
        await after_header()  # runs once the server has taken the header in
        for path, data in sorted((files if send is None else send).items()):
            for offset in range(0, len(data), 1024 * 1024):
                yield Chunk(path, offset, data[offset : offset + 1024 * 1024])

    return asyncio.run(domain.uploads.receive(parts()))


def read_version(domain: Domain, model: str, version: int) -> dict[str, bytes]:
    async def collect() -> dict[str, bytes]:
        out: dict[str, bytearray] = {}
        async for piece in domain.catalog.versions.download(model, version):
            out.setdefault(piece.path, bytearray()).extend(piece.data)
        return {path: bytes(data) for path, data in out.items()}

    return asyncio.run(collect())


def test_same_content_is_stored_once_and_versions_are_hard_links(domain: Domain) -> None:
    first = upload(domain, "m", {"model.py": b"# one\n", "weights.bin": WEIGHTS})
    # A new version (other code) holding the same weights: their bytes are never sent.
    files = {"model.py": b"# two\n", "weights.bin": WEIGHTS}
    second = upload(domain, "m", files, send={"model.py": b"# two\n"})
    assert (first.version, second.version) == (1, 2)
    assert read_version(domain, "m", 2) == files
    blob = domain.blob_file().stat()
    for version in (1, 2):
        linked = domain.version_file("m", version).stat()
        assert (linked.st_dev, linked.st_ino) == (blob.st_dev, blob.st_ino)
    assert blob.st_nlink == 3
    assert tables.Blob.select().where(tables.Blob.sha256 == SHA).count() == 1
    assert not list((domain.home / "staging").iterdir())
    assert tables.BlobPin.select().count() == 0


def test_a_stored_file_counts_as_received_in_get_upload(domain: Domain) -> None:
    upload(domain, "m", {"model.py": b"# one\n", "weights.bin": WEIGHTS})
    files = {"model.py": b"# new\n", "weights.bin": WEIGHTS}
    with pytest.raises(Exception, match="incomplete"):
        upload(domain, "m", files, send={}, upload_id="u2")  # header only
    status = asyncio.run(domain.uploads.get("u2"))
    received = {p.spec.path: p.received for p in status.files}
    assert received == {"model.py": 0, "weights.bin": len(WEIGHTS)}
    assert upload(domain, "m", files, send={"model.py": b"# new\n"}, upload_id="u2").version == 2


def test_deleting_versions_frees_blobs_only_when_unused(domain: Domain) -> None:
    upload(domain, "m", {"model.py": b"# one\n", "weights.bin": WEIGHTS})
    upload(domain, "m", {"model.py": b"# two\n", "weights.bin": WEIGHTS})
    asyncio.run(domain.catalog.versions.delete_version("m", 1))
    assert domain.blob_file().exists()
    assert not domain.blob_file(hashlib.sha256(b"# one\n").hexdigest()).exists()
    assert read_version(domain, "m", 2)["weights.bin"] == WEIGHTS
    asyncio.run(domain.catalog.models.delete_model("m"))
    assert tables.Blob.select().count() == 0
    assert list(domain.repository.stored_blobs()) == []


def test_collection_between_dedup_decision_and_commit_keeps_the_promised_blob(
    domain: Domain,
) -> None:
    upload(domain, "m", {"model.py": b"# one\n", "weights.bin": WEIGHTS})

    async def delete_the_only_user() -> None:
        # The header was taken in: weights.bin was found stored and pinned.
        # Now the one version using it goes, and the collector runs.
        await domain.catalog.versions.delete_version("m", 1)
        assert domain.blob_file().exists(), "a pinned blob was collected"
        assert domain.blobs.collect() == []

    files = {"model.py": b"# two\n", "weights.bin": WEIGHTS}
    second = upload(
        domain, "m", files, send={"model.py": b"# two\n"}, after_header=delete_the_only_user
    )
    assert read_version(domain, "m", second.version) == files
    # Once committed the version, not the pin, keeps it.
    assert tables.BlobPin.select().count() == 0
    assert domain.blobs.collect() == []
    assert domain.blob_file().exists()


def test_collection_before_the_header_means_the_bytes_are_sent_again(domain: Domain) -> None:
    upload(domain, "m", {"model.py": b"# one\n", "weights.bin": WEIGHTS})
    asyncio.run(domain.catalog.versions.delete_version("m", 1))
    assert not domain.blob_file().exists()
    files = {"model.py": b"# two\n", "weights.bin": WEIGHTS}
    with pytest.raises(Exception, match="incomplete"):
        upload(domain, "m", files, send={"model.py": b"# two\n"}, upload_id="again")
    version = upload(domain, "m", files, upload_id="again").version
    assert read_version(domain, "m", version) == files


def test_the_database_refuses_to_delete_a_pinned_or_used_blob(domain: Domain) -> None:
    upload(domain, "m", {"model.py": b"# one\n", "weights.bin": WEIGHTS})
    with pytest.raises(pw.IntegrityError), db.database.atomic():
        tables.Blob.delete().where(tables.Blob.sha256 == SHA).execute()
    tables.Upload.create(upload_id="p", model="m", files="[]", config="", manifest_sha256="0")
    tables.BlobPin.create(upload="p", blob=SHA)
    asyncio.run(domain.catalog.versions.delete_version("m", 1))
    assert domain.blob_file().exists()
    with pytest.raises(pw.IntegrityError), db.database.atomic():
        tables.Blob.delete().where(tables.Blob.sha256 == SHA).execute()


def test_startup_sweep_removes_blob_files_no_row_names(domain: Domain) -> None:
    upload(domain, "m", {"model.py": b"# one\n", "weights.bin": WEIGHTS})
    stray = hashlib.sha256(b"crashed").hexdigest()
    domain.blob_file(stray).parent.mkdir(parents=True, exist_ok=True)
    domain.blob_file(stray).write_bytes(b"crashed")
    scratch = domain.blob_file(stray).parent / ".copy.abc123"
    scratch.write_bytes(b"half a copy")
    assert domain.blobs.sweep() == [stray]
    assert domain.blob_file().exists()
    assert not scratch.exists()


def test_versions_get_copies_where_links_are_refused(
    domain: Domain, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", refuse)
    files = {"model.py": b"# one\n", "weights.bin": WEIGHTS}
    upload(domain, "m", files)
    upload(
        domain, "m", {"model.py": b"# two\n", "weights.bin": WEIGHTS}, send={"model.py": b"# two\n"}
    )
    assert domain.version_file("m", 1).stat().st_nlink == 1
    assert domain.blob_file().stat().st_nlink == 1
    assert read_version(domain, "m", 1) == files
    assert read_version(domain, "m", 2)["weights.bin"] == WEIGHTS
