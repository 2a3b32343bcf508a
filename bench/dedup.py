"""A second upload of the same large file, as a new version: its time against the first's.

One run, side by side, in rounds, with the Python client (``Client.upload``,
what ``mlserve models upload`` uses) against MLServe (``--no-embedded-triton``,
its home on the same file system):

1. The client-side sha256 of the file alone, in this process: the floor for
   any upload, since the manifest carries every file's digest.
2. First upload: a folder with ``model.onnx`` (the large file) and
   ``notes.txt``, as a new model. Every byte travels and is stored.
3. Second upload: another folder holding the same large file (a hard link to
   it, so it is read from the same page cache) and a different ``notes.txt``:
   a new version. The server already stores the content, so the client sends
   the header, learns that only ``notes.txt`` is missing, and sends that.

Both upload timings include the client's hashing. After each round the model is
deleted, garbage collection frees its blobs, and the next round's first
upload stores every byte again. The blob store's size after the second upload
is reported too (one copy, not two).
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import RESULTS_DIR, MLServeProcess, Report, Table, format_size
from bench.upload import file_sha256, settle, write_random_file
from mlserve_api.v1 import model_pb2
from mlserve_client import Client

DEFAULT_SIZE = 1024**3
DEFAULT_ROUNDS = 3
MODEL = "bench-dedup"
LARGE_FILE = "model.onnx"  # the name alone tells MLServe the backend


@dataclass
class DedupFigures:
    size: int
    settle: float
    hashing: list[float] = field(default_factory=list)
    first: list[float] = field(default_factory=list)
    second: list[float] = field(default_factory=list)
    stored_after_second: list[int] = field(default_factory=list)


def run(size: int = DEFAULT_SIZE, rounds: int = DEFAULT_ROUNDS, pause: float = 10.0) -> Report:
    """Measure, clean up every large file, and return the report."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="dedup-", dir=RESULTS_DIR))
    try:
        figures = measure(work, DedupFigures(size, pause), rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report(figures)


def measure(work: Path, figures: DedupFigures, rounds: int) -> DedupFigures:
    first, second = work / "first", work / "second"
    first.mkdir()
    second.mkdir()
    large = first / LARGE_FILE
    print(f"dedup: writing {format_size(figures.size)} of random bytes to {large}", flush=True)
    write_random_file(large, figures.size)
    os.link(large, second / LARGE_FILE)
    server = MLServeProcess(
        work / "home",
        "--no-embedded-triton",
        "--max-upload-bytes",
        str(max(8 * 1024**3, 2 * figures.size)),
        "--health-interval",
        "2",
    )
    server.start(wait_for_triton=False)
    try:
        with Client(server.address, server.key) as client:
            for number in range(1, rounds + 1):
                settle(figures.settle)
                started = time.perf_counter()
                file_sha256(large)
                figures.hashing.append(time.perf_counter() - started)
                for folder, times in ((first, figures.first), (second, figures.second)):
                    # Each round gets new notes, so neither upload repeats an earlier manifest.
                    (folder / "notes.txt").write_text(f"{folder.name} upload, round {number}\n")
                    settle(figures.settle)
                    started = time.perf_counter()
                    client.upload(folder, MODEL)
                    times.append(time.perf_counter() - started)
                figures.stored_after_second.append(_bytes_under(work / "home" / "blobs"))
                client.models.DeleteModel(model_pb2.DeleteModelRequest(name=MODEL))
                print(
                    f"dedup: round {number}/{rounds}: sha256 alone {figures.hashing[-1]:.2f}s, "
                    f"first upload {figures.first[-1]:.2f}s, "
                    f"second (same file, new version) {figures.second[-1]:.2f}s",
                    flush=True,
                )
        return figures
    except BaseException:
        print(f"dedup: the server's log ends with:\n{server.log.read_text()[-3000:]}")
        raise
    finally:
        server.stop()


def _bytes_under(root: Path) -> int:
    """Bytes of the distinct files under ``root`` (each inode counted once)."""
    seen: dict[tuple[int, int], int] = {}
    for directory, _, names in os.walk(root):
        for name in names:
            info = os.lstat(os.path.join(directory, name))
            seen[(info.st_dev, info.st_ino)] = info.st_size
    return sum(seen.values())


def report(figures: DedupFigures) -> Report:
    def cell(values: list[float]) -> str:
        return f"{statistics.median(values):.2f} (min {min(values):.2f}, max {max(values):.2f})"

    first = statistics.median(figures.first)
    second = statistics.median(figures.second)
    hashing = statistics.median(figures.hashing)
    rows = [
        ["sha256 of the file alone (client)", cell(figures.hashing), "1.00"],
        ["first upload (new model)", cell(figures.first), f"{first / hashing:.2f}"],
        ["second upload (same file, new version)", cell(figures.second), f"{second / hashing:.2f}"],
    ]
    stored = max(figures.stored_after_second)
    return Report(
        title=f"Dedup: a second upload of the same {format_size(figures.size)} file",
        tables=[Table(["step", "seconds: median (min, max)", "x sha256 alone"], rows)],
        notes=[
            f"second / first: {second / first:.3f} (median of {len(figures.first)} rounds); "
            f"second / sha256 alone: {second / hashing:.2f}",
            f"blob store after both uploads: {stored / 1024**2:.0f} MiB for "
            f"{2 * figures.size / 1024**2:.0f} MiB uploaded (one copy)",
            f"{figures.settle:.0f} s pause before each timed step; uploads by mlserve_client",
        ],
    )
