"""Loopback ports for servers the tests start on a port chosen in advance.

Binding port 0, reading the number and closing the socket leaves a window
until the real server binds it, and on a busy machine something else fills
it: the kernel hands the same range (``ip_local_port_range``) to every
``bind(0)`` and to the local end of every outgoing connection. So a Triton
told ``--grpc-port`` a moment later found its port "already in use".

These ports come from below that range, where the kernel never assigns one
by itself, and each is reserved by an exclusive ``flock`` held until this
process exits, so test runs in other worktrees (same allocator, same lock
directory) never pick it either. A port that is reserved survives its
server's restart: a Triton killed and started again gets it back.
"""

from __future__ import annotations

import errno
import fcntl
import random
import socket
import tempfile
from pathlib import Path
from typing import IO

__all__ = ["free_port"]

_HOST = "127.0.0.1"
_LOWEST = 20000  # below the registered ports most often in use (and far above 1024)
_LOCK_DIR = Path(tempfile.gettempdir()) / "mlserve-test-ports"
_reserved: dict[int, IO[bytes]] = {}  # port -> its open, locked file: held until exit


def free_port() -> int:
    """A loopback TCP port nothing listens on and no other test process will pick."""
    low, high = _outside_ephemeral_range()
    candidates = list(range(low, high))
    random.shuffle(candidates)  # concurrent runs rarely contend for the same lock
    _LOCK_DIR.mkdir(exist_ok=True)
    for port in candidates:
        if port not in _reserved and _reserve(port):
            return port
    raise RuntimeError(f"no free loopback port left in {low}-{high - 1}")


def _reserve(port: int) -> bool:
    lock = (_LOCK_DIR / f"{port}.lock").open("ab")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        lock.close()
        if error.errno in (errno.EWOULDBLOCK, errno.EACCES):
            return False  # another test process holds it
        raise
    if not _bindable(port):
        lock.close()  # someone outside the tests uses it
        return False
    _reserved[port] = lock
    return True


def _bindable(port: int) -> bool:
    # No SO_REUSEADDR: a port still in TIME_WAIT counts as taken too.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((_HOST, port))
        except OSError:
            return False
    return True


def _outside_ephemeral_range() -> tuple[int, int]:
    """[low, high) below the kernel's ephemeral ports (above them if they start too low)."""
    try:
        first, last = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        first, last = 32768, 60999  # Linux's default
    if first - _LOWEST >= 1000:
        return _LOWEST, first
    return last + 1, 65536
