"""The server's malloc thresholds: applied on glibc, never over a user's own."""

from __future__ import annotations

import platform

import pytest

from mlserve.memory import keep_freed_buffers


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="thresholds are glibc's")
def test_glibc_takes_the_thresholds() -> None:
    assert keep_freed_buffers() is True


@pytest.mark.parametrize("variable", ["MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_"])
def test_a_users_own_malloc_setting_wins(monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    monkeypatch.setenv(variable, "131072")
    assert keep_freed_buffers() is False
