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

Both, in two CPU layouts one after the other:

- **shared**: moto, the uploading process and MLServe on both cores. moto's own
  work (about 11 CPU-seconds per GiB, most of it holding its GIL) takes one and
  a half of them, so the hop MLServe adds (client → MLServe, then MLServe → S3,
  on the same two cores) competes with the S3 server for CPU;
- **S3 on its own core**: moto pinned to one CPU, the uploading process and
  MLServe to the other, for the boto3 run too: the S3 server as another machine,
  which it is in any deployment.

Each pair of runs (boto3, then MLServe) has a moto of its own, started for it:
moto keeps every object in its process, and one holding the gigabytes of earlier
runs spent up to 40 % more CPU on the later ones.

The CPU seconds moto, the uploading process and MLServe's server spend during
each upload are printed beside the times.

MLServe's path: the stream is staged on local disk (written back as it arrives),
each 64 MiB part read into a reused buffer and sent to the bucket as it is
complete (4 at once, each recorded in the database) as a part of a multipart
upload at the blob's own key, the tail at the end, and once the sha256 checks
out the multipart upload completed there: no copy inside the bucket (the
version's copy in Triton's layout waits for a Triton that reads the bucket to load it).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3

from bench.common import MIB, Report, Table, cpu_seconds, format_size, pin_threads
from mlserve.storage.s3 import TRANSFER, S3Location, client_config
from mlserve_client import Client
from mlserve_client.digests import ENV as DIGEST_CACHE_ENV
from tests.support.mlserve import MLServeProcess
from tests.support.s3 import MotoServer

DEFAULT_SIZE = 1024**3
RATIO_AIM = 0.8
DEFAULT_ROUNDS = 2
LAYOUTS = ("shared", "S3 on its own core")
SCRIPT = "# weights in weights.bin\n"


@dataclass(frozen=True)
class Timed:
    seconds: float
    cpu: list[float]  # moto, the uploading process, MLServe (when it ran)


def run(size: int = DEFAULT_SIZE, rounds: int = DEFAULT_ROUNDS) -> Report:
    with tempfile.TemporaryDirectory(prefix="mlserve-bench-s3-") as scratch:
        return _measure(Path(scratch), size, rounds)


@contextlib.contextmanager
def _fresh_moto() -> Iterator[MotoServer]:
    """A moto of its own for one pair of runs: moto keeps every object in its process,
    and one holding the gigabytes of earlier runs spent more CPU on the next ones."""
    moto = MotoServer().start()
    try:
        yield moto
    finally:
        moto.stop()


def _measure(work: Path, size: int, rounds: int) -> Report:
    folder = work / "model"
    (folder / "1").mkdir(parents=True)
    # A python model (the one backend allowed by default) with the weights beside it.
    (folder / "1" / "model.py").write_text(SCRIPT)
    source = folder / "1" / "weights.bin"
    with source.open("wb") as out:
        for _ in range(0, size, 16 * MIB):
            out.write(os.urandom(min(16 * MIB, size)))
        out.truncate(size)
    started = time.perf_counter()
    with source.open("rb") as handle:
        hashlib.file_digest(handle, "sha256")
    hash_seconds = time.perf_counter() - started

    results: list[tuple[str, Timed, Timed]] = []
    for round_number in range(1, rounds + 1):
        for number, layout in enumerate(LAYOUTS):
            with _fresh_moto() as moto, _layout(layout, moto):
                plain = _boto3_upload(moto, source)
                home = work / f"home-{round_number}-{number}"
                through = _mlserve_upload(moto, home, folder, size)
            print(
                f"s3-upload: round {round_number}/{rounds}, {layout}: boto3 "
                f"{plain.seconds:.2f}s, MLServe {through.seconds:.2f}s, "
                f"ratio {plain.seconds / through.seconds:.2f}",
                flush=True,
            )
            results.append((layout, plain, through))
    return _report(size, results, hash_seconds)


@contextlib.contextmanager
def _layout(layout: str, moto: MotoServer) -> Iterator[None]:
    """Pin moto to one CPU and this process (and the MLServe it starts) to the other."""
    every_cpu = os.sched_getaffinity(0)
    if layout == LAYOUTS[0] or len(every_cpu) < 2:
        yield
        return
    assert moto.process is not None
    first, second, *_ = sorted(every_cpu)
    pin_threads(moto.process.pid, {first})
    pin_threads(os.getpid(), {second})
    try:
        yield
    finally:
        pin_threads(moto.process.pid, every_cpu)
        pin_threads(os.getpid(), every_cpu)


