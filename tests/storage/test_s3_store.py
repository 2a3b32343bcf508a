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

from mlserve.catalog.uploads import UploadLimits, Uploads
from mlserve.core.errors import FailedPrecondition, Unavailable
from mlserve.settings import resolve
from mlserve.storage import tables
from mlserve.storage.s3 import S3Location, S3Repository
from tests.storage.test_blobs_unit import Domain, read_version, upload
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


def test_a_version_lands_in_the_bucket_in_tritons_layout(
    domain: Domain,
    bucket: S3Location,
    moto_server: MotoServer,  # noqa: F811
) -> None:
    files = {"model.py": b"# one\n", "weights.bin": WEIGHTS}
    assert upload(domain, "m", files).version == 1
    code_sha = hashlib.sha256(b"# one\n").hexdigest()
    assert keys(moto_server, bucket) == sorted(
        [
            f"team/models/blobs/sha256/{code_sha[:2]}/{code_sha}",
            f"team/models/blobs/sha256/{SHA[:2]}/{SHA}",
            "team/models/repository/m/1/model.py",
            "team/models/repository/m/1/weights.bin",
            "team/models/repository/m/config.pbtxt",
        ]
    )
    stored = moto_server.client().get_object(
        Bucket=bucket.bucket, Key="team/models/repository/m/1/weights.bin"
    )
    assert stored["Body"].read() == WEIGHTS
    assert read_version(domain, "m", 1) == files
    assert not list((domain.home / "staging").iterdir())  # staged bytes moved into the bucket


def test_config_is_written_after_every_file_of_the_version(
    domain: Domain, bucket: S3Location
) -> None:
    """The client's own calls, in order: a Triton listing the bucket never sees a
    config.pbtxt before the files it names."""
    written: list[str] = []

    def record(params: dict[str, Any], **_: Any) -> None:
        written.append(params["Key"])

    client = domain.repository._client  # type: ignore[attr-defined]
    for operation in ("PutObject", "CopyObject", "CreateMultipartUpload"):
        client.meta.events.register(f"provide-client-params.s3.{operation}", record)
    upload(domain, "m", {"model.py": b"# a\n", "b/c.bin": WEIGHTS})
    in_repository = [key for key in written if "/repository/" in key]
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
    upload(domain, "m", {"model.py": b"# one\n", "weights.bin": WEIGHTS})
    second = {"model.py": b"# two\n", "weights.bin": WEIGHTS}
    assert upload(domain, "m", second, send={"model.py": b"# two\n"}).version == 2
    assert read_version(domain, "m", 2) == second
    asyncio.run(domain.catalog.versions.delete_version("m", 1))
    remaining = keys(moto_server, bucket)
    assert not any(key.startswith("team/models/repository/m/1/") for key in remaining)
    one_sha = hashlib.sha256(b"# one\n").hexdigest()
    assert f"team/models/blobs/sha256/{one_sha[:2]}/{one_sha}" not in remaining
    assert f"team/models/blobs/sha256/{SHA[:2]}/{SHA}" in remaining
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
    assert domain.blobs.sweep() == [orphan]
    assert keys(moto_server, bucket) == []


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


def test_a_resume_through_another_replica_continues_from_the_parts_in_the_bucket(
    store_db: pw.Database,
    tmp_path: Path,
    bucket: S3Location,
    moto_server: MotoServer,  # noqa: F811
) -> None:
    """Two repositories with their own staging (two replicas), one database and bucket:
    what the first sent to the bucket in parts is where the second resumes."""
    location = dataclasses.replace(bucket, part_size=5 * 1024**2)
    first = domain_on(S3Repository(location, tmp_path / "a" / "staging"), tmp_path / "a")
    weights = os.urandom(12 * 1024**2 + 3)
    files = {"model.py": b"# parts\n", "weights.bin": weights}
    sent = {"model.py": b"# parts\n", "weights.bin": weights[: 11 * 1024**2]}
    with pytest.raises(FailedPrecondition, match="incomplete"):
        upload(first, "m", files, send=sent, upload_id="parted")
    assert [part.size for part in tables.UploadPart.select()] == [5 * 1024**2] * 2
    second = domain_on(S3Repository(location, tmp_path / "b" / "staging"), tmp_path / "b")
    status = asyncio.run(second.uploads.get("parted"))
    assert {f.spec.path: f.received for f in status.files}["weights.bin"] == 10 * 1024**2
    assert upload(second, "m", files, upload_id="parted").version == 1
    assert read_version(second, "m", 1) == files
    assert tables.UploadPart.select().count() == 0
    assert not [key for key in keys(moto_server, bucket) if "/staging/" in key]
    assert moto_server.client().list_multipart_uploads(Bucket=bucket.bucket).get("Uploads") is None


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
