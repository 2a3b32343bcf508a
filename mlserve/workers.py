"""``mlserve serve --workers N``: N processes serving one port.

The parent starts the workers and watches them; it opens no database and
serves no gRPC. Each worker is ``mlserve serve`` with the same arguments, told
which slot it fills (``MLSERVE_WORKER_SLOT``), listening on the same address
with SO_REUSEPORT, so the kernel spreads new connections over them. Every
worker routes from the shared store (SQLite in WAL mode, or PostgreSQL) as
replicas on one database already do.

Worker 0 starts first and alone runs what must run once: the embedded Triton
and its supervisor, the reconciler, the assay scheduler, the sweeps (blobs,
abandoned uploads, half-written log files), the log's retention, Triton's
statistics for the metrics, and the one ``/metrics`` endpoint, which merges
every worker's series (prometheus_client's multiprocess mode). Once it serves,
the parent starts workers 1..N-1 on the port it bound (``--listen`` with port 0
picks one for all).

The multiprocess files live in a directory of this run's own,
``<home>/metrics/<host>-<pid>-<random>``, held by an flock on the file of the
same name with ``.lock`` appended: several servers may share one home (replicas
on a shared disk), so one never reads or deletes another's files. At start the
parent deletes the directories of runs whose lock nobody holds any more (a
parent killed with SIGKILL); at exit it deletes its own.

A worker that exits on its own (SIGKILL, the OOM killer, a crash) is started
again in its slot, at once the first time and then after a growing delay; the
parent logs each restart and counts it in ``mlserve_worker_restarts_total``
(merged into ``/metrics`` like any worker's series). The gauges of a dead
worker are dropped (``mark_process_dead``); its counters stay in the sums. A
worker that exits ``CRASH_LOOP_EXITS`` times in a row before it has served
``STABLE_SECONDS`` is not started again: the parent stops the others and exits
1. A worker that fails at the very first start stops the set at once.

SIGTERM or SIGINT to the parent stops workers 1..N-1 first, then worker 0
(which stops the embedded Triton last, so calls still in flight on the others
finish); each flushes its counts and its inference log as a lone server does.
A worker whose parent dies gets SIGTERM from the kernel (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import os
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import BinaryIO

from prometheus_client import multiprocess
from prometheus_client.metrics_core import Metric

from mlserve.settings import Settings

log = logging.getLogger(__name__)

METRICS_DIRECTORY = "metrics"  # under the home: one directory per run of --workers
MULTIPROCESS_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
RESTARTS_METRIC = "mlserve_worker_restarts"
CRASH_LOOP_EXITS = 4  # exits in a row, each soon after its start: the worker is not restarted
STABLE_SECONDS = 30.0  # a worker that served this long before it exited was not crash-looping
_FIRST_DELAY = 1.0  # seconds before the second restart in a row; doubled each time after
MAX_DELAY = 30.0
_STOP_MARGIN = 15.0  # seconds past the grace period before a worker is killed
_POLL = 0.2  # seconds between looks at the workers
_PR_SET_PDEATHSIG = 1
_HEADER_BYTES = 8  # of a prometheus_client multiprocess file: the bytes used, padding


@dataclass
class _Worker:
    index: int
    process: subprocess.Popen[bytes]
    started: float = field(default_factory=time.monotonic)
    served: float | None = None  # time.monotonic() when it reported that it serves


@dataclass
class Slot:
    """One worker's place in the set, across its restarts."""

    index: int
    worker: _Worker | None = None
    restarts: int = 0
    early_exits: int = 0  # exits in a row, each within STABLE_SECONDS of serving
    due: float | None = None  # time.monotonic() of its next start, while it is down

    def delay(self) -> float:
        """Seconds to wait before starting it again: none after a lone exit."""
        if self.early_exits <= 1:
            return 0.0
        return min(_FIRST_DELAY * 2.0 ** (self.early_exits - 2), MAX_DELAY)


