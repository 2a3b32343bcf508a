"""An interrupted artifact download says where its bytes are kept and how to resume.

The client is scripted here (it writes part of the file, then the user presses Ctrl-C):
what is checked is the command's own decision, not the transfer, which
tests/client/test_cli_first_hour.py runs against a real server."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from mlserve_client import partial_file
from mlserve_client.cli import artifacts


class InterruptedDownload:
    """Writes 1000 bytes of the artifact's .part, then is interrupted."""

    def download_artifact(self, model: str, version: int, path: str, dest: Path) -> Any:
        partial_file(dest).write_bytes(b"x" * 1000)
        raise KeyboardInterrupt


def test_an_interrupted_download_says_how_to_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = argparse.Namespace(
        name="add", version=1, path="train.csv", dest=f"{tmp_path}/", key="mls_ab_secret"
    )
    assert artifacts._download_artifact(InterruptedDownload(), args) == 1  # type: ignore[arg-type]
    err = capsys.readouterr().err
    assert (
        f"error: interrupted; the 1000 bytes received are kept in {tmp_path}/train.csv.part: "
        "run the same command again to resume"
    ) in err
    assert (tmp_path / "train.csv.part").exists()
