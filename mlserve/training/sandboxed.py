"""One training script run where MLServe's process, home and secrets cannot be reached.

The script runs in the sandbox the embedded Triton runs in
(``mlserve.triton.sandbox``: bubblewrap, a scrubbed environment, the unprivileged
``nobody``, its own pid namespace), and more tightly:

- its own, empty network namespace: no connection leads anywhere (unless the
  job asked for the network and the admin allows it: ``JobSpec.network``);
- its inputs (the script's folder and the dataset) read-only at
  ``/mlserve/code`` and ``/mlserve/data``; only ``/mlserve/output`` (and a
  private ``/tmp``) writable; the parameters in ``/mlserve/params.json``;
- limits on CPU seconds, address space and file size (``setrlimit``, which
  hold for every user), on processes (a pids cgroup: ``RLIMIT_NPROC`` counts
  the host user, not the sandbox's), and on wall-clock time (MLServe kills
  the process group);
- the process group is its own: cancelling kills all of it, SIGTERM first,
  SIGKILL after a grace period.

The script learns its paths from the environment: ``MLSERVE_CODE``,
``MLSERVE_DATA``, ``MLSERVE_OUTPUT`` and ``MLSERVE_PARAMS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import os
import signal
import sys
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlserve.triton.sandbox import Sandbox, scrubbed_environment

PIDS_CGROUP = Path("/sys/fs/cgroup/pids")
# How long a cancelled or timed-out job gets after SIGTERM before SIGKILL.
KILL_GRACE_SECONDS = 1.0
TRUNCATED_MARK = " [line truncated at {cap} bytes]"


class Outcome(enum.Enum):
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


@dataclass(frozen=True)
class JobLimits:
    """What one job may use; each is enforced by the kernel or by MLServe's clock.
    The defaults are those of ``mlserve.settings`` (``--training-*``).

    A script's output is hostile: MLServe keeps at most the last ``log_lines`` lines
    of a job, each cut to ``log_line_bytes`` (and marked so), and reads its pipe in
    bounded pieces, so neither many lines nor one endless line grows MLServe's
    memory or its database."""

    cpu_seconds: int = 600
    memory_bytes: int = 4 * 1024**3
    file_bytes: int = 1024**3
    processes: int = 64
    wall_seconds: float = 1800.0
    log_lines: int = 1000
    log_line_bytes: int = 8 * 1024


@dataclass(frozen=True)
class JobSpec:
    """What to run: ``entry_point`` (relative to ``code``) with ``parameters``."""

    code: Path
    entry_point: str
    data: Path
    output: Path
    parameters: Mapping[str, Any] = field(default_factory=dict)
    limits: JobLimits = JobLimits()
    network: bool = False
    """The host's network namespace instead of an empty one (the runner checks it is
    allowed before it queues the job)."""


@dataclass(frozen=True)
class JobResult:
    outcome: Outcome
    reason: str
    exit_code: int | None
    log: str


class SandboxedJob:
    """One script run; ``run`` waits for its end, ``cancel`` ends it early."""

    def __init__(
        self, spec: JobSpec, sandbox: Sandbox, on_line: Callable[[str], None] | None = None
    ) -> None:
        self.spec = spec
        self.sandbox = sandbox
        self.on_line = on_line
        self._process: asyncio.subprocess.Process | None = None
        self._cancelled = asyncio.Event()
        self._lines: deque[str] = deque(maxlen=spec.limits.log_lines)

    async def run(self) -> JobResult:
        """Run the script to its end; SUCCEEDED only on exit 0 within every limit."""
        spec = self.spec
        spec.output.mkdir(parents=True, exist_ok=True)
        params = spec.output.parent / f".params-{uuid.uuid4().hex}.json"
        params.write_text(json.dumps(dict(spec.parameters)))
        cgroup = _make_pids_cgroup(spec.limits.processes)
        command = _limited(spec.limits, cgroup, self._command(params))
        try:
            self._process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=self._environment(params),
                start_new_session=True,
                limit=spec.limits.log_line_bytes,
            )
            reading = asyncio.create_task(self._read_lines())
            cancelled = asyncio.create_task(self._cancelled.wait())
            waiting = asyncio.create_task(self._process.wait())
            done, _ = await asyncio.wait(
                {waiting, cancelled}, timeout=spec.limits.wall_seconds,
                return_when=asyncio.FIRST_COMPLETED,
            )  # fmt: skip
            timed_out = not done
            if waiting not in done:
                await self._kill()
            await waiting
            cancelled.cancel()
            await reading
            return self._result(timed_out)
        finally:
            params.unlink(missing_ok=True)
            if cgroup is not None:
                await _remove_cgroup(cgroup)

    async def cancel(self) -> None:
        """End the job: its whole process group is gone when this returns (SIGTERM, then
        SIGKILL after ``KILL_GRACE_SECONDS``)."""
        self._cancelled.set()
        await self._kill()

    def _result(self, timed_out: bool) -> JobResult:
        assert self._process is not None
        code = self._process.returncode
        log = "\n".join(self._lines)
        if self._cancelled.is_set():
            return JobResult(Outcome.CANCELLED, "cancelled", code, log)
        if timed_out:
            reason = f"exceeded its wall-clock limit of {self.spec.limits.wall_seconds:g} s"
            return JobResult(Outcome.FAILED, reason, code, log)
        if code == 0:
            return JobResult(Outcome.SUCCEEDED, "", 0, log)
        return JobResult(Outcome.FAILED, _exit_reason(code, self.spec.limits, log), code, log)

    async def _kill(self) -> None:
        process = self._process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(process.wait()), KILL_GRACE_SECONDS)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()

    async def _read_lines(self) -> None:
        assert self._process is not None
        assert self._process.stdout is not None
        async for line in capped_lines(self._process.stdout, self.spec.limits.log_line_bytes):
            self._lines.append(line)
            if self.on_line is not None:
                self.on_line(line)

    def _command(self, params: Path) -> list[str]:
        spec, sandbox = self.spec, self.sandbox
        script = sandbox.inside("code", spec.code) / spec.entry_point
        return sandbox.wrap(
            # -E -s, not -I: the same isolation from the environment and the user's
            # site-packages, but the script's folder stays on sys.path, so modules beside
            # it (a code dataset's) import.
            [sys.executable, "-E", "-s", str(script)],
            placed={"code": spec.code, "data": spec.data, "params.json": params},
            read_only=(),
            writable={"output": spec.output},
            network=spec.network,
        )

    def _environment(self, params: Path) -> dict[str, str]:
        spec, sandbox = self.spec, self.sandbox
        env = scrubbed_environment((str(Path(sys.executable).parent),), ())
        env.update(
            MLSERVE_CODE=str(sandbox.inside("code", spec.code)),
            MLSERVE_DATA=str(sandbox.inside("data", spec.data)),
            MLSERVE_OUTPUT=str(sandbox.inside("output", spec.output)),
            MLSERVE_PARAMS=str(sandbox.inside("params.json", params)),
        )
        return env


async def capped_lines(stream: asyncio.StreamReader, cap: int) -> AsyncIterator[str]:
    """The stream's lines without their newline, each cut to its first ``cap`` bytes
    (then ending with ``TRUNCATED_MARK``); a line of any length never raises and is
    never held whole (the reader buffers at most about twice its limit)."""
    line = bytearray()
    cut = False
    while True:
        ended = eof = False
        try:
            part = await stream.readuntil(b"\n")
            ended = True
        except asyncio.LimitOverrunError as error:  # past the reader's limit: in pieces
            part = await stream.read(error.consumed)
        except asyncio.IncompleteReadError as error:  # the end, maybe a last line
            part, ended, eof = error.partial, bool(error.partial or line), True
        room = cap - len(line)
        cut = cut or len(part.rstrip(b"\n")) > room
        line += part[: max(room, 0)]
        if ended:
            text = line.decode(errors="replace").rstrip("\n")
            yield text + TRUNCATED_MARK.format(cap=cap) if cut else text
            line.clear()
            cut = False
        if eof:
            return


# Joins the pids cgroup, sets the rlimits, then execs the sandbox: a fresh interpreter
# between MLServe and bubblewrap. Not a preexec_fn: that runs Python between fork and
# exec in a process full of threads (gRPC's, the database's), where the child can
# deadlock or crash on a lock one of them held at the fork (with one, now and then a
# job died of SIGSEGV; without, none has).
_LIMIT_THEN_EXEC = """
import os, resource, sys
cpu, memory, files, cgroup, *command = sys.argv[1:]
if cgroup:
    with open(os.path.join(cgroup, "cgroup.procs"), "w") as procs:
        procs.write(str(os.getpid()))