class WorkerSet:
    """The parent of ``--workers N`` processes: start them, restart them, stop them."""

    def __init__(self, settings: Settings, argv: Sequence[str]) -> None:
        self.settings = settings
        self.argv = list(argv)  # the command line of `mlserve` after the program name
        self.slots = [Slot(index) for index in range(settings.workers)]
        self._stopping = False
        self._port = 0

    @property
    def workers(self) -> list[_Worker]:
        return [slot.worker for slot in self.slots if slot.worker is not None]

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT (0), or until a worker cannot be kept up (1)."""
        previous = {
            signum: signal.signal(signum, self._stop_asked)
            for signum in (signal.SIGTERM, signal.SIGINT)
        }
        metrics = RunMetrics(self.settings.home / METRICS_DIRECTORY)
        try:
            with metrics:
                environ = {**os.environ, MULTIPROCESS_VARIABLE: str(metrics.directory)}
                restarts = metrics.restarts_counter(len(self.slots))
                try:
                    return self._run(environ, metrics, restarts)
                finally:
                    self._stop_all()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _stop_asked(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True

    def _run(self, environ: dict[str, str], metrics: RunMetrics, restarts: RestartCounter) -> int:
        host = self.settings.listen.rpartition(":")[0]
        for slot in self.slots:
            # Worker 0 binds --listen (port 0 picks one); the others join its port.
            listen = self.settings.listen if slot.index == 0 else f"{host}:{self._port}"
            if not self._start(slot, listen, environ):
                if not self._stopping:
                    log.error(
                        "worker %d exited before it served (%s)",
                        slot.index, _describe(_status(slot)),
                    )  # fmt: skip
                return 1
        pids = ", ".join(str(worker.process.pid) for worker in self.workers)
        log.info("%d workers serve %s:%d (pids %s)", len(self.slots), host, self._port, pids)
        listen = f"{host}:{self._port}"
        while not self._stopping:
            for slot in self.slots:
                if slot.due is None and not self._ended(slot, metrics):
                    continue
                if slot.early_exits >= CRASH_LOOP_EXITS:
                    log.error(
                        "worker %d exited %d times in a row within %.0f s of its start "
                        "(last: %s); not starting it again: stopping the others. Its own "
                        "log lines above ([worker %d]) say why",
                        slot.index, slot.early_exits, STABLE_SECONDS,
                        _describe(_status(slot)), slot.index,
                    )  # fmt: skip
                    return 1
                assert slot.due is not None
                if time.monotonic() >= slot.due and not self._stopping:
                    slot.due = None
                    slot.restarts += 1
                    restarts.counted(slot.index)
                    if self._start(slot, listen, environ):
                        assert slot.worker is not None
                        log.info(
                            "worker %d serves again (pid %d, restart %d)",
                            slot.index, slot.worker.process.pid, slot.restarts,
                        )  # fmt: skip
            time.sleep(_POLL)
        return 0

    def _ended(self, slot: Slot, metrics: RunMetrics) -> bool:
        """Whether the slot's worker has just exited; if so, when it starts again."""
        worker = slot.worker
        status = None if worker is None else worker.process.poll()
        if worker is None or status is None:
            return False
        # Its live gauges go (the others' values stand); its counters stay in the sums.
        metrics.process_dead(worker.process.pid)
        now = time.monotonic()
        stable = worker.served is not None and now - worker.served >= STABLE_SECONDS
        slot.early_exits = 0 if stable else slot.early_exits + 1
        slot.due = now + slot.delay()
        if slot.early_exits < CRASH_LOOP_EXITS:
            log.error(
                "worker %d (pid %d) exited on its own %s(%s); restart %d in %.0f s",
                slot.index, worker.process.pid, "" if worker.served else "before it served ",
                _describe(status), slot.restarts + 1, slot.delay(),
            )  # fmt: skip
        return True

    def _start(self, slot: Slot, listen: str, environ: dict[str, str]) -> bool:
        """Start the slot's worker on ``listen``; whether it serves (its port is kept)."""
        read_end, write_end = os.pipe()
        command = [sys.executable, "-m", "mlserve", *self.argv, "--listen", listen]
        try:
            process = subprocess.Popen(
                command,
                env={
                    **environ,
                    "MLSERVE_WORKER_SLOT": f"{slot.index}/{len(self.slots)}:{write_end}",
                },
                pass_fds=(write_end,),
                preexec_fn=_die_with_parent,
            )
        finally:
            os.close(write_end)
        worker = slot.worker = _Worker(slot.index, process)
        with os.fdopen(read_end, "rb") as ready:
            line = self._ready_line(ready, process)
        if not line:
            return False
        worker.served = time.monotonic()
        self._port = int(line)
        return True

    def _ready_line(self, ready: BinaryIO, process: subprocess.Popen[bytes]) -> bytes:
        """What the worker writes once it serves; empty if it exits (or we stop) first."""
        while not self._stopping:
            with contextlib.suppress(InterruptedError):
                readable, _, _ = select.select([ready], [], [], _POLL)
                if readable:
                    return ready.readline().strip()
            if process.poll() is not None:
                return b""
        return b""

    def _stop_all(self) -> None:
        """Workers 1..N-1 first, then worker 0 (it owns the embedded Triton)."""
        others = [w for w in self.workers if w.index != 0]
        first = [w for w in self.workers if w.index == 0]
        for group in (others, first):
            for worker in group:
                if worker.process.poll() is None:
                    worker.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + self.settings.shutdown_grace + _STOP_MARGIN
            for worker in group:
                try:
                    worker.process.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    log.error("worker %d did not stop in time; killing it", worker.index)
                    worker.process.kill()
                    worker.process.wait()


