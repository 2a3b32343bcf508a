"""How one MLServe process is configured: every option of ``mlserve serve``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_LISTEN = "127.0.0.1:50051"


def default_home() -> Path:
    return Path(os.environ.get("MLSERVE_HOME", "~/.mlserve")).expanduser()


@dataclass(frozen=True)
class Settings:
    home: Path
    """State directory: database, repository, staging, admin.key, Triton's log."""
    listen: str = DEFAULT_LISTEN
    """host:port for every gRPC service; loopback unless told otherwise."""
    database: str = ""
    """sqlite:///PATH or postgresql://… (pooled; see tables.connect); empty: <home>/mlserve.db."""
    embedded_triton: bool = True
    """Start a Triton on the repository and register it as 'local'."""
    max_upload_bytes: int = 64 * 1024**3
    """Largest model version accepted, in bytes (RESOURCE_EXHAUSTED above)."""
    max_message_bytes: int = 2**31 - 1
    """Largest single gRPC message accepted or sent; by default what Triton accepts."""
    metrics_listen: str = ""
    """host:port for Prometheus metrics over HTTP; empty means off."""
    health_interval: float = 2.0
    """Seconds between health checks of every Triton."""
    shutdown_grace: float = 10.0
    """Seconds in-flight calls get to finish on SIGTERM/SIGINT."""
    tls_cert: Path | None = None
    """PEM certificate (chain) to serve TLS with on the same port; with tls_key."""
    tls_key: Path | None = None
    """PEM private key of tls_cert."""
    log_queue_size: int = 10_000
    """Inference log: records waiting for the writer at most; more are dropped and counted."""
    log_flush_interval: float = 1.0
    """Inference log: seconds between writes, the most a SIGKILL can lose."""
    log_retention_hours: float = 7 * 24.0
    """Inference log: files older than this are deleted."""
    log_retention_bytes: int = 10 * 1024**3
    """Inference log: per model, the oldest files beyond this many bytes are deleted."""
    bench_anonymous_gateway: bool = False
    """For the auth benchmark only: gateway calls that send no key at all are served
    unauthenticated (calls with a key are checked as always). Loopback only."""

    @property
    def database_url(self) -> str:
        return self.database or f"sqlite:///{self.home / 'mlserve.db'}"

    @property
    def repository_dir(self) -> Path:
        return self.home / "repository"

    @property
    def staging_dir(self) -> Path:
        return self.home / "staging"

    @property
    def blobs_dir(self) -> Path:
        """Content-addressed file store; versions hard-link to it, so same file system."""
        return self.home / "blobs"

    @property
    def log_dir(self) -> Path:
        """The inference log's Parquet files (mlserve.monitor)."""
        return self.home / "logs"

    @property
    def triton_log(self) -> Path:
        return self.home / "triton.log"
