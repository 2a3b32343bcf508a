"""The test ports: outside the kernel's ephemeral range, and reserved across processes."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from tests.support import ports
from tests.support.ports import free_port

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def ephemeral_range() -> range:
    first, last = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    return range(first, last + 1)


def test_ports_are_distinct_bindable_and_never_ephemeral() -> None:
    picked = [free_port() for _ in range(20)]
    assert len(set(picked)) == len(picked)
    assert not set(picked) & set(ephemeral_range())
    for port in picked:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # nothing holds it: a server can have it


def test_a_port_in_use_is_skipped() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert not ports._bindable(port)


def test_another_process_never_gets_a_port_this_one_reserved() -> None:
    mine = free_port()
    script = f"from tests.support import ports; print(ports._reserve({mine}))"
    other = subprocess.run(
        [sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    )
    assert other.stdout.split() == ["False"], other
