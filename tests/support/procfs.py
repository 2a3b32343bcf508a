"""Processes as /proc shows them: the embedded Triton child of an MLServe and its sockets."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == pid:
            found.append(int(entry.name))
    return found


def gone(pids: list[int], within: float = 30.0) -> bool:
    """Whether every one of ``pids`` has exited (waiting up to ``within`` seconds)."""
    deadline = time.monotonic() + within
    while any(Path(f"/proc/{pid}").exists() for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def triton_pid(mlserve_pid: int) -> int:
    """The tritonserver process below MLServe (under bubblewrap it is a grandchild or deeper)."""
    pending = children(mlserve_pid)
    while pending:
        child = pending.pop(0)
        with contextlib.suppress(OSError):
            program = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0", 1)[0]
            if Path(program.decode(errors="replace")).name == "tritonserver":
                return child
        pending += children(child)
    raise AssertionError(f"no tritonserver process below process {mlserve_pid}")


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    return inodes


def listening_sockets(pid: int) -> list[tuple[str, str, int, str]]:
    """(table, hex local address, port, inode) of every LISTEN socket in pid's namespace."""
    found = []
    for table in ("tcp", "tcp6"):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":
                continue
            address, port = fields[1].split(":")
            found.append((table, address, int(port, 16), fields[9]))
    return found


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``: children, their children, and so on."""
    found = []
    pending = [pid]
    while pending:
        for child in children(pending.pop()):
            found.append(child)
            pending.append(child)
    return found


def tritonserver_pids(mlserve_pid: int) -> list[int]:
    """The running ``tritonserver`` binaries below an MLServe, however wrapped
    (setpriv execs into it; a sandbox runs it as a grandchild)."""
    found = []
    for pid in descendants(mlserve_pid):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() == "tritonserver":
                found.append(pid)
    return found
