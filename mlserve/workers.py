"""``mlserve serve --workers N``: N processes serving one port.

The parent starts the workers and does nothing else: no database, no gRPC.
Each worker is ``mlserve serve`` with the same arguments, told which slot it
fills (``MLSERVE_WORKER_SLOT``), listening on the same address with
SO_REUSEPORT, so the kernel spreads new connections over them. Every worker
routes from the shared store (SQLite in WAL mode, or PostgreSQL) as replicas
on one database already do.

Worker 0 starts first and alone runs what must run once: the embedded Triton
and its supervisor, the reconciler, the assay scheduler, the sweeps (blobs,
abandoned uploads, half-written log files), the log's retention, Triton's
statistics for the metrics, and the one ``/metrics`` endpoint, which merges
every worker's series (prometheus_client's multiprocess mode, files under
``<home>/metrics``). Once it serves, the parent starts workers 1..N-1 on the
port it bound (``--listen`` with port 0 picks one for all).

SIGTERM or SIGINT to the parent stops workers 1..N-1 first, then worker 0
(which stops the embedded Triton last, so calls still in flight on the others
finish). A worker that exits on its own stops the others and the parent
exits 1: a supervisor (systemd, Kubernetes) restarts the whole set. A worker
whose parent dies gets SIGTERM from the kernel (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import BinaryIO

from mlserve.settings import Settings

log = logging.getLogger(__name__)

METRICS_DIRECTORY = "metrics"  # under the home: prometheus_client's per-process files
MULTIPROCESS_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
_STOP_MARGIN = 15.0  # seconds past the grace period before a worker is killed
_PR_SET_PDEATHSIG = 1


@dataclass
class _Worker:
    index: int
    process: subprocess.Popen[bytes]


class WorkerSet:
    """The parent of ``--workers N`` processes: start them, watch them, stop them."""

    def __init__(self, settings: Settings, argv: Sequence[str]) -> None:
        self.settings = settings
        self.argv = list(argv)  # the command line of `mlserve` after the program name
        self.workers: list[_Worker] = []
        self._stopping = False

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT (0), or until a worker exits on its own (1)."""
        previous = {
            signum: signal.signal(signum, self._stop_asked)
            for signum in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            return self._run()
        finally:
            self._stop_all()
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _stop_asked(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True

    def _run(self) -> int:
        settings = self.settings
        environ = {**os.environ, MULTIPROCESS_VARIABLE: str(self._fresh_metrics_directory())}
        host = settings.listen.rpartition(":")[0]
        port = self._start(0, settings.listen, environ)
        if port is None:
            return 1
        for index in range(1, settings.workers):
            if self._start(index, f"{host}:{port}", environ) is None:
                return 1
        pids = ", ".join(str(worker.process.pid) for worker in self.workers)
        log.info("%d workers serve %s:%d (pids %s)", settings.workers, host, port, pids)
        while not self._stopping:
            ended = self._ended()
            if ended is not None:
                log.error(
                    "worker %d (pid %d) exited with status %s; stopping the others",
                    ended.index, ended.process.pid, ended.process.returncode,
                )  # fmt: skip
                return 1
            time.sleep(0.2)
        return 0

    def _fresh_metrics_directory(self) -> Path:
        # Files left by an earlier run would add its counts to this one's.
        directory = self.settings.home / METRICS_DIRECTORY
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        return directory

    def _start(self, index: int, listen: str, environ: dict[str, str]) -> int | None:
        """Start worker ``index`` on ``listen``; its port once it serves, None if it did not."""
        read_end, write_end = os.pipe()
        slot = f"{index}/{self.settings.workers}:{write_end}"
        command = [sys.executable, "-m", "mlserve", *self.argv, "--listen", listen]
        try:
            process = subprocess.Popen(
                command,
                env={**environ, "MLSERVE_WORKER_SLOT": slot},
                pass_fds=(write_end,),
                preexec_fn=_die_with_parent,
            )
        finally:
            os.close(write_end)
        self.workers.append(_Worker(index, process))
        with os.fdopen(read_end, "rb") as ready:
            line = self._ready_line(ready, process)
        if not line:
            if not self._stopping:
                log.error("worker %d exited before it served (status %s)", index, process.poll())
            return None
        return int(line)

    def _ready_line(self, ready: BinaryIO, process: subprocess.Popen[bytes]) -> bytes:
        """What the worker writes once it serves; empty if it exits (or we stop) first."""
        while not self._stopping:
            with contextlib.suppress(InterruptedError):
                readable, _, _ = select.select([ready], [], [], 0.2)
                if readable:
                    return ready.readline().strip()
            if process.poll() is not None:
                return b""
        return b""

    def _ended(self) -> _Worker | None:
        return next((w for w in self.workers if w.process.poll() is not None), None)

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


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent dies, however it dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def report_ready(fd: int, port: int) -> None:
    """A worker tells its parent it serves on ``port``."""
    with os.fdopen(fd, "w") as ready:
        ready.write(f"{port}\n")
