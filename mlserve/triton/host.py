"""What this host has for models, and what a Triton process tree holds, from /proc.

The embedded Triton's capacity is read here (host memory from
``/proc/meminfo``, GPUs from ``nvidia-smi`` when it is installed), and a
model's memory is measured as the growth of the Triton process tree's
resident memory across its load when the backend reports none itself
(backends spawn processes: the Python backend runs one stub per instance).
Linux only; elsewhere the readers answer 0 (not stated, not measured).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

_PROC = Path("/proc")
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass(frozen=True)
class HostCapacity:
    gpu_count: int
    gpu_memory_bytes: int  # per GPU
    host_memory_bytes: int


def host_capacity(meminfo: Path = _PROC / "meminfo") -> HostCapacity:
    """This host's GPUs and the memory available for models now (MemAvailable)."""
    count, per_gpu = gpus()
    return HostCapacity(count, per_gpu, available_memory_bytes(meminfo))


def available_memory_bytes(meminfo: Path = _PROC / "meminfo") -> int:
    """MemAvailable of ``/proc/meminfo`` in bytes (0 when it cannot be read): what
    the kernel estimates can be given to new work without swapping."""
    try:
        text = meminfo.read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key == "MemAvailable":
            amount, _, unit = value.strip().partition(" ")
            return int(amount) * (1024 if unit == "kB" else 1)
    return 0


def gpus() -> tuple[int, int]:
    """(count, memory of the smallest in bytes) of the GPUs ``nvidia-smi`` lists;
    (0, 0) without nvidia-smi or when it fails."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0, 0
    try:
        result = subprocess.run(
            [smi, "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return 0, 0
    sizes = [int(line.strip()) for line in result.stdout.splitlines() if line.strip().isdigit()]
    if not sizes:
        return 0, 0
    return len(sizes), min(sizes) * 1024**2  # nvidia-smi reports MiB


def tree_resident_bytes(pid: int) -> int:
    """Resident memory of process ``pid`` and all its descendants, in bytes (0 when
    ``pid`` is gone)."""
    children: dict[int, list[int]] = {}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        parent = _parent_of(entry)
        if parent is not None:
            children.setdefault(parent, []).append(int(entry.name))
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        total += _resident_bytes(current)
        stack.extend(children.get(current, ()))
    return total


def _parent_of(process: Path) -> int | None:
    try:
        stat = (process / "stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces: split after it.
    fields = stat.rpartition(")")[2].split()
    return int(fields[1]) if len(fields) > 1 else None


def _resident_bytes(pid: int) -> int:
    try:
        pages = (_PROC / str(pid) / "statm").read_text().split()[1]
    except (OSError, IndexError):
        return 0
    return int(pages) * _PAGE_BYTES
