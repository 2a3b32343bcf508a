"""Retention: the log keeps files for so long, and so many bytes per model."""

from __future__ import annotations

import time
from pathlib import Path

from mlserve.monitor import parquet


def apply(root: Path, max_age_seconds: float, max_bytes_per_model: int) -> int:
    """Delete files older than ``max_age_seconds``, then each model's oldest files
    beyond ``max_bytes_per_model``; returns how many files were deleted."""
    deleted = 0
    if not root.is_dir():
        return 0
    oldest_kept = time.time() - max_age_seconds
    for model_dir in sorted(root.glob("model=*")):
        aged: list[tuple[float, int, Path]] = []
        for path in parquet.files(model_dir):
            try:
                status = path.stat()
            except FileNotFoundError:
                continue
            aged.append((status.st_mtime, status.st_size, path))
        aged.sort()
        total = sum(size for _, size, _ in aged)
        for modified, size, path in aged:
            if modified >= oldest_kept and total <= max_bytes_per_model:
                break
            path.unlink(missing_ok=True)
            total -= size
            deleted += 1
        _remove_empty(model_dir)
    return deleted


def _remove_empty(directory: Path) -> None:
    for sub in sorted(directory.rglob("*"), reverse=True):
        if sub.is_dir() and not any(sub.iterdir()):
            sub.rmdir()
