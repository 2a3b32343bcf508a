"""Upload of one file to S3 storage through MLServe against a plain boto3 multipart
upload of the same file to the same S3-compatible server (moto's), in one run.

1. boto3's ``upload_file`` (multipart, the same part size and concurrency MLServe
   uses, and MLServe's client configuration: payloads unsigned, a CRC32 on every
   part), timed.
2. MLServe (``--storage s3://…``, ``--no-embedded-triton``, PostgreSQL-less:
   SQLite) receives the file as a one-file version through the Python client's
   ``upload`` (as ``mlserve models upload`` does: the client hashes the file while
   it streams it, the digest following the bytes; its digest cache off), timed
   from the call to the committed version. A sha256 of the file alone is timed on
   its own for reference.

The CPU seconds moto, the uploading process and MLServe's server spend during
each are printed beside the times: on two cores moto's own work (about 12 s per
GiB) dominates both, so what MLServe adds shows in the CPU column first.

MLServe's path: the stream is staged on local disk, each 64 MiB part sent to the
bucket as it is complete (4 at once, each recorded in the database) as a part of a
multipart upload at the blob's own key, the tail at the end, and once the sha256
checks out the multipart upload completed there: no copy inside the bucket (the
version's copy in Triton's layout waits for a Triton that reads the bucket to load it).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path

import boto3

from bench.common import MIB, Report, Table, cpu_seconds, format_size
from mlserve.storage.s3 import TRANSFER, S3Location, client_config
from mlserve_client import Client
from mlserve_client.digests import ENV as DIGEST_CACHE_ENV
from tests.support.mlserve import MLServeProcess
from tests.support.s3 import MotoServer

DEFAULT_SIZE = 1024**3
RATIO_AIM = 0.8


def run(size: int = DEFAULT_SIZE) -> Report:
    moto = MotoServer().start()
    try:
        with tempfile.TemporaryDirectory(prefix="mlserve-bench-s3-") as scratch:
            return _measure(Path(scratch), moto, size)
    finally:
        moto.stop()


def _measure(work: Path, moto: MotoServer, size: int) -> Report:
    folder = work / "model"
    (folder / "1").mkdir(parents=True)
    # A python model (the one backend allowed by default) with the weights beside it.
    (folder / "1" / "model.py").write_text("# weights in weights.bin\n")
    source = folder / "1" / "weights.bin"
    with source.open("wb") as out:
        for _ in range(0, size, 16 * MIB):
            out.write(os.urandom(min(16 * MIB, size)))
        out.truncate(size)

    plain_bucket = moto.bucket()
    reference = boto3.client(
        "s3",
        config=client_config(S3Location.parse(f"s3://{plain_bucket}?endpoint={moto.endpoint}")),
        endpoint_url=moto.endpoint,
        region_name="us-east-1",
        aws_access_key_id=moto.env()["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=moto.env()["AWS_SECRET_ACCESS_KEY"],
    )
    assert moto.process is not None
    usage = _Usage(moto.process.pid)
    started = time.perf_counter()
    reference.upload_file(str(source), plain_bucket, "weights.bin", Config=TRANSFER)
    boto3_seconds = time.perf_counter() - started
    boto3_cpu = usage.spent()
    moto.client().delete_object(Bucket=plain_bucket, Key="weights.bin")

    started = time.perf_counter()
    with source.open("rb") as handle:
        hashlib.file_digest(handle, "sha256")
    hash_seconds = time.perf_counter() - started

    bucket = moto.bucket()
    server = MLServeProcess(
        work / "home", "--no-embedded-triton", "--storage", f"s3://{bucket}/bench", env=moto.env()
    ).start(wait_for_triton=False)
    try:
        previous = os.environ.get(DIGEST_CACHE_ENV)
        os.environ[DIGEST_CACHE_ENV] = "off"
        try:
            with Client(server.address, server.key) as client:
                assert server.process is not None
                usage = _Usage(moto.process.pid, server.process.pid)
                started = time.perf_counter()
                version = client.upload(folder, "bench-s3")
                mlserve_seconds = time.perf_counter() - started
                mlserve_cpu = usage.spent()
        finally:
            if previous is None:
                del os.environ[DIGEST_CACHE_ENV]
            else:
                os.environ[DIGEST_CACHE_ENV] = previous
    finally:
        server.stop()
    if version.size_bytes != size + len("# weights in weights.bin\n"):
        raise RuntimeError(f"MLServe committed {version.size_bytes} bytes, not {size}")

    def row(
        what: str, seconds: float, ratio: str = "", cpu: list[float] | None = None
    ) -> list[str]:
        spent = [f"{value:.2f}" for value in cpu] if cpu else []
        spent += [""] * (3 - len(spent))
        return [what, f"{seconds:.2f}", f"{size / MIB / seconds:.0f}", ratio, *spent]

    ratio = boto3_seconds / mlserve_seconds
    return Report(
        f"Upload of {format_size(size)} to S3 storage (moto) vs plain boto3 multipart",
        [
            Table(
                [
                    "what",
                    "seconds",
                    "MiB/s",
                    "boto3 / this",
                    "CPU moto",
                    "CPU uploader",
                    "CPU MLServe",
                ],
                [
                    row(
                        "boto3 upload_file (multipart, 64 MiB parts, 8 at once)",
                        boto3_seconds,
                        cpu=boto3_cpu,
                    ),
                    row(
                        "MLServe: Python client upload (hash while streaming, commit)",
                        mlserve_seconds,
                        f"{ratio:.2f}",
                        mlserve_cpu,
                    ),
                    row("  ref: a sha256 pass over the file alone", hash_seconds),
                ],
            )
        ],
        [
            f"ratio {ratio:.2f} (aim {RATIO_AIM}); one run of each, moto as a child process "
            "on loopback, MLServe on SQLite",
            "CPU in seconds during each upload: moto's server, the uploading process "
            "(boto3's, or the Python client here), MLServe's server",
            "MLServe's extra work: local staging (written back as it arrives, fsynced at "
            "the end), sha256 on both sides, parts sent 4 at once beside the stream's "
            "writer thread (boto3: 8), each recorded in the database; the multipart "
            "upload completes at the blob's key",
        ],
    )


class _Usage:
    """CPU seconds spent from now by moto's process, this one, and MLServe's (if given)."""

    def __init__(self, moto: int, server: int | None = None) -> None:
        self.pids = [moto, os.getpid()] + ([server] if server is not None else [])
        self.before = [cpu_seconds(pid) for pid in self.pids]

    def spent(self) -> list[float]:
        return [cpu_seconds(pid) - was for pid, was in zip(self.pids, self.before, strict=True)]
