"""Retention: the log keeps files for so long, and so many bytes per model."""

from __future__ import annotations

import time
from pathlib import Path

from mlserve.monitor.store import LogStore


def apply(root: Path | LogStore, max_age_seconds: float, max_bytes_per_model: int) -> int:
    """Delete files older than ``max_age_seconds``, then each model's oldest files
    beyond ``max_bytes_per_model``; returns how many files were deleted.

    Works alike on a local directory and a bucket (age is the file's modification
    time, or the object's last-modified time).
    """
    store = LogStore.of(root)
    deleted = 0
    oldest_kept = time.time() - max_age_seconds
    for model in store.models():
        aged = sorted(store.files(f"model={model}"), key=lambda file: (file.modified, file.path))
        total = sum(file.size for file in aged)
        for file in aged:
            if file.modified >= oldest_kept and total <= max_bytes_per_model:
                break
            store.delete(file.path)
            total -= file.size
            deleted += 1
        store.remove_empty(f"model={model}")
    return deleted