resource.setrlimit(resource.RLIMIT_CPU, (int(cpu), int(cpu) + 1))
resource.setrlimit(resource.RLIMIT_AS, (int(memory), int(memory)))
resource.setrlimit(resource.RLIMIT_FSIZE, (int(files), int(files)))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
os.execvp(command[0], command)
"""


def _limited(limits: JobLimits, cgroup: Path | None, command: list[str]) -> list[str]:
    """``command`` run in the pids cgroup (when there is one) under the job's rlimits."""
    numbers = (limits.cpu_seconds, limits.memory_bytes, limits.file_bytes)
    return [
        sys.executable, "-I", "-S", "-c", _LIMIT_THEN_EXEC,
        *(str(n) for n in numbers), str(cgroup or ""), *command,
    ]  # fmt: skip


def _make_pids_cgroup(processes: int) -> Path | None:
    """A pids cgroup allowing ``processes``, or None where this host offers none (then
    only the pid namespace bounds them: the README says so)."""
    if not os.access(PIDS_CGROUP, os.W_OK):
        return None
    group = PIDS_CGROUP / f"mlserve-job-{uuid.uuid4().hex[:12]}"
    try:
        group.mkdir()
        (group / "pids.max").write_text(str(processes))
    except OSError:
        return None
    return group


