"""A real S3-compatible server for the tests and benchmarks: moto's, as a child
process on a free loopback port (``python -m moto.server``), with credentials
and a fresh bucket per caller."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.support.mlserve import free_port

# moto accepts any credentials; MLServe and Triton find these the standard way.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "mlserve-test",
    "AWS_SECRET_ACCESS_KEY": "mlserve-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


class MotoServer:
    """``start()``, ``bucket()`` per test, ``stop()``/``start()`` for an outage."""

    def __init__(self) -> None:
        self.port = free_port()
        self.log = Path(tempfile.mkdtemp(prefix="mlserve-moto-")) / "moto.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._buckets = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """Variables an MLServe (or Triton) reaching this server is given."""
        return {**AWS_ENV, "AWS_ENDPOINT_URL": self.endpoint}

    def start(self) -> MotoServer:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **AWS_ENV},
            )
        # moto imports Flask and most of boto first: slow on a loaded machine.
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto exited early:\n{self.log.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"moto did not start:\n{self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)

    def client(self) -> Any:
        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        )  # fmt: skip

    def bucket(self) -> str:
        """A new, empty bucket."""
        self._buckets += 1
        name = f"mlserve-test-{self._buckets}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = (
            self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        )
        return sorted(entry["Key"] for page in pages for entry in page.get("Contents", []))


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    server = MotoServer().start()
    try:
        yield server
    finally:
        server.stop()
