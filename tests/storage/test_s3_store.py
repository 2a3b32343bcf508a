"""The repository and content store in a bucket (``S3Repository``), at the domain level,
against a real S3-compatible server (moto's, a child process) and each database kind:
what lands in the bucket and in which order, dedup, deletion and collection, and
a bucket that goes away and comes back."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import peewee as pw
import pytest
from botocore.exceptions import EndpointConnectionError

from mlserve.catalog.uploads import Chunk, UploadHeader, UploadLimits, Uploads
from mlserve.core.errors import DataLoss, FailedPrecondition, Unavailable
from mlserve.settings import resolve
from mlserve.storage import tables
from mlserve.storage.s3 import S3Location, S3Repository
from tests.storage.test_blobs_unit import Domain, read_version, specs, upload
from tests.support.catalog import open_catalog
from tests.support.mlserve import free_port
from tests.support.s3 import AWS_ENV, MotoServer, moto_server  # noqa: F401 (a fixture)

WEIGHTS = os.urandom(3 * 1024 * 1024 + 17)
SHA = hashlib.sha256(WEIGHTS).hexdigest()


@pytest.fixture(autouse=True)
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def bucket(moto_server: MotoServer) -> S3Location:  # noqa: F811
    return S3Location(moto_server.bucket(), "team/models", moto_server.endpoint, "us-east-1")


@pytest.fixture
def domain(store_db: pw.Database, tmp_path: Path, bucket: S3Location) -> Domain:
    return domain_on(S3Repository(bucket, tmp_path / "staging"), tmp_path)


def domain_on(repository: S3Repository, home: Path) -> Domain:
    catalog = open_catalog(home, repository=repository)
    uploads = Uploads(
        repository, catalog.versions, catalog.artifacts, catalog.blobs, UploadLimits()
    )
    return Domain(home, repository, catalog.blobs, catalog, uploads)


def keys(moto: MotoServer, bucket: S3Location) -> list[str]:
    return moto.keys(bucket.bucket, bucket.prefix + "/")


def blob_keys(moto: MotoServer, bucket: S3Location) -> dict[str, str]:
    """Each blob row's object key, by sha256, checked to hold exactly its content."""
    found = {}
    for row in tables.Blob.select():
        key = f"{bucket.prefix}/{row.location}"
        body = moto.client().get_object(Bucket=bucket.bucket, Key=key)["Body"].read()
        assert hashlib.sha256(body).hexdigest() == row.sha256
        found[row.sha256] = key
    return found


def pending_multipart_uploads(moto: MotoServer, bucket: S3Location) -> list[Any]:
    return list(moto.client().list_multipart_uploads(Bucket=bucket.bucket).get("Uploads", []))


def record_calls(repository: S3Repository, *operations: str) -> list[tuple[str, str]]:
    """(operation, key) of each of ``operations`` the repository's client makes from now."""
    made: list[tuple[str, str]] = []
    for operation in operations:

        def record(params: dict[str, Any], operation: str = operation, **_: Any) -> None:
            made.append((operation, params["Key"]))

        repository._client.meta.events.register(f"provide-client-params.s3.{operation}", record)
    return made


def test_a_version_is_stored_once_and_laid_out_for_triton_only_when_placed(
    domain: Domain,
    bucket: S3Location,
    moto_server: MotoServer,  # noqa: F811
) -> None:
    """An upload leaves one object per content, at the key its row records, no copy
    and nothing in Triton's layout; placing the version (a Triton reading the bucket
    is to load it) copies its blobs there, config last."""
    repository = domain.repository
    assert isinstance(repository, S3Repository)
    copies = record_calls(repository, "CopyObject", "UploadPartCopy")
    files = {"model.py": b"# one\n", "weights.bin": WEIGHTS}
    record = upload(domain, "m", files, upload_id="once")
    assert record.version == 1
    code_sha = hashlib.sha256(b"# one\n").hexdigest()
    stored = blob_keys(moto_server, bucket)
    assert set(stored) == {code_sha, SHA}
    assert all(key.startswith("team/models/blobs/uploads/once/") for key in stored.values())
    assert keys(moto_server, bucket) == sorted(stored.values())
    assert copies == []
    assert read_version(domain, "m", 1) == files
    assert not list((domain.home / "staging").iterdir())  # staged bytes moved into the bucket
    assert pending_multipart_uploads(moto_server, bucket) == []

    repository.place_version("m", 1, record.files, record.config)
    laid_out = [key for key in keys(moto_server, bucket) if "/repository/" in key]
    assert laid_out == [
        "team/models/repository/m/1/model.py",
        "team/models/repository/m/1/weights.bin",
        "team/models/repository/m/config.pbtxt",
    ]
    body = moto_server.client().get_object(
        Bucket=bucket.bucket, Key="team/models/repository/m/1/weights.bin"
    )["Body"]
    assert body.read() == WEIGHTS
    # Placing it again copies nothing more.
    copies.clear()
    repository.place_version("m", 1, record.files, record.config)
    assert copies == []


