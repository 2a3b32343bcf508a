"""The box the embedded Triton runs model code in.

A Python-backend ``model.py`` is arbitrary code run by Triton. MLServe's home
holds what must never reach it: ``admin.key``, the SQLite database, the blob
store, staging, often the TLS key, and MLServe's environment (database URLs,
cloud credentials). So Triton runs under bubblewrap (``bwrap``):

- a new mount namespace whose root is an empty, read-only tmpfs, into which
  only what Triton needs is bound read-only: ``/usr`` (and the ``/bin``,
  ``/lib`` links), a few files of ``/etc`` the dynamic linker and Python read,
  the Python installation and virtualenv the backend stub imports from (which
  hold the Triton wheel), and, at ``/mlserve/repository`` and
  ``/mlserve/backends``, the model repository and Triton's backend
  directory — exactly those, not the home around them;
- a private, writable ``/tmp`` (Triton's scratch space, where it writes
  pushed model files) and ``/dev`` (the stubs' shared memory), gone with it;
- new user, pid, IPC, UTS and cgroup namespaces: inside, Triton is the
  unprivileged ``nobody`` (65534) with no capabilities and no way to make
  another user namespace, and ``/proc`` shows only the sandbox's processes,
  so ``/proc/<MLServe>/environ`` does not exist there;
- the network namespace is shared: MLServe reaches Triton's gRPC port on
  loopback, and model code can open connections like any local process.

The environment is an allow-list (:func:`scrubbed_environment`), also when
no sandbox is used.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from mlserve.core.errors import FailedPrecondition

__all__ = [
    "PASSED_VARIABLES",
    "SANDBOX_UID",
    "UNSAFE_FLAG",
    "Sandbox",
    "read_child_pid",
    "scrubbed_environment",
]

log = logging.getLogger(__name__)

UNSAFE_FLAG = "--unsafe-shared-user"
SANDBOX_UID = 65534
"""``nobody``: the user (and group) Triton is inside its user namespace."""

# Variables Triton or the backend stub may need, and that never carry a
# secret. Everything else in MLServe's environment stays out.
PASSED_VARIABLES = (
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    # Set on some processors because older OpenBLAS builds crash there.
    "OPENBLAS_CORETYPE",
    "OPENBLAS_L2_SIZE",
    "OMP_NUM_THREADS",
)
_SYSTEM_PATH = ("/usr/local/bin", "/usr/bin", "/bin")
# What the dynamic linker, Python and name resolution of "localhost" read.
_ETC_FILES = (
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/hosts",
    "/etc/nsswitch.conf",
    "/etc/host.conf",
)
# Where placed directories (the repository, the backends) appear inside.
_PLACED_ROOT = Path("/mlserve")
_TOP_LEVEL_LINKS = ("/bin", "/lib", "/lib32", "/lib64", "/libx32", "/sbin")
_INSTALL_HINT = (
    "install Debian's `bubblewrap` (scripts/ensure_bubblewrap.sh does), or run without "
    f"the embedded Triton (--no-embedded-triton), or accept that model code can read "
    f"everything MLServe can with {UNSAFE_FLAG}"
)


def scrubbed_environment(path: Sequence[str], library_path: Sequence[str]) -> dict[str, str]:
    """The whole environment Triton gets: ``PATH``, ``LD_LIBRARY_PATH``, ``HOME`` and the
    allow-listed locale and threading variables of MLServe's own environment."""
    env = {name: os.environ[name] for name in PASSED_VARIABLES if name in os.environ}
    env["PATH"] = os.pathsep.join([*path, *_SYSTEM_PATH])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(library_path)
    env["HOME"] = "/tmp"
    return env


