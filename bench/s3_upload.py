"""Upload of one file to S3 storage through MLServe against a plain boto3 multipart
upload of the same file to the same S3-compatible server (moto's), in one run.

1. boto3's ``upload_file`` (multipart, the same part size and concurrency MLServe
   uses), timed.
2. MLServe (``--storage s3://…``, ``--no-embedded-triton``, PostgreSQL-less:
   SQLite) receives the file as a one-file version through the Python client's
   ``upload`` (as ``mlserve models upload`` does: the client hashes the file while
   it streams it, the digest following the bytes; its digest cache off), timed
   from the call to the committed version. A sha256 of the file alone is timed on
   its own for reference.

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

from bench.common import MIB, Report, Table, format_size
from mlserve.storage.s3 import TRANSFER
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
    started = time.perf_counter()
    moto.client().upload_file(str(source), plain_bucket, "weights.bin", Config=TRANSFER)
    boto3_seconds = time.perf_counter() - started
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
                started = time.perf_counter()
                version = client.upload(folder, "bench-s3")
                mlserve_seconds = time.perf_counter() - started
        finally:
            if previous is None:
                del os.environ[DIGEST_CACHE_ENV]
            else:
                os.environ[DIGEST_CACHE_ENV] = previous
    finally:
        server.stop()
    if version.size_bytes != size + len("# weights in weights.bin\n"):
        raise RuntimeError(f"MLServe committed {version.size_bytes} bytes, not {size}")

    def row(what: str, seconds: float, ratio: str = "") -> list[str]:
        return [what, f"{seconds:.2f}", f"{size / MIB / seconds:.0f}", ratio]

    ratio = boto3_seconds / mlserve_seconds
    return Report(
        f"Upload of {format_size(size)} to S3 storage (moto) vs plain boto3 multipart",
        [
            Table(
                ["what", "seconds", "MiB/s", "boto3 / this"],
                [
                    row("boto3 upload_file (multipart, 64 MiB parts, 8 at once)", boto3_seconds),
                    row(
                        "MLServe: Python client upload (hash while streaming, commit)",
                        mlserve_seconds,
                        f"{ratio:.2f}",
                    ),
                    row("  ref: a sha256 pass over the file alone", hash_seconds),
                ],
            )
        ],
        [
            f"ratio {ratio:.2f} (aim {RATIO_AIM}); one run of each, moto as a child process "
            "on loopback, MLServe on SQLite",
            "MLServe's extra work: local staging with fsync, sha256 on both sides, "
            "parts sent 4 at once beside the stream's writer thread (boto3: 8), each "
            "recorded in the database; the multipart upload completes at the blob's key",
        ],
    )