def _boto3_upload(moto: MotoServer, source: Path) -> Timed:
    bucket = moto.bucket()
    reference = boto3.client(
        "s3",
        config=client_config(S3Location.parse(f"s3://{bucket}?endpoint={moto.endpoint}")),
        endpoint_url=moto.endpoint,
        region_name="us-east-1",
        aws_access_key_id=moto.env()["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=moto.env()["AWS_SECRET_ACCESS_KEY"],
    )
    assert moto.process is not None
    usage = _Usage(moto.process.pid)
    started = time.perf_counter()
    reference.upload_file(str(source), bucket, "weights.bin", Config=TRANSFER)
    timed = Timed(time.perf_counter() - started, usage.spent())
    reference.delete_object(Bucket=bucket, Key="weights.bin")
    return timed


def _mlserve_upload(moto: MotoServer, home: Path, folder: Path, size: int) -> Timed:
    bucket = moto.bucket()
    server = MLServeProcess(
        home, "--no-embedded-triton", "--storage", f"s3://{bucket}/bench", env=moto.env()
    ).start(wait_for_triton=False)
    previous = os.environ.get(DIGEST_CACHE_ENV)
    os.environ[DIGEST_CACHE_ENV] = "off"
    try:
        with Client(server.address, server.key) as client:
            assert server.process is not None
            assert moto.process is not None
            usage = _Usage(moto.process.pid, server.process.pid)
            started = time.perf_counter()
            version = client.upload(folder, "bench-s3")
            timed = Timed(time.perf_counter() - started, usage.spent())
    finally:
        if previous is None:
            del os.environ[DIGEST_CACHE_ENV]
        else:
            os.environ[DIGEST_CACHE_ENV] = previous
        server.stop()
    if version.size_bytes != size + len(SCRIPT):
        raise RuntimeError(f"MLServe committed {version.size_bytes} bytes, not {size}")
    return timed


def _report(size: int, results: list[tuple[str, Timed, Timed]], hash_seconds: float) -> Report:
    def row(what: str, timed: Timed, ratio: str = "") -> list[str]:
        spent = [f"{value:.2f}" for value in timed.cpu]
        spent += [""] * (3 - len(spent))
        per_second = f"{size / MIB / timed.seconds:.0f}"
        return [what, f"{timed.seconds:.2f}", per_second, ratio, *spent]

    rows = []
    ratios: dict[str, list[float]] = {layout: [] for layout in LAYOUTS}
    for layout, plain, through in results:
        ratio = plain.seconds / through.seconds
        ratios[layout].append(ratio)
        rows.append(row(f"{layout}: boto3 upload_file (64 MiB parts, 8 at once)", plain))
        rows.append(
            row(f"{layout}: MLServe Client.upload (hash, stream, commit)", through, f"{ratio:.2f}")
        )
    notes = [
        f"{layout}: boto3 / MLServe median {statistics.median(each):.2f} "
        f"(rounds {', '.join(f'{r:.2f}' for r in each)}; aim {RATIO_AIM})"
        for layout, each in ratios.items()
        if each
    ]
    rows.append(row("ref: a sha256 pass over the file alone", Timed(hash_seconds, [])))
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
                rows,
            )
        ],
        [
            *notes,
            "each round runs both layouts, boto3 then MLServe in each; moto as a child "
            "process on loopback, MLServe on SQLite",
            "CPU in seconds during each upload: moto's server, the uploading process "
            "(boto3's, or the Python client), MLServe's server",
            "MLServe's extra work: the hop through it (gRPC in, S3 out), local staging "
            "(written back as it arrives, fsynced at the end), sha256 on both sides, "
            "each part recorded in the database",
        ],
    )


class _Usage:
    """CPU seconds spent from now by moto's process, this one, and MLServe's (if given)."""

    def __init__(self, moto: int, server: int | None = None) -> None:
        self.pids = [moto, os.getpid()] + ([server] if server is not None else [])
        self.before = [cpu_seconds(pid) for pid in self.pids]

    def spent(self) -> list[float]:
        return [cpu_seconds(pid) - was for pid, was in zip(self.pids, self.before, strict=True)]
