"""Upload throughput through MLServe against ``cp`` on the same disk, and the server's RSS.

One run, side by side, on one file of random bytes, in interleaved rounds:

1. ``cp`` of the file to a new path on the same file system, timed; then an
   fsync of the copy, timed separately (``cp`` alone leaves the bytes in the
   page cache; MLServe fsyncs what it received before it commits a version).
   A second ``cp`` right after the first (same pages, just freed) is reported
   for reference as "warm".
2. The disk work the server must do, alone, in this process: read the file in
   chunks, ``pwrite`` them to a new file, sha256 them, start writeback every
   16 MiB as the server does, fsync. This is the floor for a single-threaded
   receiver, without any gRPC. Beside it, the bare gRPC transfer of the file
   (``bench/grpc_floor.py``: a grpc.aio server in a child process that only
   counts the bytes, the sync client MLServe's Python client uses), with both
   sides' CPU: what any gRPC upload pays before a byte is hashed or written.
3. MLServe (``--no-embedded-triton``, its home on the same file system)
   receives the file as a one-file model version through ``UploadModelVersion``,
   driven by the raw generated stubs in this process, 1 MiB chunks read lazily.
   The client hashes the file once before any clock starts (the manifest
   carries the digest); that time is reported on its own line. The version is
   deleted after each round.
4. The Python client (``Client.upload``, what ``mlserve models upload`` runs) on a
   folder holding the file, every byte of it inside the clock: the client hashes
   while it sends (its digest cache off, so every round sends every byte) and the
   digest follows the bytes; the server hashes beside writing, fsyncs once.

During every MLServe upload a thread samples the server's VmRSS every 50 ms;
the kernel's VmHWM (reset just before) catches any spike between samples.

Each timed step starts after a pause (``--settle``, 10 s by default): on a
virtual machine whose kernel hands freed memory back to the host (free page
reporting), the first touch of a page costs far more than reuse of one just
freed, so without the pause whichever step ran right after another freed 2 GiB
would win. With it every step starts from the same state.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import (
    MIB,
    RESULTS_DIR,
    MLServeProcess,
    Report,
    RssSampler,
    Table,
    baseline_rss,
    cpu_seconds,
    format_size,
    read_rss,
    read_status_kib,
    reset_peak_rss,
)
from bench.grpc_floor import BareReceiver, Transfer
from mlserve.storage import writeback
from mlserve_api.v1 import model_pb2
from mlserve_client import Client
from mlserve_client.digests import ENV as DIGEST_CACHE_ENV

DEFAULT_SIZE = 2 * 1024**3
DEFAULT_CHUNK = 1 * MIB
DEFAULT_ROUNDS = 3
DEFAULT_SETTLE = 10.0
WRITE_BLOCK = 16 * MIB
HASH_BLOCK = 4 * MIB
WARMUP_SIZE = 1 * MIB
MODEL = "bench-upload"
FILE_PATH = "model.onnx"  # the name alone tells MLServe the backend; no config needed
RATIO_AIM = 0.8
RSS_AIM = 100 * MIB

Request = model_pb2.UploadModelVersionRequest


@dataclass(frozen=True)
class ServerUsage:
    """What the server process spent during one upload."""

    user_seconds: float
    system_seconds: float
    minor_faults: int


@dataclass
class UploadFigures:
    size: int
    chunk_size: int
    settle: float
    hash_seconds: float = 0.0
    cp: list[float] = field(default_factory=list)
    cp_fsync: list[float] = field(default_factory=list)
    cp_warm: list[float] = field(default_factory=list)
    floor: list[float] = field(default_factory=list)
    transport: list[Transfer] = field(default_factory=list)
    mlserve: list[float] = field(default_factory=list)
    client: list[float] = field(default_factory=list)
    client_prehash: list[float] = field(default_factory=list)
    usage: list[ServerUsage] = field(default_factory=list)
    client_cpu: list[float] = field(default_factory=list)
    rss_baseline: int = 0
    rss_peak_sampled: int = 0
    rss_peak_kernel: int = 0  # VmHWM over the uploads; 0 if it could not be reset
    rss_after: int = 0
    rss_samples: int = 0
    client_rss_growth: int = 0

    @property
    def rss_peak(self) -> int:
        return max(self.rss_peak_sampled, self.rss_peak_kernel)

    @property
    def rss_growth(self) -> int:
        return self.rss_peak - self.rss_baseline

    def throughput(self, seconds: float) -> float:
        return self.size / MIB / seconds


def run(
    size: int = DEFAULT_SIZE,
    chunk_size: int = DEFAULT_CHUNK,
    rounds: int = DEFAULT_ROUNDS,
    settle: float = DEFAULT_SETTLE,
) -> Report:
    """Measure, clean up every large file, and return the report."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="upload-", dir=RESULTS_DIR))
    try:
        figures = measure(work, UploadFigures(size, chunk_size, settle), rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report(figures)


def measure(work: Path, figures: UploadFigures, rounds: int) -> UploadFigures:
    size = figures.size
    (work / "model").mkdir()
    source = work / "model" / FILE_PATH
    print(f"upload: writing {format_size(size)} of random bytes to {source}", flush=True)
    write_random_file(source, size)
    print("upload: hashing it (client side, before any clock starts)", flush=True)
    started = time.perf_counter()
    digest = file_sha256(source)
    figures.hash_seconds = time.perf_counter() - started

    stack = contextlib.ExitStack()
    server = MLServeProcess(
        work / "home",
        "--no-embedded-triton",
        "--max-upload-bytes",
        str(max(8 * 1024**3, 2 * size)),
        # The default a user gets; the test fixture's 0.5 s is for fast tests.
        "--health-interval",
        "2",
        # The uploaded file is a model.onnx; no Triton loads it here.
        "--allowed-backends",
        "python,onnxruntime",
    )
    server.start(wait_for_triton=False)
    try:
        bare = stack.enter_context(BareReceiver())
        uploader = Uploader(server, digest, figures)
        for number in range(1, rounds + 1):
            settle(figures.settle)
            cp, cp_fsync = time_cp(source, work / "copy.bin")
            warm, _ = time_cp(source, work / "copy.bin")
            figures.cp.append(cp)
            figures.cp_fsync.append(cp_fsync)
            figures.cp_warm.append(warm)
            settle(figures.settle)
            figures.floor.append(time_disk_work(source, work / "floor.bin", figures.chunk_size))
            settle(figures.settle)
            figures.transport.append(bare.transfer(source, figures.chunk_size))
            settle(figures.settle)
            figures.mlserve.append(uploader.upload(source))
            settle(figures.settle)
            figures.client.append(uploader.upload_with_client(source.parent))
            settle(figures.settle)
            figures.client_prehash.append(uploader.upload_with_client(source.parent, prehash=True))
            print(
                f"upload: round {number}/{rounds}: cp {cp:.2f}s + fsync {cp_fsync:.2f}s "
                f"(warm cp {warm:.2f}s), disk work alone {figures.floor[-1]:.2f}s, "
                f"bare gRPC transfer {figures.transport[-1].seconds:.2f}s, "
                f"MLServe (stubs, pre-hashed) {figures.mlserve[-1]:.2f}s, "
                f"MLServe (Python client, hashing while sending) {figures.client[-1]:.2f}s, "
                f"(Python client, hashing first) {figures.client_prehash[-1]:.2f}s",
                flush=True,
            )
        uploader.finish()
        return figures
    except BaseException:
        print(f"upload: the server's log ends with:\n{server.log.read_text()[-3000:]}")
        raise
    finally:
        stack.close()
        server.stop()


class Uploader:
    """Uploads to one MLServe, sampling its memory; deletes each version after it."""

    def __init__(self, server: MLServeProcess, digest: str, figures: UploadFigures) -> None:
        assert server.process is not None
        self.pid = server.process.pid
        self.stubs = server.stubs()
        self.client = Client(server.address, server.key)
        self.digest = digest
        self.figures = figures
        # A small upload first, so one-time costs (the upload code path, the
        # worker threads, SQLite's first write) are in the baseline, not in
        # the growth.
        warmup = os.urandom(WARMUP_SIZE)
        self._send(MODEL + "-warmup", hashlib.sha256(warmup).hexdigest(), WARMUP_SIZE, [warmup])
        figures.rss_baseline = baseline_rss(self.pid)
        self.kernel_peak_known = reset_peak_rss(self.pid)
        self.client_before = read_rss(os.getpid())

    def upload(self, source: Path) -> float:
        """Seconds for the raw stubs to send the pre-hashed file, recording server usage."""
        f = self.figures
        return self._timed(
            lambda: self._send(MODEL, self.digest, f.size, read_chunks(source, f.chunk_size)),
            record_usage=True,
        )

    def upload_with_client(self, folder: Path, *, prehash: bool = False) -> float:
        """Seconds for ``Client.upload`` of ``folder``, hashing while sending (or first)."""
        previous = os.environ.get(DIGEST_CACHE_ENV)
        os.environ[DIGEST_CACHE_ENV] = "off"
        try:
            return self._timed(
                lambda: self.client.upload(
                    folder, MODEL, chunk_size=self.figures.chunk_size, prehash=prehash
                ),
                record_usage=False,
            )
        finally:
            if previous is None:
                del os.environ[DIGEST_CACHE_ENV]
            else:
                os.environ[DIGEST_CACHE_ENV] = previous

    def _timed(self, send: Callable[[], model_pb2.ModelVersion], *, record_usage: bool) -> float:
        f = self.figures
        before = _process_stat(self.pid)
        client_cpu_before = cpu_seconds(os.getpid())
        with RssSampler(self.pid) as sampler, RssSampler(os.getpid()) as client_sampler:
            started = time.perf_counter()
            version = send()
            seconds = time.perf_counter() - started
        after = _process_stat(self.pid)
        if record_usage:
            f.usage.append(
                ServerUsage(
                    user_seconds=after[0] - before[0],
                    system_seconds=after[1] - before[1],
                    minor_faults=after[2] - before[2],
                )
            )
            f.client_cpu.append(cpu_seconds(os.getpid()) - client_cpu_before)
        f.rss_peak_sampled = max(f.rss_peak_sampled, sampler.peak)
        f.rss_samples += len(sampler.samples)
        f.client_rss_growth = max(f.client_rss_growth, client_sampler.peak - self.client_before)

        received = {file.path: file for file in version.files}
        if received.get(FILE_PATH) is None or received[FILE_PATH].sha256 != self.digest:
            raise RuntimeError(f"MLServe committed something else than was sent: {version}")
        if version.size_bytes != f.size:
            raise RuntimeError(f"MLServe committed {version.size_bytes} bytes, not {f.size}")
        self.stubs.models.DeleteModelVersion(
            model_pb2.DeleteModelVersionRequest(model=MODEL, version=version.version),
            metadata=tuple(self.stubs.auth),
        )
        return seconds

    def finish(self) -> None:
        f = self.figures
        if self.kernel_peak_known:
            f.rss_peak_kernel = read_status_kib(self.pid, "VmHWM") * 1024
        f.rss_after = read_rss(self.pid)
        self.stubs.channel.close()
        self.client.close()

    def _send(
        self, model: str, digest: str, size: int, blocks: Iterator[bytes] | list[bytes]
    ) -> model_pb2.ModelVersion:
        version: model_pb2.ModelVersion = self.stubs.models.UploadModelVersion(
            upload_stream(model, digest, size, iter(blocks), self.figures.chunk_size),
            metadata=tuple(self.stubs.auth),
        )
        return version


# --- the pieces ---------------------------------------------------------------


def settle(seconds: float) -> None:
    """Let the kernel hand freed pages back before the next timed step (see the module doc)."""
    time.sleep(seconds)


def write_random_file(path: Path, size: int) -> None:
    """``size`` random bytes, fsynced, so no dirty page of it is left to skew a timing."""
    with path.open("wb") as handle:
        remaining = size
        while remaining > 0:
            block = os.urandom(min(WRITE_BLOCK, remaining))
            handle.write(block)
            remaining -= len(block)
        handle.flush()
        os.fsync(handle.fileno())


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def time_cp(source: Path, destination: Path) -> tuple[float, float]:
    """Seconds for ``cp source destination``, then for an fsync of the copy. Deletes the copy."""
    try:
        started = time.perf_counter()
        subprocess.run(["cp", str(source), str(destination)], check=True)
        copied = time.perf_counter()
        fd = os.open(destination, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        synced = time.perf_counter()
    finally:
        destination.unlink(missing_ok=True)
    return copied - started, synced - copied


def time_disk_work(source: Path, destination: Path, chunk_size: int) -> float:
    """Seconds to do what the server does with the bytes, minus gRPC, on one thread:
    pwrite, sha256, writeback started every 16 MiB, fsync."""
    digest = hashlib.sha256()
    fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        started = time.perf_counter()
        offset = 0
        growing = writeback.Growing(fd)
        for block in read_chunks(source, chunk_size):
            data = memoryview(block)
            written = 0
            while written < len(data):
                written += os.pwrite(fd, data[written:], offset + written)
            digest.update(data)
            offset += written
            growing.grew_to(offset)
        os.fsync(fd)
        return time.perf_counter() - started
    finally:
        os.close(fd)
        destination.unlink(missing_ok=True)


def read_chunks(path: Path, chunk_size: int) -> Iterator[bytes]:
    """The file's bytes, one chunk per read, never more than one chunk in memory."""
    with path.open("rb", buffering=0) as handle:
        while block := handle.read(chunk_size):
            yield block


def upload_stream(
    model: str, digest: str, size: int, blocks: Iterator[bytes], chunk_size: int
) -> Iterator[Request]:
    """A header declaring one file, then its chunks in order."""
    header = model_pb2.UploadHeader(
        model=model,
        upload_id=f"bench-{uuid.uuid4().hex}",
        files=[model_pb2.FileManifest(path=FILE_PATH, size=size, sha256=digest)],
    )
    yield Request(header=header)
    offset = 0
    for block in blocks:
        for start in range(0, len(block), chunk_size):
            data = block[start : start + chunk_size]
            yield Request(chunk=model_pb2.FileChunk(path=FILE_PATH, offset=offset, data=data))
            offset += len(data)


def _process_stat(pid: int) -> tuple[float, float, int]:
    """(user seconds, system seconds, minor faults) of the process, all threads."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    # After the command name, minflt is the 8th field, utime the 12th, stime the 13th.
    return int(fields[11]) / tick, int(fields[12]) / tick, int(fields[7])


# --- the report ---------------------------------------------------------------


def report(figures: UploadFigures) -> Report:
    f = figures
    median = statistics.median
    cp = median(f.cp)
    cp_fsync = median([a + b for a, b in zip(f.cp, f.cp_fsync, strict=True)])
    warm_fsync = median([a + b for a, b in zip(f.cp_warm, f.cp_fsync, strict=True)])
    mlserve = median(f.mlserve)
    client = median(f.client)
    client_prehash = median(f.client_prehash)
    transport = [t.seconds for t in f.transport]

    def row(what: str, seconds: float, each: list[float], ratio: str = "") -> list[str]:
        rounds = " ".join(f"{value:.2f}" for value in each)
        return [what, f"{seconds:.2f}", f"{f.throughput(seconds):.0f}", ratio, rounds]

    def totals(a: list[float], b: list[float]) -> list[float]:
        return [x + y for x, y in zip(a, b, strict=True)]

    speed = [
        row("cp, no fsync", cp, f.cp),
        row("cp + fsync of the copy", cp_fsync, totals(f.cp, f.cp_fsync)),
        row("MLServe UploadModelVersion, raw stubs, sha256 in header", mlserve, f.mlserve),
        ["  MLServe / (cp + fsync), throughput", "", "", f"{cp_fsync / mlserve:.2f}", ""],
        ["  MLServe / cp, throughput", "", "", f"{cp / mlserve:.2f}", ""],
        row("MLServe Client.upload, hashing while sending", client, f.client),
        ["  Client.upload / (cp + fsync), throughput", "", "", f"{cp_fsync / client:.2f}", ""],
        row(
            "ref: Client.upload(prehash=True), hashing first (the old way)",
            client_prehash,
            f.client_prehash,
            f"{cp_fsync / client_prehash:.2f}",
        ),
        row(
            "ref: cp again at once, pages just freed (warm), + fsync",
            warm_fsync,
            totals(f.cp_warm, f.cp_fsync),
            f"{warm_fsync / mlserve:.2f}",
        ),
        row(
            "ref: bare gRPC transfer, nothing hashed or written",
            median(transport),
            transport,
            f"{median(transport) / mlserve:.2f}",
        ),
        [
            f"  its CPU (median): server {median([t.server_cpu for t in f.transport]):.2f} s, "
            f"client {median([t.client_cpu for t in f.transport]):.2f} s",
            "",
            "",
            "",
            "",
        ],
        row(
            "ref: server's disk work alone (pwrite+sha256+fsync)",
            median(f.floor),
            f.floor,
            f"{median(f.floor) / mlserve:.2f}",
        ),
        row("ref: client sha256 before upload (not timed above)", f.hash_seconds, [f.hash_seconds]),
    ]
    kernel = f"{f.rss_peak_kernel / MIB:.1f}" if f.rss_peak_kernel else "n/a"
    memory = [
        ["server RSS before (idle, after a 1 MiB warm-up upload)", f"{f.rss_baseline / MIB:.1f}"],
        [
            f"server RSS peak, sampled every 50 ms ({f.rss_samples} samples)",
            f"{f.rss_peak_sampled / MIB:.1f}",
        ],
        ["server VmHWM over the uploads (kernel's peak)", kernel],
        ["server RSS growth (peak - before)", f"{f.rss_growth / MIB:+.1f}"],
        ["server RSS after the uploads", f"{f.rss_after / MIB:.1f}"],
        ["client (this process) RSS growth, for reference", f"{f.client_rss_growth / MIB:+.1f}"],
    ]
    ratio = cp_fsync / mlserve
    strict = cp / mlserve
    client_ratio = cp_fsync / client
    user = median([u.user_seconds for u in f.usage])
    system = median([u.system_seconds for u in f.usage])
    faults = median([u.minor_faults for u in f.usage])
    notes = [
        f"{format_size(f.size)} file, {format_size(f.chunk_size)} chunks, {len(f.mlserve)} "
        f"interleaved rounds, each step after a {f.settle:.0f} s pause; medians; "
        "MiB/s = file size / wall time; the last column lists every round.",
        f"throughput ratio MLServe / (cp + fsync) = {ratio:.3f} (like for like: MLServe fsyncs "
        f"before committing), {'meets' if ratio >= RATIO_AIM else 'misses'} the aim of "
        f">= {RATIO_AIM}; against cp without fsync {strict:.3f} "
        f"({'meets' if strict >= RATIO_AIM else 'misses'} it).",
        f"throughput ratio Client.upload (every byte hashed while sent) / (cp + fsync) = "
        f"{client_ratio:.3f}, {'meets' if client_ratio >= RATIO_AIM else 'misses'} the aim.",
        f"peak RSS growth {f.rss_growth / MIB:.1f} MiB "
        f"{'meets' if f.rss_growth < RSS_AIM else 'misses'} the aim of < {RSS_AIM // MIB} MiB.",
        f"server CPU per upload (median): user {user:.1f}s, system {system:.1f}s, "
        f"{faults:,.0f} minor page faults; client CPU {median(f.client_cpu):.1f}s; "
        f"wall {mlserve:.1f}s on {os.cpu_count()} CPUs.",
    ]
    return Report(
        title=f"upload: {format_size(f.size)} through MLServe vs cp on the same disk",
        tables=[
            Table(["what", "seconds", "MiB/s", "ratio", "rounds (s)"], speed),
            Table(["memory", "MiB"], memory),
        ],
        notes=notes,
    )