def test_config_is_written_after_every_file_of_the_version(
    domain: Domain, bucket: S3Location
) -> None:
    """The client's own calls, in order: a Triton listing the bucket never sees a
    config.pbtxt before the files it names."""
    repository = domain.repository
    assert isinstance(repository, S3Repository)
    record = upload(domain, "m", {"model.py": b"# a\n", "b/c.bin": WEIGHTS})
    written = record_calls(repository, "PutObject", "CopyObject", "CreateMultipartUpload")
    repository.place_version("m", 1, record.files, record.config)
    in_repository = [key for _, key in written if "/repository/" in key]
    assert in_repository[-1] == "team/models/repository/m/config.pbtxt"
    assert sorted(in_repository[:-1]) == [
        "team/models/repository/m/1/b/c.bin",
        "team/models/repository/m/1/model.py",
    ]


def test_dedup_deletion_and_collection_in_the_bucket(
    domain: Domain,
    bucket: S3Location,
    moto_server: MotoServer,  # noqa: F811
) -> None:
    first = upload(domain, "m", {"model.py": b"# one\n", "weights.bin": WEIGHTS})
    domain.repository.place_version("m", 1, first.files, first.config)
    second = {"model.py": b"# two\n", "weights.bin": WEIGHTS}
    assert upload(domain, "m", second, send={"model.py": b"# two\n"}).version == 2
    assert read_version(domain, "m", 2) == second
    one_sha = hashlib.sha256(b"# one\n").hexdigest()
    one_key = blob_keys(moto_server, bucket)[one_sha]
    asyncio.run(domain.catalog.versions.delete_version("m", 1))
    remaining = keys(moto_server, bucket)
    assert not any(key.startswith("team/models/repository/m/1/") for key in remaining)
    assert one_key not in remaining
    assert blob_keys(moto_server, bucket)[SHA] in remaining
    asyncio.run(domain.catalog.models.delete_model("m"))
    assert keys(moto_server, bucket) == []
    assert tables.Blob.select().count() == 0


def test_startup_sweep_removes_objects_no_row_names(
    domain: Domain,
    bucket: S3Location,
    moto_server: MotoServer,  # noqa: F811
) -> None:
    orphan = "ab" * 32
    moto_server.client().put_object(
        Bucket=bucket.bucket, Key=f"team/models/blobs/sha256/ab/{orphan}", Body=b"left by a crash"
    )
    # An object completed at a key of its own whose row was never written (killed
    # between the two, or the loser of a race that did not live to delete it).
    moto_server.client().put_object(
        Bucket=bucket.bucket, Key="team/models/blobs/uploads/gone/0123", Body=b"no row"
    )
    upload(domain, "m", {"model.py": b"# kept\n"})
    (kept,) = blob_keys(moto_server, bucket).values()
    assert sorted(domain.blobs.sweep()) == sorted([orphan, "blobs/uploads/gone/0123"])
    assert keys(moto_server, bucket) == [kept]


@pytest.fixture
def own_moto() -> Iterator[MotoServer]:
    server = MotoServer().start()
    try:
        yield server
    finally:
        server.stop()