def _status(slot: Slot) -> int | None:
    return None if slot.worker is None else slot.worker.process.poll()


def _describe(status: int | None) -> str:
    """An exit status as a person reads it: ``status 1``, ``killed by SIGKILL``."""
    if status is None:
        return "still running"
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"status {status}"


class RestartCounter:
    """``mlserve_worker_restarts_total{worker}``, written by the parent into the run's
    multiprocess directory, so worker 0's ``/metrics`` merges it with the rest."""

    def __init__(self, slots: int) -> None:
        # The parent's metric goes to a file too (the variable is set by now); chosen
        # here explicitly, since prometheus_client picks it when first imported.
        from prometheus_client import CollectorRegistry, Counter, values

        values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
        counter = Counter(
            RESTARTS_METRIC,
            "Times the parent of --workers started a worker again after it exited on its own",
            ["worker"],
            registry=CollectorRegistry(),
        )
        self._children = [counter.labels(str(index)) for index in range(slots)]

    def counted(self, index: int) -> None:
        self._children[index].inc()


class RunMetrics:
    """This run's multiprocess directory under ``parent``: made and locked on entry,
    deleted on exit, after the leftovers of runs that died without deleting theirs."""

    def __init__(self, parent: Path) -> None:
        self.parent = parent
        self.directory = parent  # replaced on entry
        self._lock: int | None = None

    def __enter__(self) -> RunMetrics:
        self.parent.mkdir(parents=True, exist_ok=True)
        swept = sweep_dead_runs(self.parent)
        if swept:
            log.info("removed the metrics of %d runs that had stopped: %s", len(swept), swept)
        name = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        # Locked before the name appears, so no sweep ever takes a live run for dead.
        descriptor, temporary = tempfile.mkstemp(prefix=".", suffix=".lock", dir=self.parent)
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(temporary, self.parent / f"{name}.lock")
        self._lock = descriptor
        self.directory = self.parent / name
        self.directory.mkdir()
        os.environ[MULTIPROCESS_VARIABLE] = str(self.directory)
        return self

    def restarts_counter(self, slots: int) -> RestartCounter:
        return RestartCounter(slots)

    def process_dead(self, pid: int) -> None:
        """A worker exited: its gauges in live modes stop counting (prometheus_client)."""
        multiprocess.mark_process_dead(pid, str(self.directory))  # type: ignore[no-untyped-call]

    def __exit__(self, *exc: object) -> None:
        os.environ.pop(MULTIPROCESS_VARIABLE, None)
        shutil.rmtree(self.directory, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.parent / f"{self.directory.name}.lock")
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


class MergedWorkers(multiprocess.MultiProcessCollector):
    """Every worker's series, merged, as ``/metrics`` serves them (worker 0).

    A process creates its file empty and sizes it a moment later; prometheus_client
    fails the whole merge on a file read in that moment, and on every scrape after
    when the process was killed in it (prometheus/client_python#1199). A file of
    fewer than 8 bytes (its header) holds no value yet, so it is left out.
    """

    def collect(self) -> Iterable[Metric]:
        directory = Path(self._path)
        files = [str(path) for path in directory.glob("*.db") if _holds_values(path)]
        return self.merge(files, accumulate=True)  # type: ignore[no-any-return,no-untyped-call]


def _holds_values(path: Path) -> bool:
    try:
        return path.stat().st_size >= _HEADER_BYTES
    except FileNotFoundError:  # a live gauge's file, just dropped by mark_process_dead
        return False


def sweep_dead_runs(parent: Path) -> list[str]:
    """Delete the directories under ``parent`` whose run's lock nobody holds; their names."""
    swept = []
    for earlier in parent.glob("*.db"):  # the layout before runs had directories
        earlier.unlink(missing_ok=True)
    for lock in sorted(parent.glob("[!.]*.lock")):
        try:
            descriptor = os.open(lock, os.O_RDWR)
        except FileNotFoundError:
            continue  # another parent swept it just now
        try:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its parent is alive
            shutil.rmtree(lock.with_suffix(""), ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock)
            swept.append(lock.stem)
        finally:
            os.close(descriptor)
    return swept


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent dies, however it dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def report_ready(fd: int, port: int) -> None:
    """A worker tells its parent it serves on ``port``."""
    with os.fdopen(fd, "w") as ready:
        ready.write(f"{port}\n")
