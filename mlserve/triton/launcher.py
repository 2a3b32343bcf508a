"""Start and stop the Triton server that the nvidia-pytriton wheel carries.

The wheel ships a complete ``tritonserver`` (CPU capable), its shared
libraries, the Python backend and one backend stub per Python version. None of
it is laid out the way Triton expects, so the launcher assembles a backend
directory of symlinks and an environment in which Triton finds its libraries
and the Python backend finds this interpreter's packages.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from mlserve.core.errors import FailedPrecondition, Unavailable
from mlserve.triton.client import TritonClient
from mlserve.triton.sandbox import Sandbox, read_child_pid, scrubbed_environment

__all__ = ["EmbeddedTriton", "TritonInstallation", "bundled_backends"]

log = logging.getLogger(__name__)

_HOST = "127.0.0.1"
_LOG_TAIL_LINES = 20
_POLL_INTERVAL = 0.1
_INSTALL_HINT = "install it into this environment with `pip install nvidia-pytriton`"
# Messages Triton (via gRPC core) logs when its gRPC port is held by someone else.
_PORT_IN_USE_MARKERS = ("already in use", "Address in use", "Failed to add port")
# A port picked here may be taken by someone else before Triton binds it;
# a second pick almost never loses the same race. Bounded, so a machine out
# of ports (or a Triton that always dies) fails the start instead of spinning.
_START_ATTEMPTS = 2


@dataclass(frozen=True)
class TritonInstallation:
    """Where the pieces of the nvidia-pytriton wheel lie on disk."""

    server_binary: Path
    library_dir: Path
    python_backend_dir: Path
    backend_stub: Path

    @classmethod
    def find(cls) -> TritonInstallation:
        """Locate the wheel's Triton for the running Python.

        Raises FailedPrecondition, saying what to install, when the wheel or
        a piece of it (such as the stub for this Python version) is missing.
        """
        package_dir = _pytriton_package_dir()
        server_dir = package_dir / "tritonserver"
        python_version = f"{sys.version_info.major}.{sys.version_info.minor}"
        installation = cls(
            server_binary=server_dir / "bin" / "tritonserver",
            # auditwheel puts the vendored libraries beside the package, not in it.
            library_dir=package_dir.parent / "nvidia_pytriton.libs",
            python_backend_dir=server_dir / "backends" / "python",
            backend_stub=server_dir
            / "python_backend_stubs"
            / python_version
            / "triton_python_backend_stub",
        )
        installation._check(python_version)
        return installation

    def _check(self, python_version: str) -> None:
        if not self.backend_stub.is_file():
            raise FailedPrecondition(
                f"nvidia-pytriton has no Python backend stub for Python {python_version} "
                f"(looked for {self.backend_stub}); run MLServe on a Python it supports "
                "(3.8-3.13) or upgrade nvidia-pytriton"
            )
        for path in (self.server_binary, self.python_backend_dir, self.library_dir):
            if not path.exists():
                raise FailedPrecondition(
                    f"nvidia-pytriton is incomplete: {path} is missing; reinstall it "
                    "with `pip install --force-reinstall nvidia-pytriton`"
                )


def bundled_backends() -> list[str]:
    """The backends the nvidia-pytriton wheel's Triton ships (its backends directory)."""
    backends = _pytriton_package_dir() / "tritonserver" / "backends"
    return sorted(entry.name for entry in backends.iterdir() if entry.is_dir())


def _pytriton_package_dir() -> Path:
    # find_spec reads the package's location without running its __init__,
    # which would import much of pytriton for nothing.
    spec = importlib.util.find_spec("pytriton")
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise FailedPrecondition(f"the Triton server is not installed: {_INSTALL_HINT}")
    return Path(locations[0])


