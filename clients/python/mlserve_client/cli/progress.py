"""Byte progress of uploads, on stderr."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from typing import NoReturn, TypeVar

from tqdm import tqdm

from mlserve_client import ClientError, Progress

Uploaded = TypeVar("Uploaded")


def upload_with_progress(description: str, upload: Callable[[Progress], Uploaded]) -> Uploaded:
    """Run ``upload`` with a byte progress bar; Ctrl-C becomes an error saying how to resume."""
    try:
        with contextlib.closing(ByteProgressBar(description)) as bar:
            return upload(bar)
    except KeyboardInterrupt:
        raise ClientError("interrupted; run the same command again to resume the upload") from None


class ByteProgressBar:
    """A tqdm bar on stderr, opened on the first report, when the total is known."""

    def __init__(self, description: str) -> None:
        self.description = description
        self.bar: tqdm[NoReturn] | None = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = self._open(done, total)
        self.bar.update(done - self.bar.n)

    def _open(self, done: int, total: int) -> tqdm[NoReturn]:
        return tqdm(
            desc=self.description,
            total=total,
            initial=done,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            file=sys.stderr,
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
