"""Command-line tools run against a test MLServe: its own CLI, and grpcurl."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.mlserve import MLServeProcess


def mlserve_cli(server: MLServeProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mlserve", "--home", str(server.home), *args,
         "--address", server.address],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "MLSERVE_HOME": str(server.home)},
    )  # fmt: skip


GRPCURL = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")


def grpcurl(
    mlserve: MLServeProcess, *args: str, key: bool = True
) -> subprocess.CompletedProcess[str]:
    auth = ["-H", f"authorization: Bearer {mlserve.key}"] if key else []
    return subprocess.run(
        [GRPCURL, "-plaintext", *auth, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