class EmbeddedTriton:
    """One ``tritonserver`` child process serving ``repository`` over gRPC on loopback.

    The process is started with :class:`subprocess.Popen` rather than asyncio's
    subprocess support so that it is not tied to one event loop: a caller may
    start it under one ``asyncio.run`` and stop it under another.
    """

    def __init__(
        self,
        repository: Path,
        workdir: Path,
        *,
        log_path: Path,
        grpc_port: int = 0,
        installation: TritonInstallation | None = None,
        extra_args: Sequence[str] = (),
        sandbox: Sandbox | None = None,
        repository_url: str = "",
        environment: Mapping[str, str] | None = None,
    ) -> None:
        """``sandbox`` confines Triton; by default :meth:`Sandbox.find` chooses at start.

        ``repository_url`` (``s3://host:port/bucket/prefix``) has Triton read a
        bucket instead of ``repository``; ``environment`` adds variables to its
        scrubbed environment (the bucket's credentials: model code can read them).
        """
        self._repository_url = repository_url
        self._environment = dict(environment or {})
        self._repository = repository
        self._workdir = workdir
        self._log_path = log_path
        self._requested_port = grpc_port
        self._port = grpc_port
        self._installation = installation
        self._extra_args = tuple(extra_args)
        self._sandbox = sandbox
        self._process: subprocess.Popen[bytes] | None = None
        self._sandboxed_pid: int | None = None  # Triton's own pid when bwrap wraps it
        self._log_offset = 0  # where the current run's part of the log starts
        self._stopping = False
        self._probe: TritonClient | None = None  # is_live's channel to the current run

    @property
    def log_path(self) -> Path:
        """The file Triton's output goes to (appended to, one header line per start)."""
        return self._log_path

    @property
    def address(self) -> str:
        """``host:port`` of Triton's gRPC endpoint (the port is chosen by :meth:`start` if 0)."""
        return f"{_HOST}:{self._port}"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    async def start(self, timeout: float = 60.0) -> None:
        """Start Triton and return once it reports itself ready.

        Raises Unavailable, quoting the end of Triton's log, if it exits or is
        not ready within ``timeout`` seconds.
        """
        if self.running:
            return
        installation = self._installation or TritonInstallation.find()
        self._installation = installation
        self._sandbox = self._sandbox or Sandbox.find()
        backend_dir = self._prepare_backends(installation)
        self._repository.mkdir(parents=True, exist_ok=True)
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        attempts = _START_ATTEMPTS
        for attempt in range(1, attempts + 1):
            self._port = self._requested_port or _free_loopback_port()
            log_offset = self._log_offset = self._spawn(installation, backend_dir)
            self._stopping = False  # a failed attempt's stop() set it
            try:
                await self._wait_ready(timeout, log_offset)
                return
            except _RetryableStart as exc:
                await self.stop()
                if attempt == attempts:
                    raise Unavailable(str(exc)) from None
                log.warning("Triton failed to start; retrying once: %s", exc)
            except BaseException:
                await self.stop()
                raise

    async def wait_exit(self) -> int | None:
        """Wait until the running Triton exits by itself and return its exit code
        (negative: killed by that signal); None if it was not running or :meth:`stop`
        ended it."""
        process = self._process
        if process is None:
            return None
        await _wait_exit(process, None)
        if self._stopping or self._process is not process:
            return None
        return process.returncode

    def log_tail(self) -> str:
        """The last lines Triton wrote since it was last started."""
        return self._log_tail(self._log_offset)

    async def is_live(self, timeout: float) -> bool:
        """Whether the running Triton answers ServerLive within ``timeout`` seconds
        (one channel per run, reused across probes)."""
        probe = self._probe
        if probe is None or probe.address != self.address:
            await self._close_probe()
            probe = self._probe = TritonClient("embedded", self.address)
        return await probe.is_live(timeout)

    async def kill(self) -> None:
        """SIGKILL Triton's whole process group, and Triton itself inside the sandbox
        (which runs it in a session of its own), then reap it. SIGKILL because a
        stopped or deadlocked Triton handles no SIGTERM. Unlike :meth:`stop`, this
        counts as an exit: :meth:`wait_exit` answers the signal."""
        process = self._process
        if process is None:
            return
        if self._sandboxed_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._sandboxed_pid, signal.SIGKILL)
        # Popen started Triton as the leader of a new session: its group is its pid.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await _wait_exit(process, None)
        await self._close_probe()

    async def _close_probe(self) -> None:
        probe, self._probe = self._probe, None
        if probe is not None:
            await probe.close()

    async def stop(self, timeout: float = 15.0) -> None:
        """Stop Triton: SIGTERM, then SIGKILL after ``timeout`` seconds. Safe to repeat."""
        process = self._process
        if process is None:
            return
        self._stopping = True
        if process.poll() is None:
            self._terminate(process)
            if not await _wait_exit(process, timeout):
                log.warning(
                    "Triton (pid %d) ignored SIGTERM for %.0fs; killing it", process.pid, timeout
                )
                process.kill()
                await _wait_exit(process, None)
        self._process = None
        await self._close_probe()

    def _terminate(self, process: subprocess.Popen[bytes]) -> None:
        """SIGTERM to Triton itself. In the sandbox, ``process`` is bubblewrap,
        which would die of it and take Triton down with SIGKILL, ungracefully."""
        if self._sandboxed_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._sandboxed_pid, signal.SIGTERM)
                return
        process.terminate()

    def _prepare_backends(self, installation: TritonInstallation) -> Path:
        backend_dir = self._workdir / "backends"
        python_dir = backend_dir / "python"
        python_dir.mkdir(parents=True, exist_ok=True)
        for target in (
            installation.python_backend_dir / "libtriton_python.so",
            installation.python_backend_dir / "triton_python_backend_utils.py",
            installation.backend_stub,
        ):
            _ensure_symlink(python_dir / target.name, target)
        return backend_dir

    def _command(
        self, installation: TritonInstallation, backend_dir: Path, info_fd: int | None = None
    ) -> list[str]:
        sandbox = self._sandbox
        assert sandbox is not None
        # Triton sees the repository and its backends, read-only, and none of
        # the home around them; the wheel (links point into it) at its place.
        placed = {"repository": self._repository, "backends": backend_dir}
        command = [
            str(installation.server_binary),
            "--model-repository="
            + (self._repository_url or str(sandbox.inside("repository", self._repository))),
            f"--backend-directory={sandbox.inside('backends', backend_dir)}",
            "--model-control-mode=explicit",
            # Triton binds every interface by default; MLServe is its only client.
            f"--grpc-address={_HOST}",
            f"--grpc-port={self._port}",
            "--allow-http=false",
            "--allow-metrics=false",
            "--exit-timeout-secs=5",
            "--strict-model-config=false",
        ]
        help_text = _server_help(installation)
        if "--allow-gpu-metrics" in help_text:
            command.append("--allow-gpu-metrics=false")
        if "--strict-readiness" in help_text:
            # By default one model that ever failed to load makes ServerReady
            # false for good (unloading it does not help), which would make
            # the whole server look down to MLServe's health checks.
            command.append("--strict-readiness=false")
        command.extend(self._extra_args)
        return sandbox.wrap(
            command,
            placed=placed,
            read_only=[installation.server_binary.parents[1], installation.library_dir],
            info_fd=info_fd,
        )

    def _spawn(self, installation: TritonInstallation, backend_dir: Path) -> int:
        assert self._sandbox is not None
        # bubblewrap tells Triton's own pid on this pipe (see _terminate).
        reader, writer = os.pipe() if self._sandbox.confined else (None, None)
        command = self._command(installation, backend_dir, info_fd=writer)
        with self._log_path.open("ab") as log_file:
            header = f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(command)}\n"
            log_file.write(header.encode())
            log_file.flush()
            offset = log_file.tell()
            self._process = subprocess.Popen(
                [*_die_with_parent(), *command],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env={**_triton_environment(installation), **self._environment},
                cwd=self._workdir,
                pass_fds=() if writer is None else (writer,),
                # Its own process group, so that kill() reaches every process of it
                # (backend stubs too) and nothing of MLServe's.
                start_new_session=True,
            )
        self._sandboxed_pid = None
        if reader is not None and writer is not None:
            os.close(writer)
            self._sandboxed_pid = read_child_pid(reader)
        log.info(
            "started Triton (pid %d) on %s; log: %s",
            self._process.pid,
            self.address,
            self._log_path,
        )
        return offset

    async def _wait_ready(self, timeout: float, log_offset: int) -> None:
        deadline = time.monotonic() + timeout
        client = TritonClient("embedded", self.address)
        try:
            while True:
                process = self._process
                if process is None or process.poll() is not None:
                    self._raise_exited(log_offset)
                if await client.is_ready(timeout=1.0):
                    return
                if time.monotonic() >= deadline:
                    raise Unavailable(
                        f"Triton did not become ready within {timeout:.0f}s at {self.address}; "
                        f"the end of its log ({self._log_path}):\n{self._log_tail(log_offset)}"
                    )
                await asyncio.sleep(_POLL_INTERVAL)
        finally:
            await client.close()

    def _raise_exited(self, log_offset: int) -> NoReturn:
        code = self._process.returncode if self._process else None
        tail = self._log_tail(log_offset)
        message = (
            f"Triton exited during startup (exit code {code}); "
            f"the end of its log ({self._log_path}):\n{tail}"
        )
        if self._requested_port == 0 and any(marker in tail for marker in _PORT_IN_USE_MARKERS):
            raise _RetryableStart(message)
        if code is not None and code < 0:
            # Killed by a signal during start-up (seen once: SIGABRT from gRPC's
            # epoll engine); a second start is worth it.
            raise _RetryableStart(message)
        raise Unavailable(message)

    def _log_tail(self, offset: int) -> str:
        try:
            with self._log_path.open("rb") as log_file:
                log_file.seek(offset)
                text = log_file.read().decode(errors="replace")
        except OSError as exc:
            return f"(log unreadable: {exc})"
        return "\n".join(text.splitlines()[-_LOG_TAIL_LINES:])