def test_a_bucket_that_goes_away_is_unavailable_then_recovers(
    store_db: pw.Database, tmp_path: Path, own_moto: MotoServer
) -> None:
    location = S3Location(own_moto.bucket(), "p", own_moto.endpoint, "us-east-1")
    repository = S3Repository(location, tmp_path / "staging")
    domain = domain_on(repository, tmp_path)
    assert upload(domain, "m", {"model.py": b"# before\n"}).version == 1
    own_moto.stop()
    with pytest.raises(Unavailable) as raised:
        upload(domain, "m", {"model.py": b"# during\n"}, upload_id="during")
    assert own_moto.endpoint in raised.value.message
    with pytest.raises(Unavailable, match=own_moto.endpoint):
        repository.check()
    # Nothing half-made: no version row, the upload resumable.
    assert [row.version for row in tables.ModelVersion.select()] == [1]
    # Back (moto keeps no state across restarts: the bucket is made again).
    own_moto.start()
    own_moto.client().create_bucket(Bucket=location.bucket)
    repository.check()
    assert upload(domain, "m", {"model.py": b"# during\n"}, upload_id="during").version == 2


def test_an_unreachable_endpoint_is_named(tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    repository = S3Repository(S3Location("nobody-home", "", endpoint, "us-east-1"), tmp_path)
    with pytest.raises(Unavailable) as raised:
        repository.check()
    assert endpoint in raised.value.message
    assert "s3://nobody-home" in raised.value.message


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("s3://b-1/a/b/", S3Location("b-1", "a/b")),
        (
            "s3://bkt?endpoint=http://h:9000&region=eu-west-1",
            S3Location("bkt", "", "http://h:9000", "eu-west-1"),
        ),
    ],
)
def test_location_urls(url: str, expected: S3Location) -> None:
    assert S3Location.parse(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "s3://",
        "s3://UPPER/x",
        "s3://bkt?color=red",
        "s3://bkt?endpoint=ftp://h",
        "s3://bkt?part_mib=4",
        "http://b",
    ],
)
def test_bad_location_urls(url: str) -> None:
    refused = r"give|is not an S3 bucket name|must be an http|part_mib must be"
    with pytest.raises(ValueError, match=refused):
        S3Location.parse(url)


def test_location_from_the_standard_variables() -> None:
    environ = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_DEFAULT_REGION": "eu-north-1"}
    resolved = S3Location("bkt", "p").resolved(environ)
    assert (resolved.endpoint, resolved.region) == ("http://127.0.0.1:9000", "eu-north-1")
    assert resolved.triton_repository() == "s3://http://127.0.0.1:9000/bkt/p/repository"
    assert S3Location("bkt").resolved({}).triton_repository() == "s3://bkt/repository"


def test_storage_setting_takes_a_bucket_url() -> None:
    given = resolve({}, {"MLSERVE_STORAGE": "s3://models-1/team?region=eu-west-1"})
    assert given.bucket == S3Location("models-1", "team", "", "eu-west-1")
    assert given.storage_dir == given.home  # staging stays on this replica's disk
    assert resolve({}, {}).bucket is None


def parted_by_a_first_replica(
    tmp_path: Path, bucket: S3Location
) -> tuple[dict[str, bytes], Domain]:
    """A first replica (its own staging) sent 11 of weights.bin's 12 MiB of upload
    "parted" in 5 MiB parts and stopped; the files, and a second replica's domain
    (its own staging) on the same database and bucket."""
    weights = os.urandom(12 * 1024**2 + 3)
    files = {"model.py": b"# parts\n", "weights.bin": weights}
    sent = {"model.py": b"# parts\n", "weights.bin": weights[: 11 * 1024**2]}
    with pytest.raises(FailedPrecondition, match="incomplete"):
        upload(parted_domain(tmp_path, bucket, "a"), "m", files, send=sent, upload_id="parted")
    return files, parted_domain(tmp_path, bucket, "b")


