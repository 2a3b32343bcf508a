"""What the benchmarks share: sizes, an RSS sampler, MLServe as a child process, tables."""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

# MLServeProcess and free_port start the server exactly as the integration
# tests do (``python -m mlserve --home H serve --listen ADDR ...``, waiting on
# the health service), so the benchmarks and the tests never drift apart.
from tests.support.mlserve import MLServeProcess, free_port

__all__ = [
    "MIB",
    "RESULTS_DIR",
    "MLServeProcess",
    "Report",
    "RssSampler",
    "Table",
    "baseline_rss",
    "cpu_seconds",
    "format_size",
    "free_port",
    "machine_description",
    "parse_size",
    "read_rss",
    "read_status_kib",
    "reset_peak_rss",
    "served_in_scratch",
    "summary",
]

MIB = 1024 * 1024
BENCH_DIR = Path(__file__).resolve().parent
# Gitignored; on the same disk as the repository, so temporary files put here
# sit on the same file system as an MLServe home created beside them.
RESULTS_DIR = BENCH_DIR / "results"

_UNITS = {"k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(text: str) -> int:
    """``2G``, ``256M``, ``512k`` or a plain byte count, as bytes (powers of 1024)."""
    text = text.strip()
    suffix = text[-1:].lower()
    if suffix == "b" and len(text) > 1 and text[-2].lower() in _UNITS:
        text, suffix = text[:-1], text[-2].lower()
    if suffix in _UNITS:
        return int(float(text[:-1]) * _UNITS[suffix])
    return int(text)


@contextlib.contextmanager
def served_in_scratch(prefix: str) -> Iterator[tuple[MLServeProcess, Path]]:
    """A started MLServe (embedded Triton) with its home in a scratch folder under
    RESULTS_DIR, and that folder; both gone afterwards, even when the run fails."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=RESULTS_DIR))
    server = MLServeProcess(work / "home")
    try:
        server.start()
        yield server, work
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


def format_size(size: int) -> str:
    """Bytes as the largest whole 1024-based unit, for headings: 2 GiB, 256 MiB."""
    for unit, factor in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", MIB), ("KiB", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size / MIB:.1f} MiB" if size >= MIB else f"{size} B"


def read_status_kib(pid: int, field: str) -> int:
    """A ``kB`` field (VmRSS, VmHWM, ...) of /proc/<pid>/status in KiB; 0 once it has exited."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return 0


def read_rss(pid: int) -> int:
    """The resident set size of ``pid`` in bytes."""
    return read_status_kib(pid, "VmRSS") * 1024


class RssSampler:
    """Reads a process's VmRSS every ``interval`` seconds on a thread, keeping the peak.

    Sampling can miss a spike shorter than the interval; the kernel's VmHWM
    (the peak RSS over the process's life) is read as well, at the end, and
    catches what the samples miss.
    """

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rss-{pid}", daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            self.samples.append(read_rss(self.pid))
            if self._stop.wait(self.interval):
                self.samples.append(read_rss(self.pid))
                return

    @property
    def peak(self) -> int:
        return max(self.samples, default=0)


def reset_peak_rss(pid: int) -> bool:
    """Reset the kernel's VmHWM of ``pid`` to its current RSS; False if not allowed."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time ``pid`` has used (all its threads), in seconds."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # After the command name: state is field 3, utime 14 and stime 15 (1-based).
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def baseline_rss(pid: int, seconds: float = 1.0, interval: float = 0.05) -> int:
    """The process's RSS while idle: the largest of samples over ``seconds``."""
    samples = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        samples.append(read_rss(pid))
        time.sleep(interval)
    return max(samples)


def summary(values: Sequence[float]) -> tuple[float, float, float]:
    """(min, median, max)."""
    return min(values), statistics.median(values), max(values)


def render_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table with columns padded to fit; numbers are right-aligned."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        parts = []
        for i, cell in enumerate(cells):
            numeric = i > 0 and _looks_numeric(cell)
            parts.append(cell.rjust(widths[i]) if numeric else cell.ljust(widths[i]))
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


def render_markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """The same table as GitHub markdown."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return "\n".join(lines)


def _looks_numeric(cell: str) -> bool:
    head = cell.split(" ", 1)[0].lstrip("+-~<>≥")
    return bool(head) and head.replace(".", "", 1).replace(",", "").isdigit()


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass
class Report:
    """One benchmark's outcome: a title, its tables, and notes under them."""

    title: str
    tables: list[Table]
    notes: list[str]

    def text(self) -> str:
        tables = "\n\n".join(render_table(t.header, t.rows) for t in self.tables)
        notes = "\n".join(f"  * {note}" for note in self.notes)
        return f"== {self.title} ==\n{tables}\n{notes}\n"

    def markdown(self) -> str:
        tables = "\n\n".join(render_markdown(t.header, t.rows) for t in self.tables)
        notes = "\n".join(f"- {note}" for note in self.notes)
        return f"### {self.title}\n\n{tables}\n\n{notes}\n"


def machine_description() -> str:
    """CPU count, CPU model and memory, for the record."""
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory = read_meminfo_kib("MemTotal") * 1024
    cpus = os.cpu_count() or 0
    described = f"{cpus} CPUs"
    if model:
        described += f" ({model})"
    if memory:
        described += f", {memory / 1024**3:.0f} GiB RAM"
    return described


def read_meminfo_kib(field: str) -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return 0
    return 0


def pin_threads(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` to ``cpus``; threads started later inherit it from their
    creator, and so do processes started by a pinned thread."""
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return
    for thread in threads:
        with contextlib.suppress(OSError):  # the thread has just ended
            os.sched_setaffinity(int(thread), cpus)
