"""The repository and content store in an S3 bucket (``--storage s3://bucket/prefix``).

Keys under the prefix:

- ``blobs/uploads/<upload_id>/<random>``: each distinct file content once, at
  the key its upload's multipart upload completed at; the blob's row
  (its ``location``) names it. ``blobs/sha256/ab/abcd…`` (by digest):
  blobs stored before schema 23, still read;
- ``repository/<model>/<version>/<path>`` and ``repository/<model>/config.pbtxt``:
  Triton's layout, for Tritons that read the bucket themselves
  (``--model-repository=s3://host:port/bucket/prefix/repository``), written
  only for a version deployed on such a Triton (``place_version``).

An upload is staged on the local disk of the replica receiving it
(``Repository``'s part) and, as each part is complete, sent to the bucket as a
part of a multipart upload at the blob's final key, recorded in the database.
Once the file is verified (size and sha256) the multipart upload is completed
there: before that S3 shows no object at all, so nothing unverified is ever
visible, and no copy follows. When the content turns out to be stored already
(dedup by digest) the parts are aborted instead; when two uploads of one content
complete at once, the row names one object and the other is deleted.

A version is put in Triton's layout when a Triton that reads the bucket is to
load it: its blobs copied to its keys inside the bucket (server side, no bytes
through MLServe), and only then the model's ``config.pbtxt``, so a Triton
listing the bucket never finds a config naming files that are not there yet.
A version deployed only on Tritons that get pushes is stored once.

The lock ordering blob collection against uploads (see blobs.py) is a
PostgreSQL advisory lock, held by the transaction around the step, so every
replica on the database shares it; on SQLite (one machine) it is a flock.

Endpoint, region and credentials: the URL's ``endpoint=`` and ``region=``
parameters, else the standard ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``,
``AWS_REGION``/``AWS_DEFAULT_REGION`` variables; credentials as boto3 finds
them (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, profiles, instance roles).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import logging
import os
import re
import uuid
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, ParamSpec, TypeVar, cast
from urllib.parse import parse_qsl, urlsplit

import boto3
import peewee as pw
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from mlserve.core.errors import Aborted, FailedPrecondition, InvalidArgument, Unavailable
from mlserve.core.names import check_name, check_relative_path
from mlserve.storage import blobs, db, tables
from mlserve.storage.buffers import BufferPool
from mlserve.storage.repository import CONFIG_FILE, Repository, flocked

if TYPE_CHECKING:
    from mlserve.storage.blobs import FileSpec

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

_SHA256 = re.compile(r"[0-9a-f]{64}")
# S3's rules for bucket names (lower case, digits, dots, dashes; 3 to 63).
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")
_NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound"})
# Multipart parts of 64 MiB, 8 at once: a 1 GiB file in 16 parts, the most
# memory held for parts in flight 512 MiB only if the network outpaces disk.
TRANSFER = TransferConfig(
    multipart_threshold=64 * 1024**2, multipart_chunksize=64 * 1024**2, max_concurrency=8
)
_CONTENT_LOCK_KEY = zlib.crc32(b"mlserve content lock")
DEFAULT_PART_SIZE = 64 * 1024**2
# Parts of a staged file being sent to the bucket at once, beside the stream's
# writer (as boto3's upload_file does); each holds a part's buffer, reused while
# parts are sent and freed when none is.
_PARTS_IN_FLIGHT = 4
# The largest object one CopyObject may copy (S3's limit).
_COPY_OBJECT_LIMIT = 5 * 1024**3


@dataclass(frozen=True)
class S3Location:
    """Where the bucket is: ``s3://bucket[/prefix][?endpoint=URL&region=NAME&part_mib=N]``."""

    bucket: str
    prefix: str = ""
    endpoint: str = ""
    region: str = ""
    # Staged files go to the bucket in parts of this size as they arrive
    # (S3's smallest part is 5 MiB).
    part_size: int = DEFAULT_PART_SIZE

    @classmethod
    def parse(cls, url: str) -> S3Location:
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError("give s3://BUCKET[/PREFIX][?endpoint=URL&region=NAME]")
        if not _BUCKET.fullmatch(parts.netloc):
            raise ValueError(f"{parts.netloc!r} is not an S3 bucket name")
        params = dict(parse_qsl(parts.query))
        unknown = sorted(set(params) - {"endpoint", "region", "part_mib"})
        if unknown:
            raise ValueError(
                f"unknown parameter {unknown[0]!r}; give endpoint=, region= or part_mib="
            )
        endpoint = params.get("endpoint", "")
        if endpoint and urlsplit(endpoint).scheme not in ("http", "https"):
            raise ValueError(f"endpoint {endpoint!r} must be an http:// or https:// URL")
        part_mib = params.get("part_mib", str(DEFAULT_PART_SIZE // 1024**2))
        if not part_mib.isdigit() or not 5 <= int(part_mib) <= 5 * 1024:
            raise ValueError("part_mib must be a whole number of MiB from 5 to 5120")
        return cls(
            parts.netloc,
            parts.path.strip("/"),
            endpoint,
            params.get("region", ""),
            int(part_mib) * 1024**2,
        )

    def resolved(self, environ: Mapping[str, str]) -> S3Location:
        """The location with endpoint and region from the standard AWS variables if unset."""
        endpoint = (
            self.endpoint
            or environ.get("AWS_ENDPOINT_URL_S3", "")
            or environ.get("AWS_ENDPOINT_URL", "")
        )
        region = (
            self.region
            or environ.get("AWS_REGION", "")
            or environ.get("AWS_DEFAULT_REGION", "")
            or "us-east-1"
        )
        return S3Location(self.bucket, self.prefix, endpoint, region, self.part_size)

    def __str__(self) -> str:
        where = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        return f"{where} at {self.endpoint or 'AWS S3'}"

    def key(self, *parts: str) -> str:
        return "/".join(part for part in (self.prefix, *parts) if part)

    def triton_repository(self) -> str:
        """The ``--model-repository`` a Triton reading this bucket is given."""
        if not self.endpoint:
            return f"s3://{self.bucket}/{self.key('repository')}"
        endpoint = urlsplit(self.endpoint)
        return f"s3://{endpoint.scheme}://{endpoint.netloc}/{self.bucket}/{self.key('repository')}"


def _s3_call(method: Callable[P, R]) -> Callable[P, R]:
    """Turn a bucket that cannot be reached into Unavailable naming it."""

    @functools.wraps(method)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", ""))
            store = cast(S3Repository, args[0])
            raise Unavailable(
                f"the bucket {store.location} refused the request ({code or error}); check "
                "the bucket, its credentials and permissions, then retry"
            ) from None
        except BotoCoreError as error:
            store = cast(S3Repository, args[0])
            raise Unavailable(
                f"the bucket {store.location} cannot be reached ({error}); retry once it is back"
            ) from None

    return call


def client_config(location: S3Location) -> Config:
    """How MLServe's S3 client talks to the bucket (``bench s3-upload``'s reference too).

    Payloads are not signed, on any endpoint: each part carries a CRC32 checksum
    that S3 verifies, which is what botocore does by default on https. botocore
    would otherwise hash every byte again with sha256 on a plain-http endpoint,
    0.6 CPU-seconds per GiB on top of the sha256 MLServe itself checks. Signing
    the payload over plain http would not protect the bytes anyway: nothing
    signs what S3 (or a Triton reading the bucket) gets back, so plain http is
    for loopback or a trusted network only (README, security model).
    """
    s3: dict[str, Any] = {"payload_signing_enabled": False}
    if location.endpoint:
        s3["addressing_style"] = "path"
    return Config(
        # Fail a call in seconds, not minutes, when the bucket is away:
        # the caller gets UNAVAILABLE and retries.
        connect_timeout=3,
        read_timeout=60,
        retries={"max_attempts": 2, "mode": "standard"},
        s3=s3,
        # A CRC32 on every part stands in for the payload signature: botocore's
        # default from 1.36 (pyproject requires it), left to the operator's
        # AWS_REQUEST_CHECKSUM_CALCULATION for stores that refuse the header.
        max_pool_connections=32,
    )


@dataclass
class _Sending:
    """The parts of one staged file handed to the senders during a stream."""

    multipart: _Multipart
    next_number: int
    submitted: int  # bytes handed to the senders, from 0
    pending: deque[Future[None]] = field(default_factory=deque)


class S3Repository(Repository):
    """Versions and contents in a bucket; uploads staged on this replica's disk."""

    def __init__(self, location: S3Location, staging: Path, locks: Path | None = None) -> None:
        super().__init__(staging, locks)
        self.location = location
        self._client: Any = boto3.session.Session().client(
            "s3",
            endpoint_url=location.endpoint or None,
            region_name=location.region,
            config=client_config(location),
        )
        # Multipart uploads declare the CRC32 their parts carry (as boto3's upload_file
        # does), unless the operator turned checksums off for a store that refuses
        # them (AWS_REQUEST_CHECKSUM_CALCULATION=when_required).
        self._part_checksums = self._client.meta.config.request_checksum_calculation != (
            "when_required"
        )
        self._local_lock = staging.parent / ".content.lock"
        self._senders = ThreadPoolExecutor(_PARTS_IN_FLIGHT, thread_name_prefix="s3-part")
        # Over plain http botocore sends a bytearray body as it is; on https it
        # streams the body through io.BytesIO for a trailing checksum, which
        # shares bytes but copies a bytearray. So buffers are reused on http
        # only, and on https each part is read into bytes of its own.
        self._part_buffers = (
            BufferPool(location.part_size, _PARTS_IN_FLIGHT)
            if location.endpoint.startswith("http://")
            else None
        )
        self._sending: dict[tuple[str, str], _Sending] = {}

    def describe(self) -> str:
        return f"bucket {self.location}"

    @_s3_call
    def check(self) -> None:
        self._client.head_bucket(Bucket=self.location.bucket)
        # The repository's root as an object of its own: a Triton started on an
        # empty bucket finds a directory, not "not a valid directory".
        root = self.location.key("repository") + "/"
        if self._size_of(root) is None:
            self._client.put_object(Bucket=self.location.bucket, Key=root, Body=b"")

    # --- committed versions -------------------------------------------------

    def _version_prefix(self, model: str, version: int | None = None) -> str:
        model = check_name(model, "model name")
        if version is None:
            return self.location.key("repository", model) + "/"
        return self.location.key("repository", model, str(int(version))) + "/"

    def _digest_key(self, sha256: str) -> str:
        """Where a blob stored before schema 23 is: by its digest."""
        if not _SHA256.fullmatch(sha256):
            raise InvalidArgument(f"{sha256!r} is not a lower-case hex sha256")
        return self.location.key("blobs", "sha256", sha256[:2], sha256)

    def _location_key(self, sha256: str, location: str) -> str:
        return self.location.key(location) if location else self._digest_key(sha256)

    def _blob_key(self, sha256: str) -> str:
        """The object key of stored blob ``sha256``, as its row records it."""
        return self._location_key(sha256, blobs.recorded_location(sha256) or "")

    def _uploads_prefix(self, upload_id: str) -> str:
        """The relative prefix of the objects ``upload_id``'s files complete at."""
        return "/".join(("blobs", "uploads", check_name(upload_id, "upload_id"))) + "/"

    def _new_location(self, upload_id: str) -> str:
        """A key no object ever had: a blob's final place, chosen before its digest is known."""
        return self._uploads_prefix(upload_id) + uuid.uuid4().hex

    def open_version_file(self, model: str, version: int, path: str, sha256: str = "") -> BinaryIO:
        # A version's file is a copy of its blob: reading the blob is the same bytes.
        if sha256:
            return self.open_blob(sha256)
        key = self._version_prefix(model, version) + check_relative_path(path)
        return self._open(key, path)

    @_s3_call
    def write_model_config(self, model: str, config_text: str) -> None:
        key = self._version_prefix(model) + CONFIG_FILE
        self._client.put_object(
            Bucket=self.location.bucket, Key=key, Body=config_text.encode("utf-8")
        )

    def publish_version(
        self, upload_id: str, model: str, version: int, files: Sequence[FileSpec], config: str
    ) -> None:
        """Nothing to move: the version's files are its blobs, already in the bucket.
        Triton's layout is written when a Triton reading the bucket needs it
        (``place_version``), so a version is not stored twice for nothing."""

    @_s3_call
    def place_version(
        self, model: str, version: int, files: Sequence[FileSpec], config: str
    ) -> None:
        """Copy (server side) each of the version's blobs missing from Triton's layout to
        its key there, then write the model's config.pbtxt: files first, config last."""
        prefix = self._version_prefix(model, version)
        for spec in files:
            target = prefix + check_relative_path(spec.path)
            if self._size_of(target) != spec.size:
                self._copy(self._blob_key(spec.sha256), target, spec.size)
        if not files and self._size_of(prefix) is None:
            # An empty version still needs its directory for Triton to see it.
            self._client.put_object(Bucket=self.location.bucket, Key=prefix, Body=b"")
        self.write_model_config(model, config)

    def delete_version(self, model: str, version: int) -> None:
        self._delete_under(self._version_prefix(model, version))

    def delete_model(self, model: str) -> None:
        self._delete_under(self._version_prefix(model))

    @_s3_call
    def _delete_under(self, prefix: str) -> None:
        keys = list(self._keys_under(prefix))
        for start in range(0, len(keys), 1000):  # DeleteObjects takes 1000 keys at most
            batch = [{"Key": key} for key in keys[start : start + 1000]]
            self._client.delete_objects(
                Bucket=self.location.bucket, Delete={"Objects": batch, "Quiet": True}
            )

    def _keys_under(self, prefix: str) -> Iterator[str]:
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.location.bucket, Prefix=prefix
        )
        for page in pages:
            for entry in page.get("Contents", []):
                yield str(entry["Key"])

    # --- blobs --------------------------------------------------------------

    @_s3_call
    def has_blob(self, sha256: str, size: int, location: str = "") -> bool:
        return self._size_of(self._location_key(sha256, location)) == size

    def _size_of(self, key: str) -> int | None:
        try:
            head = self._client.head_object(Bucket=self.location.bucket, Key=key)
        except ClientError as error:
            if str(error.response.get("Error", {}).get("Code", "")) in _NOT_FOUND:
                return None
            raise
        return int(head["ContentLength"])

    @_s3_call
    def store_blob(self, upload_id: str, path: str, sha256: str) -> str:
        """The verified staged file into the bucket, at a key of its own: the parts sent
        while it arrived completed with its tail there (no copy), or, for a file
        smaller than a part, one upload. A content stored already is kept and the
        parts aborted. Returns the blob's location (relative to the prefix)."""
        source = self.staged_file(upload_id, path)
        size = os.lstat(source).st_size
        self._settle_file(upload_id, path)
        parts = _parts(upload_id, path)
        stored = blobs.recorded_location(sha256)
        if stored is not None and self.has_blob(sha256, size, stored):
            # Stored meanwhile by another upload: this one's parts are not needed.
            self._abort_parts(upload_id, path)
            location = stored
        elif parts:
            self.checkpoint(upload_id, path, size)
            self._settle_file(upload_id, path)
            parts = _parts(upload_id, path)
            committed = sum(part.size for part in parts)
            count = len(parts)
            if committed < size:
                with self.open_staged_for_read(upload_id, path) as staged:
                    staged.seek(committed)
                    self._send_part(
                        upload_id, path, _multipart_of(parts), len(parts) + 1, staged.read()
                    )
                count += 1
            # Exactly the parts that make the file: a record beyond them (left
            # by a part in flight when an earlier one failed) is not part of it.
            location = self._complete(upload_id, path, _parts(upload_id, path)[:count])
        else:
            location = self._new_location(upload_id)
            self._client.upload_file(
                str(source), self.location.bucket, self.location.key(location), Config=TRANSFER
            )
        os.unlink(source)
        return location

    def _copy(self, source: str, target: str, size: int) -> None:
        """A server-side copy within the bucket: one CopyObject up to S3's 5 GiB limit
        for it (a multipart copy re-assembles the object once more), parts beyond."""
        if size <= _COPY_OBJECT_LIMIT:
            self._client.copy_object(
                Bucket=self.location.bucket,
                Key=target,
                CopySource={"Bucket": self.location.bucket, "Key": source},
            )
        else:
            self._client.copy(
                {"Bucket": self.location.bucket, "Key": source},
                self.location.bucket,
                target,
                Config=TRANSFER,
            )

    def open_blob(self, sha256: str) -> BinaryIO:
        return self._open(self._blob_key(sha256), sha256)

    def _open(self, key: str, name: str) -> BinaryIO:
        size = _s3_call(S3Repository._size_of)(self, key)
        if size is None:
            raise FailedPrecondition(f"file {name!r} is missing from the bucket")
        return cast(BinaryIO, io.BufferedReader(_ObjectReader(self, key, size), 1024 * 1024))

    @_s3_call
    def remove_blob(self, sha256: str, location: str = "") -> None:
        self._client.delete_object(
            Bucket=self.location.bucket, Key=self._location_key(sha256, location)
        )

    @_s3_call
    def stored_blobs(self) -> Iterator[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        by_digest = self.location.key("blobs", "sha256") + "/"
        by_upload = self.location.key("blobs", "uploads") + "/"
        root = self.location.key()
        for key in self._keys_under(self.location.key("blobs") + "/"):
            name = key.rpartition("/")[2]
            if key.startswith(by_digest) and _SHA256.fullmatch(name):
                found.append((name, ""))
            elif key.startswith(by_upload):
                found.append(("", key[len(root) + 1 :] if root else key))
        return iter(found)

    # --- staging: parts in the bucket ---------------------------------------

    def _staging_key(self, upload_id: str, path: str) -> str:
        return self.location.key(
            "staging", check_name(upload_id, "upload_id"), check_relative_path(path)
        )

    def staged_size(self, upload_id: str, path: str) -> int:
        return max(super().staged_size(upload_id, path), self.committed_size(upload_id, path))

    def committed_size(self, upload_id: str, path: str) -> int:
        return sum(part.size for part in _parts(upload_id, path))

    @_s3_call
    def checkpoint(self, upload_id: str, path: str, received: int) -> None:
        """Hand every whole part of the staged file not yet handed on to the senders
        (several at once, beside the writer); each is recorded in the database once S3
        has it: that is what a resume elsewhere continues from."""
        sending = self._sending.get((upload_id, path))
        if sending is None:
            parts = _parts(upload_id, path)
            committed = sum(part.size for part in parts)
            if received - committed < self.location.part_size:
                return
            multipart = _multipart_of(parts) if parts else self._start_multipart(upload_id)
            sending = _Sending(multipart, len(parts) + 1, committed)
            self._sending[upload_id, path] = sending
        if received - sending.submitted < self.location.part_size:
            return
        try:
            with self.open_staged_for_read(upload_id, path) as staged:
                while received - sending.submitted >= self.location.part_size:
                    part = self._read_part(staged, sending.submitted)
                    self._submit_part(upload_id, path, sending, part)
                    sending.submitted += len(part)
                    sending.next_number += 1
                    while len(sending.pending) >= _PARTS_IN_FLIGHT:
                        sending.pending.popleft().result()
        except BaseException:
            self._settle_file(upload_id, path)
            raise

    def _read_part(self, staged: BinaryIO, offset: int) -> bytes | bytearray:
        """The whole part of the staged file at ``offset``: in a buffer of the pool
        (given back once sent), or in bytes of its own where there is no pool."""
        staged.seek(offset)
        if self._part_buffers is None:
            data = staged.read(self.location.part_size)
            if len(data) < self.location.part_size:
                raise OSError(f"staged file ended at byte {offset + len(data)}, inside a part")
            return data
        part = self._part_buffers.take()
        try:
            view = memoryview(part)
            filled = 0
            while filled < len(part):
                count = staged.readinto(view[filled:])  # type: ignore[attr-defined]
                if not count:
                    raise OSError(f"staged file ended at byte {offset + filled}, inside a part")
                filled += count
            return part
        except BaseException:
            self._part_buffers.give(part)
            raise

    def _submit_part(
        self, upload_id: str, path: str, sending: _Sending, part: bytes | bytearray
    ) -> None:
        """Hand ``part`` to the senders as the file's next part (its buffer back to
        the pool if it cannot be handed on)."""
        try:
            pending = self._senders.submit(
                self._send_buffered, upload_id, path, sending.multipart, sending.next_number, part
            )
        except BaseException:
            self._give_back(part)
            raise
        sending.pending.append(pending)

    def _send_buffered(
        self, upload_id: str, path: str, multipart: _Multipart, number: int, part: bytes | bytearray
    ) -> None:
        try:
            db.run(self._send_part, upload_id, path, multipart, number, part)
        finally:
            self._give_back(part)

    def _give_back(self, part: bytes | bytearray) -> None:
        if self._part_buffers is not None and isinstance(part, bytearray):
            self._part_buffers.give(part)

    def settle(self, upload_id: str) -> None:
        # list(): a C-level copy, so another upload's writer adding a key meanwhile
        # cannot break the iteration.
        for upload, path in [key for key in list(self._sending) if key[0] == upload_id]:
            with contextlib.suppress(Exception):  # what S3 took is recorded; that counts
                self._settle_file(upload, path)
        if self._part_buffers is not None and not self._sending:
            self._part_buffers.drop_idle()

    def _settle_file(self, upload_id: str, path: str) -> None:
        """Wait for the file's parts in flight and forget them; the first error raised."""
        sending = self._sending.pop((upload_id, path), None)
        if sending is None:
            return
        errors = []
        for pending in sending.pending:
            try:
                pending.result()
            except Exception as error:
                errors.append(error)
        if errors:
            raise errors[0]

    def _start_multipart(self, upload_id: str) -> _Multipart:
        """A multipart upload at a new blob key: where the file will be once verified."""
        location = self._new_location(upload_id)
        answer = self._client.create_multipart_upload(
            Bucket=self.location.bucket,
            Key=self.location.key(location),
            **({"ChecksumAlgorithm": "CRC32"} if self._part_checksums else {}),
        )
        return _Multipart(str(answer["UploadId"]), location)

    def _send_part(
        self, upload_id: str, path: str, multipart: _Multipart, number: int, data: bytes | bytearray
    ) -> None:
        answer = self._client.upload_part(
            Bucket=self.location.bucket,
            Key=self.location.key(multipart.location),
            UploadId=multipart.multipart_id,
            PartNumber=number,
            Body=data,
        )
        # A replace: a part sent again after a resume (beyond a gap left by a
        # failed one) supersedes its earlier record, as S3 keeps the last upload.
        tables.UploadPart.insert(
            upload=upload_id,
            path=path,
            multipart_id=multipart.multipart_id,
            key=multipart.location,
            number=number,
            size=len(data),
            etag=answer["ETag"],
            checksum=answer.get("ChecksumCRC32", ""),
        ).on_conflict(
            conflict_target=[
                tables.UploadPart.upload, tables.UploadPart.path, tables.UploadPart.number
            ],
            update={
                tables.UploadPart.multipart_id: multipart.multipart_id,
                tables.UploadPart.key: multipart.location,
                tables.UploadPart.size: len(data),
                tables.UploadPart.etag: answer["ETag"],
                tables.UploadPart.checksum: answer.get("ChecksumCRC32", ""),
            },
        ).execute()  # fmt: skip

    def _complete(self, upload_id: str, path: str, parts: Sequence[Any]) -> str:
        """Complete the multipart upload of ``parts`` (at the key they were sent to) and
        forget their records; the object's location."""
        location = str(parts[0].key)
        try:
            self._client.complete_multipart_upload(
                Bucket=self.location.bucket,
                Key=self.location.key(location),
                UploadId=parts[0].multipart_id,
                MultipartUpload={"Parts": [_completed(part) for part in parts]},
            )
        except ClientError as error:
            # Completed by an earlier try whose transaction then rolled back (a failed
            # restore on PostgreSQL brings the part rows back): the object is there.
            code = error.response.get("Error", {}).get("Code")
            if code != "NoSuchUpload" or not self._holds(location, sum(p.size for p in parts)):
                raise
        _forget_parts(upload_id, path)
        return location

    def _holds(self, location: str, size: int) -> bool:
        """Whether the object at ``location`` exists with ``size`` bytes."""
        try:
            head = self._client.head_object(
                Bucket=self.location.bucket, Key=self.location.key(location)
            )
        except ClientError:
            return False
        return int(head["ContentLength"]) == size

    def _abort_parts(self, upload_id: str, path: str) -> None:
        """Abort the multipart upload of staged ``path`` (if any) and forget its parts."""
        parts = _parts(upload_id, path)
        if parts:
            with contextlib.suppress(ClientError):  # aborted already: nothing is kept
                self._client.abort_multipart_upload(
                    Bucket=self.location.bucket,
                    Key=self.location.key(parts[0].key),
                    UploadId=parts[0].multipart_id,
                )
        _forget_parts(upload_id, path)

    @_s3_call
    def restore_staged(self, upload_id: str, path: str) -> None:
        """The parts another replica committed, completed, fetched into local staging,
        and removed from the bucket; later parts are sent again from this disk."""
        parts = _parts(upload_id, path)
        committed = sum(part.size for part in parts)
        if committed <= super().staged_size(upload_id, path):
            return
        # Under the content lock: the object is completed under blobs/ for the
        # moment of its download, and the startup sweep must not take it as a
        # crash's leftover meanwhile.
        with self.content_lock(exclusive=False):
            key = self.location.key(self._complete(upload_id, path, parts))
            target = self._staged_file_with_parents(upload_id, path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(target)
            self._client.download_file(self.location.bucket, key, str(target), Config=TRANSFER)
            self._client.delete_object(Bucket=self.location.bucket, Key=key)
        log.info("upload %s: %d bytes of %s restored from the bucket", upload_id, committed, path)

    def discard_staged_file(self, upload_id: str, path: str) -> None:
        """The staged file and what of it went to the bucket (its multipart upload
        aborted): bytes that failed their checksum are never restored on a resume."""
        with contextlib.suppress(Exception):  # whatever S3 took is aborted below
            self._settle_file(upload_id, path)
        _s3_call(S3Repository._abort_parts)(self, upload_id, path)
        super().discard_staged_file(upload_id, path)

    def discard_staging(self, upload_id: str) -> None:
        super().discard_staging(upload_id)
        self._abort_staged(upload_id)

    @_s3_call
    def _abort_staged(self, upload_id: str) -> None:
        """Abort the upload's multipart uploads not completed (the blobs it completed
        are objects, not multipart uploads, and stay)."""
        staging = self.location.key("staging", check_name(upload_id, "upload_id")) + "/"
        for prefix in (self.location.key(self._uploads_prefix(upload_id)), staging):
            pages = self._client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.location.bucket, Prefix=prefix
            )
            for page in pages:
                for pending in page.get("Uploads", []):
                    self._client.abort_multipart_upload(
                        Bucket=self.location.bucket,
                        Key=pending["Key"],
                        UploadId=pending["UploadId"],
                    )
        tables.UploadPart.delete().where(tables.UploadPart.upload == upload_id).execute()
        # Objects of schema 22 and before, completed at the staging key.
        self._delete_under(staging)

    @contextlib.contextmanager
    def upload_lock(self, upload_id: str) -> Iterator[None]:
        """Hold the upload exclusively across every replica on the database, or raise Aborted.

        On PostgreSQL: a session advisory lock on a connection of its own, held
        for the stream; PostgreSQL releases it when that connection ends, also
        when the replica is killed. On SQLite (one machine): the local flock.
        """
        database = db.database.obj
        if not isinstance(database, pw.PostgresqlDatabase):
            with super().upload_lock(upload_id):
                yield
            return
        digest = hashlib.sha256(f"mlserve upload {upload_id}".encode()).digest()
        key = int.from_bytes(digest[:8], "big", signed=True)
        connection = db.own_connection(database)
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_try_advisory_lock(%s)", (key,))
                (taken,) = cursor.fetchone()
            if not taken:
                raise Aborted(
                    f"upload {upload_id!r} is being written by another stream; "
                    "wait for it to finish or fail, then resume"
                )
            try:
                yield
            finally:
                # Unlocked here, not left to the server noticing the closed
                # connection (asynchronous): a resume sent right after this
                # stream's answer must find the upload free.
                with contextlib.suppress(Exception), connection.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_unlock(%s)", (key,))
        finally:
            connection.close()

    @contextlib.contextmanager
    def content_lock(self, *, exclusive: bool) -> Iterator[None]:
        if not isinstance(db.database.obj, pw.PostgresqlDatabase):
            # SQLite is one machine's: a flock orders its processes.
            with flocked(self._local_lock, exclusive=exclusive):
                yield
            return
        # Held by the transaction: released at its end, and by PostgreSQL if
        # this process dies, so a killed replica never leaves it taken.
        function = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
        with db.database.atomic():
            db.database.execute_sql(f"SELECT {function}(%s)", (_CONTENT_LOCK_KEY,))
            yield

    # --- reading ------------------------------------------------------------

    @_s3_call
    def _read_range(self, key: str, start: int, size: int) -> Any:
        """A streaming body of ``size`` bytes of ``key`` from ``start``."""
        answer = self._client.get_object(
            Bucket=self.location.bucket, Key=key, Range=f"bytes={start}-{start + size - 1}"
        )
        return answer["Body"]


@dataclass(frozen=True)
class _Multipart:
    """An S3 multipart upload of one staged file: its id and the key it completes at."""

    multipart_id: str
    location: str  # relative to the prefix


def _parts(upload_id: str, path: str) -> list[Any]:
    """The parts of staged ``path`` recorded in the database, in order, up to the first
    gap: parts are sent several at once, so one may be recorded after a later one
    failed; only the unbroken run from part 1 is what the bucket holds of the file.
    Parts of one multipart upload only (a record of another, older one, or of
    schema 22's staging key, ends the run)."""
    recorded = (
        tables.UploadPart.select()
        .where((tables.UploadPart.upload == upload_id) & (tables.UploadPart.path == path))
        .order_by(tables.UploadPart.number)
    )
    unbroken: list[Any] = []
    for part in recorded:
        if part.number != len(unbroken) + 1 or not part.key:
            break
        if unbroken and part.multipart_id != unbroken[0].multipart_id:
            break
        unbroken.append(part)
    return unbroken


def _completed(part: Any) -> dict[str, Any]:
    """A part as CompleteMultipartUpload names it: number, ETag and its CRC32 if any."""
    named = {"PartNumber": part.number, "ETag": part.etag}
    if part.checksum:
        named["ChecksumCRC32"] = part.checksum
    return named


def _multipart_of(parts: Sequence[Any]) -> _Multipart:
    return _Multipart(str(parts[0].multipart_id), str(parts[0].key))


def _forget_parts(upload_id: str, path: str) -> None:
    tables.UploadPart.delete().where(
        (tables.UploadPart.upload == upload_id) & (tables.UploadPart.path == path)
    ).execute()


class _ObjectReader(io.RawIOBase):
    """A seekable, readable object: one ranged GET from the position to the end, again
    after a seek."""

    def __init__(self, store: S3Repository, key: str, size: int) -> None:
        self._store, self._key, self._size = store, key, size
        self._position = 0
        self._body: Any = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        position = max(0, base + offset)
        if position != self._position:
            self._drop_body()
            self._position = position
        return position

    def readinto(self, buffer: Any) -> int:
        wanted = min(len(buffer), self._size - self._position)
        if wanted <= 0:
            return 0
        if self._body is None:
            self._body = self._store._read_range(
                self._key, self._position, self._size - self._position
            )
        try:
            data = self._body.read(wanted)
        except (BotoCoreError, OSError) as error:
            self._drop_body()
            raise Unavailable(
                f"reading from the bucket {self._store.location} failed ({error}); retry"
            ) from None
        buffer[: len(data)] = data
        self._position += len(data)
        return len(data)

    def close(self) -> None:
        self._drop_body()
        super().close()

    def _drop_body(self) -> None:
        if self._body is not None:
            with contextlib.suppress(Exception):
                self._body.close()
            self._body = None