def test_a_resume_through_another_replica_continues_from_the_parts_in_the_bucket(
    store_db: pw.Database,
    tmp_path: Path,
    bucket: S3Location,
    moto_server: MotoServer,  # noqa: F811
) -> None:
    """Two repositories with their own staging (two replicas), one database and bucket:
    what the first sent to the bucket in parts is where the second resumes."""
    files, second = parted_by_a_first_replica(tmp_path, bucket)
    assert [part.size for part in tables.UploadPart.select()] == [5 * 1024**2] * 2
    # Each part's CRC32 as S3 answered it: completing the upload repeats them.
    assert all(part.checksum for part in tables.UploadPart.select())
    status = asyncio.run(second.uploads.get("parted"))
    assert {f.spec.path: f.received for f in status.files}["weights.bin"] == 10 * 1024**2
    assert upload(second, "m", files, upload_id="parted").version == 1
    assert read_version(second, "m", 1) == files
    assert tables.UploadPart.select().count() == 0
    # The multipart upload declared CRC32, as boto3's do: S3 keeps a composite one.
    weights_key = blob_keys(moto_server, bucket)[hashlib.sha256(files["weights.bin"]).hexdigest()]
    head = moto_server.client().head_object(
        Bucket=bucket.bucket, Key=weights_key, ChecksumMode="ENABLED"
    )
    # (moto leaves out the composite's "-3" suffix that S3 adds)
    assert head.get("ChecksumCRC32")
    assert "ChecksumCRC64NVME" not in head
    assert not [key for key in keys(moto_server, bucket) if "/staging/" in key]
    assert moto_server.client().list_multipart_uploads(Bucket=bucket.bucket).get("Uploads") is None


def test_every_part_carries_a_crc32_in_place_of_a_payload_signature(
    store_db: pw.Database,
    tmp_path: Path,
    bucket: S3Location,
    moto_server: MotoServer,  # noqa: F811
) -> None:
    """Parts go unsigned (no second sha256 pass over every byte) but never unchecked:
    each carries a CRC32 that S3 verifies, on plain http as on https."""
    domain = parted_domain(tmp_path, bucket)
    assert isinstance(domain.repository, S3Repository)
    sent: list[dict[str, str]] = []

    def record(request: Any, **_: Any) -> None:
        sent.append(
            {
                name.lower(): value.decode() if isinstance(value, bytes) else value
                for name, value in request.headers.items()
            }
        )

    domain.repository._client.meta.events.register("before-send.s3.UploadPart", record)
    weights = os.urandom(12 * 1024**2 + 3)
    files = {"model.py": b"# parts\n", "weights.bin": weights}
    assert upload(domain, "m", files).version == 1
    assert len(sent) == 3  # 5 + 5 + 2 MiB
    assert {headers["x-amz-content-sha256"] for headers in sent} == {"UNSIGNED-PAYLOAD"}
    assert all(headers.get("x-amz-checksum-crc32") for headers in sent)
    assert read_version(domain, "m", 1) == files
    assert domain.repository._part_buffers.idle == 0  # an idle server keeps no part's memory


def test_part_buffers_are_reused_over_plain_http_only(tmp_path: Path) -> None:
    """On https botocore copies a reused buffer (io.BytesIO of a bytearray), so there
    each part gets memory of its own; no connection is made to build either."""
    plain = S3Repository(S3Location("b", "p", "http://127.0.0.1:9", "us-east-1"), tmp_path / "a")
    secure = S3Repository(S3Location("b", "p", "https://s3.example", "us-east-1"), tmp_path / "b")
    aws = S3Repository(S3Location("b", "p", "", "us-east-1"), tmp_path / "c")
    assert plain._part_buffers is not None
    assert secure._part_buffers is None
    assert aws._part_buffers is None


