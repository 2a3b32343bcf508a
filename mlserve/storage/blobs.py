"""Content-addressed storage: each distinct file content is stored once, by sha256.

A blob is a row (``tables.Blob``) and a file or object (``Repository.store_blob``),
found by its digest or, in a bucket, at the object key its row records
(``Blob.location``: where its upload's parts completed, so it is never copied). What
uses a blob is a row too: ``VersionFile`` (a version's file, hard-linked to the
blob in the directory Triton reads), ``Artifact`` and ``DatasetFile``. An upload that was told
"this content is already here, skip its bytes" holds a ``BlobPin`` until it
commits, so the blob it was promised cannot vanish under it.

Garbage collection deletes the blobs nothing uses or pins. It is safe against
a concurrent upload of the same content because of two things:

- The database refuses it: pins and uses name their blob by a RESTRICT foreign
  key, so a blob row that is pinned or used cannot be deleted, whatever runs
  concurrently.
- Files follow rows in one order. The repository's content lock (a flock on a
  local disk, a PostgreSQL advisory lock for a bucket: either orders every
  MLServe process sharing the store) is held shared while an upload pins
  blobs or moves its file into the store, and exclusively by the collector from
  before its transaction until the freed files are unlinked. So no upload can
  see a blob row the collector is deleting, nor store a file the collector is
  about to unlink.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import peewee as pw

from mlserve.storage import db, tables
from mlserve.storage.repository import Repository

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FileSpec:
    """A file of a version or an artifact: its path under the version directory, size and sha256."""

    path: str
    size: int
    sha256: str


class Blobs:
    def __init__(self, repository: Repository) -> None:
        self.repository = repository

    def stored(self, files: Iterable[FileSpec], readable: Sequence[Any] | None = None) -> set[str]:
        """The sha256s of the declared contents stored already that the caller could read.

        An upload need not send those bytes, nor stage them. ``readable`` (queries
        of sha256s; None: every blob) keeps the contents the caller could download
        anyway: the catalog, which knows who may read what, decides
        (``catalog.uploads.downloadable_blobs``).
        """
        wanted = {spec.sha256: spec.size for spec in files}
        candidates = tables.Blob.select().where(tables.Blob.sha256.in_(list(wanted)))
        if readable is not None:
            candidates = candidates.where(
                functools.reduce(operator.or_, (tables.Blob.sha256.in_(q) for q in readable))
            )
        return {
            row.sha256
            for row in candidates
            if row.size == wanted[row.sha256]
            and self.repository.has_blob(row.sha256, row.size, row.location)
        }

    def pin_stored(
        self, upload_id: str, files: Iterable[FileSpec], readable: Sequence[Any] | None = None
    ) -> set[str]:
        """Pin for ``upload_id`` every declared content already stored (and ``readable``,
        as for ``stored``); all its pinned sha256s.

        A pinned file counts as received: the upload need not send its bytes.
        """
        with self._lock(exclusive=False), db.database.atomic():
            stored = self.stored(files, readable)
            if stored:
                tables.BlobPin.insert_many(
                    [{"upload": upload_id, "blob": sha256} for sha256 in stored]
                ).on_conflict_ignore().execute()
            return self.pinned(upload_id)

    def pinned(self, upload_id: str) -> set[str]:
        """The sha256s ``upload_id`` holds pins on."""
        query: Any = tables.BlobPin.select(tables.BlobPin.blob).where(
            tables.BlobPin.upload == upload_id
        )
        return {str(sha256) for (sha256,) in query.tuples()}

    def ingest(self, upload_id: str, spec: FileSpec) -> None:
        """Move the verified staged file of ``spec`` into the store, pinned for ``upload_id``.

        One object per content: when another upload stored the same content at
        once (at a key of its own), the row names the first and this one's is
        deleted.
        """
        with self._lock(exclusive=False):
            # The file first: a crash between the two leaves a file with no
            # row, which the startup sweep removes, never a row with no file.
            location = self.repository.store_blob(upload_id, spec.path, spec.sha256)
            superseded = ""
            with db.database.atomic():
                tables.Blob.insert(
                    sha256=spec.sha256, size=spec.size, location=location
                ).on_conflict_ignore().execute()
                row = tables.Blob.get(tables.Blob.sha256 == spec.sha256)
                if row.location != location:
                    if self.repository.has_blob(spec.sha256, spec.size, row.location):
                        superseded = location  # the other upload's object is the blob
                    else:  # the row's object is gone: this one takes its place
                        row.location = location
                        row.save()
                tables.BlobPin.insert(
                    upload=upload_id, blob=spec.sha256
                ).on_conflict_ignore().execute()
            if superseded:
                self.repository.remove_blob(spec.sha256, superseded)

    def release(self, upload_id: str) -> None:
        """Drop the upload's pins (call in the transaction that records its blobs' uses)."""
        tables.BlobPin.delete().where(tables.BlobPin.upload == upload_id).execute()

    def collect(self) -> list[str]:
        """Delete every blob nothing uses or pins, rows then files; their sha256s."""
        with self._lock(exclusive=True):
            with db.database.atomic():
                unused = [(str(sha), str(where)) for (sha, where) in _unused_blobs().tuples()]
                freed = []
                for sha256, location in unused:
                    try:
                        with db.database.atomic():  # a savepoint per blob
                            tables.Blob.delete().where(tables.Blob.sha256 == sha256).execute()
                    except pw.IntegrityError:
                        continue  # used or pinned after all: the foreign key said no
                    freed.append((sha256, location))
            for sha256, location in freed:
                self.repository.remove_blob(sha256, location)
        if freed:
            log.info("garbage collection freed %d blobs", len(freed))
        return [sha256 for sha256, _ in freed]

    def sweep(self) -> list[str]:
        """At startup: collect, then remove blob files no row names (a crash's leftovers,
        or the object of an upload that lost a race it did not live to clean up);
        the sha256s freed, then the orphans' sha256s or locations."""
        freed = self.collect()
        with self._lock(exclusive=True):
            stored = list(self.repository.stored_blobs())
            known: set[tuple[str, str]] = set()
            for start in range(0, len(stored), 500):
                batch = stored[start : start + 500]
                digests = [sha256 for sha256, location in batch if not location]
                locations = [location for _, location in batch if location]
                query = tables.Blob.select(tables.Blob.sha256, tables.Blob.location).where(
                    (tables.Blob.sha256.in_(digests) & (tables.Blob.location == ""))
                    | tables.Blob.location.in_(locations)
                )
                known.update(("" if row.location else row.sha256, row.location) for row in query)
            orphans = [entry for entry in stored if entry not in known]
            for sha256, location in orphans:
                self.repository.remove_blob(sha256, location)
        if orphans:
            log.info("removed %d blob files that no database row names", len(orphans))
        return freed + [sha256 or location for sha256, location in orphans]

    def _lock(self, *, exclusive: bool) -> contextlib.AbstractContextManager[None]:
        return self.repository.content_lock(exclusive=exclusive)


def recorded_location(sha256: str) -> str | None:
    """Where the row of blob ``sha256`` says it is ("": by its digest); None without a row."""
    row = tables.Blob.get_or_none(tables.Blob.sha256 == sha256)
    return None if row is None else str(row.location)


def _unused_blobs() -> Any:
    def used_by(model: Any) -> Any:
        return model.select(model.blob).where(model.blob == tables.Blob.sha256)

    return tables.Blob.select(tables.Blob.sha256, tables.Blob.location).where(
        ~pw.fn.EXISTS(used_by(tables.VersionFile))
        & ~pw.fn.EXISTS(used_by(tables.Artifact))
        & ~pw.fn.EXISTS(used_by(tables.DatasetFile))
        & ~pw.fn.EXISTS(used_by(tables.BlobPin))
    )
