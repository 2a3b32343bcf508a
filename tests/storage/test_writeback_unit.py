"""Early writeback of staged bytes (``storage.writeback``): it starts the disk's work
and changes nothing else, and a descriptor it cannot use is left to the fsync."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from mlserve.storage import writeback


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sync_file_range is Linux's")
def test_it_is_there_on_linux() -> None:
    assert writeback.available()


def test_starting_writeback_leaves_the_bytes_as_written(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 5)
    path = tmp_path / "staged"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, data, 0)
        writeback.start(fd, 0, len(data))
        writeback.start(fd, len(data), 0)  # nothing to start
        os.fsync(fd)
    finally:
        os.close(fd)
    assert path.read_bytes() == data


def test_a_descriptor_it_cannot_use_raises_nothing() -> None:
    """A pipe (ESPIPE) or a closed descriptor (EBADF): best effort, the fsync decides."""
    read_end, write_end = os.pipe()
    try:
        writeback.start(write_end, 0, 4096)
    finally:
        os.close(read_end)
        os.close(write_end)
    writeback.start(write_end, 0, 4096)


def test_a_growing_file_starts_writeback_once_a_range_is_long_enough(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "staged", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        growing = writeback.Growing(fd, started=100)  # a resume: 100 bytes were there
        os.pwrite(fd, b"x" * (writeback.EVERY + 100), 0)
        growing.grew_to(writeback.EVERY)  # not yet EVERY bytes since 100
        assert growing.started == 100
        growing.grew_to(writeback.EVERY + 100)
        assert growing.started == writeback.EVERY + 100
    finally:
        os.close(fd)