@dataclass(frozen=True)
class Sandbox:
    """How Triton is confined: by ``bwrap`` at ``bwrap``, or not at all when it is None."""

    bwrap: Path | None

    @classmethod
    def find(cls, *, unsafe_shared_user: bool = False) -> Sandbox:
        """The bubblewrap sandbox when ``bwrap`` is installed and works here.

        Without one, raises FailedPrecondition saying what to do, unless
        ``unsafe_shared_user``: then Triton runs unconfined, as MLServe's own
        user (with the scrubbed environment still), and a warning is logged.
        """
        bwrap = shutil.which("bwrap")
        problem = _probe(bwrap) if bwrap else "bubblewrap (`bwrap`) is not installed"
        if problem is None:
            assert bwrap is not None
            return cls(Path(bwrap))
        if unsafe_shared_user:
            log.warning(
                "%s; %s: the embedded Triton runs unconfined, and model code can read "
                "admin.key, the database and every file MLServe can",
                problem,
                UNSAFE_FLAG,
            )
            return cls(None)
        raise FailedPrecondition(
            f"refusing to start the embedded Triton without a sandbox: {problem}; {_INSTALL_HINT}"
        )

    @property
    def confined(self) -> bool:
        return self.bwrap is not None

    def inside(self, name: str, host: Path) -> Path:
        """Where Triton sees the host directory that :meth:`wrap` places as ``name``."""
        return _PLACED_ROOT / name if self.confined else host

    def wrap(
        self,
        command: Sequence[str],
        *,
        placed: Mapping[str, Path],
        read_only: Iterable[Path],
        info_fd: int | None = None,
        writable: Mapping[str, Path] | None = None,
        network: bool = True,
    ) -> list[str]:
        """``command`` run inside the sandbox, seeing only the system and these, read-only.

        ``placed`` directories (name -> host path) appear at :meth:`inside`,
        away from the home around them, whose path and other contents stay
        unseen; ``read_only`` paths (the Python installation, the Triton
        wheel) appear at their own place, where links into them point.
        ``command`` is the sandbox's pid 1, and bubblewrap writes its pid, as
        MLServe sees it, to ``info_fd`` (read it with :func:`read_child_pid`).
        ``writable`` directories are placed like ``placed`` but writable (a
        training job's output); without ``network`` the command gets its own,
        empty network namespace (not even loopback leads out).
        """
        if self.bwrap is None:
            return list(command)
        arguments = [
            str(self.bwrap),
            "--unshare-user",
            "--uid",
            str(SANDBOX_UID),
            "--gid",
            str(SANDBOX_UID),
            "--disable-userns",
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
            *([] if network else ["--unshare-net"]),
            "--cap-drop",
            "ALL",
            "--die-with-parent",
            "--new-session",
            # Triton itself is pid 1: it reaps its backend stubs, and a SIGTERM
            # sent to it (not to bwrap, which would die and SIGKILL it) lets it
            # stop gracefully.
            "--as-pid-1",
            # Mounts before binds: a path bound below /tmp (a test's venv)
            # must land on the private /tmp, not be hidden by it.
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--tmpfs",
            "/tmp",
            "--ro-bind",
            "/usr",
            "/usr",
        ]
        for link in _TOP_LEVEL_LINKS:
            arguments += _mirror(Path(link))
        for name in _ETC_FILES:
            arguments += ["--ro-bind-try", name, name]
        for path in _outermost(_python_roots() + [Path(p) for p in read_only]):
            arguments += ["--ro-bind", str(path), str(path)]
        for name, host in placed.items():
            arguments += ["--ro-bind", str(host), str(self.inside(name, host))]
        for name, host in (writable or {}).items():
            arguments += ["--bind", str(host), str(self.inside(name, host))]
        if info_fd is not None:
            arguments += ["--info-fd", str(info_fd)]
        arguments += [
            # Last: nothing outside /tmp and /dev can be created or changed.
            "--remount-ro",
            "/",
            "--chdir",
            "/tmp",
            "--",
            *command,
        ]
        return arguments


def read_child_pid(reader: int) -> int | None:
    """The pid bubblewrap reports on its info pipe (read to its end, then closed)."""
    with os.fdopen(reader, "rb") as info:
        text = info.read()
    try:
        pid = json.loads(text)["child-pid"]
    except (ValueError, KeyError, TypeError):
        return None  # bwrap failed before it started the command; its exit says why
    return int(pid)


def _mirror(path: Path) -> list[str]:
    # Merged-/usr systems have /lib -> usr/lib; keep the link, or bind the directory.
    if path.is_symlink():
        return ["--symlink", os.readlink(path), str(path)]
    if path.is_dir():
        return ["--ro-bind", str(path), str(path)]
    return []


def _python_roots() -> list[Path]:
    """This interpreter's installation and virtualenv: the stub imports numpy from them."""
    roots = {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()}
    return [root for root in roots if not root.is_relative_to("/usr")]


def _outermost(paths: Iterable[Path]) -> list[Path]:
    """The paths, without those inside another one of them (bound already)."""
    resolved = sorted({path.resolve() for path in paths}, key=lambda p: len(p.parts))
    kept: list[Path] = []
    for path in resolved:
        if not any(path.is_relative_to(outer) for outer in kept):
            kept.append(path)
    return kept


@functools.cache
def _probe(bwrap: str) -> str | None:
    """None when a trivial command runs in the sandbox; else why it does not."""
    probe = Sandbox(Path(bwrap)).wrap(["/bin/true"], placed={}, read_only=())
    try:
        result = subprocess.run(
            probe, capture_output=True, timeout=30, check=False, env=scrubbed_environment((), ())
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bubblewrap at {bwrap} cannot be run ({exc})"
    if result.returncode != 0:
        reason = result.stderr.decode(errors="replace").strip() or f"exit {result.returncode}"
        return f"bubblewrap at {bwrap} cannot make a sandbox here ({reason})"
    return None