async def _remove_cgroup(group: Path) -> None:
    for _ in range(50):
        try:
            await asyncio.to_thread(group.rmdir)
            return
        except FileNotFoundError:
            return
        except OSError:
            await asyncio.sleep(0.05)  # its last processes are still exiting


def _exit_reason(code: int | None, limits: JobLimits, log: str) -> str:
    """Why a script failed, in words: the signal and the limit it points to, or the exit."""
    # bubblewrap exits 128 + n when the script died of signal n (the script is
    # the sandbox's pid 1, so SIGXCPU is ignored and the CPU hard limit SIGKILLs).
    number = -code if code is not None and code < 0 else (code or 0) - 128
    if number == signal.SIGKILL or number == signal.SIGXCPU:
        return (
            f"was killed by {signal.Signals(number).name}: it used its CPU time limit of "
            f"{limits.cpu_seconds} s (or the kernel ran out of memory)"
        )
    if number == signal.SIGXFSZ:
        return f"wrote a file past its file size limit of {limits.file_bytes} bytes"
    if 0 < number < signal.NSIG:
        return f"was killed by {signal.Signals(number).name}"
    tail = log.strip().splitlines()[-1] if log.strip() else ""
    if "File too large" in log:  # EFBIG: SIGXFSZ is ignored by a pid 1
        return f"wrote a file past its file size limit of {limits.file_bytes} bytes: {tail}"
    if "MemoryError" in log:
        return f"ran out of memory (limit {limits.memory_bytes} bytes): {tail}"
    if "BlockingIOError" in log or "Resource temporarily unavailable" in log:
        return f"hit its process limit of {limits.processes}: {tail}"
    return f"exited with code {code}" + (f": {tail}" if tail else "")