class _RetryableStart(Exception):
    """Triton failed to start in a way worth one retry (port taken, killed by a signal)."""


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _ensure_symlink(link: Path, target: Path) -> None:
    if link.is_symlink() and Path(os.readlink(link)) == target:
        return
    # Build the new link beside the old one and rename it over, so a
    # concurrent reader never sees the link missing.
    temporary = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    temporary.symlink_to(target)
    os.replace(temporary, link)


def _triton_environment(installation: TritonInstallation) -> dict[str, str]:
    # An allow-list, never MLServe's own environment: that holds database
    # URLs, passwords and cloud credentials, and model code can read it.
    # The backend stub runs the first python3 on PATH to find its
    # site-packages; it must be this interpreter, or models lack numpy.
    return scrubbed_environment(
        path=[str(Path(sys.executable).parent)], library_path=[str(installation.library_dir)]
    )


@functools.cache
def _server_help(installation: TritonInstallation) -> str:
    # Tritons refuse to start on a flag they do not know, and which flags
    # exist changes between releases; --help answers in milliseconds.
    try:
        result = subprocess.run(
            [str(installation.server_binary), "--help"],
            capture_output=True,
            env=_triton_environment(installation),
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (result.stdout + result.stderr).decode(errors="replace")


async def _wait_exit(process: subprocess.Popen[bytes], timeout: float | None) -> bool:
    deadline = None if timeout is None else time.monotonic() + timeout
    while process.poll() is None:
        if deadline is not None and time.monotonic() >= deadline:
            return False
        await asyncio.sleep(_POLL_INTERVAL)
    return True


def _die_with_parent() -> list[str]:
    """A command prefix asking Linux to SIGTERM Triton when MLServe dies, even by SIGKILL.

    ``setpriv --pdeathsig`` (util-linux, essential on Debian) sets the signal
    and then execs Triton. A ``preexec_fn`` could do the same, but it runs
    Python between fork and exec in a process full of gRPC threads, where
    the child can deadlock or abort on locks those threads held.

    SIGTERM rather than SIGKILL lets Triton stop its Python backend stubs and
    free their shared memory. Linux sends it when the *thread* that spawned
    Triton ends, so call :meth:`EmbeddedTriton.start` from a long-lived thread
    (the main thread's event loop), not from a short-lived worker thread.
    Empty where there is no setpriv: Triton then outlives a killed MLServe.
    """
    setpriv = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    if setpriv is None:
        log.warning("setpriv not found: Triton will not be stopped if MLServe is killed")
        return []
    return [setpriv, "--pdeathsig", "TERM", "--"]