def test_checksums_turned_off_by_the_operator_stay_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AWS_REQUEST_CHECKSUM_CALCULATION=when_required (a store that refuses the
    headers): multipart uploads then declare no CRC32 their parts would not carry."""
    location = S3Location("b", "p", "http://127.0.0.1:9", "us-east-1")
    assert S3Repository(location, tmp_path / "a")._part_checksums
    monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")
    assert not S3Repository(location, tmp_path / "b")._part_checksums


def test_a_part_recorded_beyond_a_gap_is_not_counted_and_the_resume_is_whole(
    store_db: pw.Database,
    tmp_path: Path,
    bucket: S3Location,
    moto_server: MotoServer,  # noqa: F811
) -> None:
    """Parts go to the bucket several at once, so part 3 may be recorded while part 2
    failed: what counts is the unbroken run from part 1, the resume sends part 2 and
    on again (replacing the stale record), and the committed file is the right one."""
    location = dataclasses.replace(bucket, part_size=5 * 1024**2)
    first = domain_on(S3Repository(location, tmp_path / "a" / "staging"), tmp_path / "a")
    weights = os.urandom(17 * 1024**2 + 5)
    files = {"model.py": b"# gap\n", "weights.bin": weights}
    sent = {"model.py": b"# gap\n", "weights.bin": weights[: 16 * 1024**2]}
    with pytest.raises(FailedPrecondition, match="incomplete"):
        upload(first, "m", files, send=sent, upload_id="gapped")
    assert sorted(part.number for part in tables.UploadPart.select()) == [1, 2, 3]
    tables.UploadPart.delete().where(tables.UploadPart.number == 2).execute()  # "failed"
    second = domain_on(S3Repository(location, tmp_path / "b" / "staging"), tmp_path / "b")
    status = asyncio.run(second.uploads.get("gapped"))
    assert {f.spec.path: f.received for f in status.files}["weights.bin"] == 5 * 1024**2
    assert upload(second, "m", files, upload_id="gapped").version == 1
    assert read_version(second, "m", 1) == files
    assert tables.UploadPart.select().count() == 0


def parted_domain(tmp_path: Path, bucket: S3Location, name: str = "a") -> Domain:
    """A replica whose parts are 5 MiB (S3's smallest): a 12 MiB file spans three."""
    location = dataclasses.replace(bucket, part_size=5 * 1024**2)
    return domain_on(S3Repository(location, tmp_path / name / "staging"), tmp_path / name)


def test_content_stored_by_another_upload_meanwhile_aborts_this_ones_parts(
    store_db: pw.Database,
    tmp_path: Path,
    bucket: S3Location,
    moto_server: MotoServer,  # noqa: F811
) -> None:
    """Dedup after the bytes: the content was not stored when this upload began (so
    its bytes went to the bucket in parts), but another upload stored it before this
    one committed. The blob stays the other's object; this one's multipart upload is
    aborted, nothing of it stays, and its version reads the shared blob."""
    domain = parted_domain(tmp_path, bucket)
    weights = os.urandom(12 * 1024**2 + 1)
    files = {"model.py": b"# late\n", "weights.bin": weights}

    async def the_other_upload_first() -> None:
        async def parts() -> Any:
            other = {"model.py": b"# first\n", "weights.bin": weights}
            yield UploadHeader("other", "first", specs(other))
            yield Chunk("model.py", 0, other["model.py"])
            for offset in range(0, len(weights), 1024**2):
                yield Chunk("weights.bin", offset, weights[offset : offset + 1024**2])

        await domain.uploads.receive(parts())

    record = upload(domain, "m", files, upload_id="late", after_header=the_other_upload_first)
    assert read_version(domain, "m", record.version) == files
    stored = blob_keys(moto_server, bucket)
    assert stored[hashlib.sha256(weights).hexdigest()].startswith(
        "team/models/blobs/uploads/first/"
    )
    assert keys(moto_server, bucket) == sorted(stored.values())  # one object per content
    assert pending_multipart_uploads(moto_server, bucket) == []
    assert tables.UploadPart.select().count() == 0


class _RacedRepository(S3Repository):
    """A bucket where another upload of the same content writes its blob row just
    after this one completed its object: the interleaving of two ingests at once.
    ``winner_present``: that other upload's object is in the bucket (else it is gone)."""

    winner = "blobs/uploads/other/winner"

    def __init__(self, location: S3Location, staging: Path, *, winner_present: bool) -> None:
        super().__init__(location, staging)
        self.winner_present = winner_present

    def store_blob(self, upload_id: str, path: str, sha256: str) -> str:
        location = super().store_blob(upload_id, path, sha256)
        if path == "weights.bin":
            if self.winner_present:
                self._client.put_object(
                    Bucket=self.location.bucket, Key=self.location.key(self.winner), Body=WEIGHTS
                )
            tables.Blob.create(sha256=sha256, size=len(WEIGHTS), location=self.winner)
        return location


@pytest.mark.parametrize("winner_present", [True, False], ids=["winner-stored", "winner-gone"])
def test_two_uploads_storing_one_content_at_once_leave_one_object(
    store_db: pw.Database,
    tmp_path: Path,
    bucket: S3Location,
    moto_server: MotoServer,  # noqa: F811
    winner_present: bool,
) -> None:
    repository = _RacedRepository(bucket, tmp_path / "staging", winner_present=winner_present)
    domain = domain_on(repository, tmp_path)
    files = {"model.py": b"# raced\n", "weights.bin": WEIGHTS}
    assert read_version(domain, "m", upload(domain, "m", files, upload_id="raced").version) == files
    weights_key = blob_keys(moto_server, bucket)[SHA]
    if winner_present:
        assert weights_key == f"team/models/{_RacedRepository.winner}"
    else:  # the row's object was gone: this upload's object took its place
        assert weights_key.startswith("team/models/blobs/uploads/raced/")
    assert keys(moto_server, bucket) == sorted(blob_keys(moto_server, bucket).values())


def test_a_file_that_fails_its_checksum_leaves_nothing_in_the_bucket(
    store_db: pw.Database,
    tmp_path: Path,
    bucket: S3Location,
    moto_server: MotoServer,  # noqa: F811
) -> None:
    """12 MiB sent in 5 MiB parts, one byte wrong: DataLoss, the multipart upload
    aborted and its parts forgotten (a resume must not bring the bad bytes back from
    the bucket), no object, no version; the right bytes then commit."""
    domain = parted_domain(tmp_path, bucket)
    weights = os.urandom(12 * 1024**2 + 7)
    files = {"model.py": b"# checked\n", "weights.bin": weights}
    corrupted = {**files, "weights.bin": weights[:-1] + bytes([weights[-1] ^ 1])}
    with pytest.raises(DataLoss, match=r"weights\.bin"):
        upload(domain, "m", files, send=corrupted, upload_id="bad")
    assert tables.ModelVersion.select().count() == 0
    assert tables.UploadPart.select().count() == 0
    assert pending_multipart_uploads(moto_server, bucket) == []
    assert keys(moto_server, bucket) == []  # files are verified before any is stored
    status = asyncio.run(domain.uploads.get("bad"))
    assert {f.spec.path: f.received for f in status.files}["weights.bin"] == 0
    assert upload(domain, "m", files, upload_id="bad").version == 1
    assert read_version(domain, "m", 1) == files
    assert pending_multipart_uploads(moto_server, bucket) == []
    assert keys(moto_server, bucket) == sorted(blob_keys(moto_server, bucket).values())


def test_a_restore_that_failed_after_completing_the_parts_resumes_later(
    store_db: pw.Database,
    tmp_path: Path,
    bucket: S3Location,
    moto_server: MotoServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The second replica completes the first one's parts, then cannot fetch them (the
    bucket drops the download). On PostgreSQL the transaction brings the part rows
    back while S3 has completed their multipart upload; the next resume must use the
    object, not be stuck on a multipart upload that no longer exists."""
    files, second = parted_by_a_first_replica(tmp_path, bucket)
    client = second.repository._client
    download, dropped = client.download_file, []

    def dropped_once(*args: Any, **kwargs: Any) -> Any:
        if not dropped:
            dropped.append(args)
            raise EndpointConnectionError(endpoint_url=bucket.endpoint)
        return download(*args, **kwargs)

    monkeypatch.setattr(client, "download_file", dropped_once)
    with pytest.raises(Unavailable, match="cannot be reached"):
        upload(second, "m", files, upload_id="parted")
    assert upload(second, "m", files, upload_id="parted").version == 1
    assert read_version(second, "m", 1) == files
    assert tables.UploadPart.select().count() == 0
    assert pending_multipart_uploads(moto_server, bucket) == []
