"""A throwaway PostgreSQL cluster for the tests and benchmarks.

Debian's server binaries (``/usr/lib/postgresql/*/bin``, installed by
``scripts/ensure_postgresql.sh`` when absent), a data directory in a fresh
temporary directory, a free loopback port, the unix socket beside the data,
trust authentication. ``initdb`` refuses to run as root, so under root the
cluster runs as the ``postgres`` OS user that Debian's package creates.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlencode

import psycopg2

from tests.support.mlserve import free_port

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
USER = "mlserve"


def server_bin() -> Path:
    """The newest installed PostgreSQL's bin directory, installing the package if absent."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        subprocess.run([str(SCRIPTS / "ensure_postgresql.sh")], check=True)
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return max(found, key=lambda path: int(path.parent.parent.name)).parent


class PostgresCluster:
    """``start()``, ``create_database()`` per test, ``stop()``/``start()`` for an outage."""

    def __init__(self) -> None:
        self.bin = server_bin()
        self.root = Path(tempfile.mkdtemp(prefix="mlserve-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = free_port()
        self._names = itertools.count(1)
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", USER, "-A", "trust", "-E", "UTF8")

    def _run(self, program: str, *args: str) -> None:
        command: Sequence[str] = [str(self.bin / program), *args]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{program} failed: {result.stdout}{result.stderr}\n{log}")

    def start(self) -> PostgresCluster:
        # fsync off: a test cluster need not survive a power cut, and it is faster.
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=200"
        )
        self._run("pg_ctl", "start", "-w", "-t", "120", "-D", str(self.data), "-l", str(self.log),
                  "-o", options)  # fmt: skip
        return self

    def stop(self) -> None:
        """Stop the server (fast mode: clients are disconnected); ``start()`` brings it back."""
        self._run("pg_ctl", "stop", "-w", "-t", "120", "-m", "fast", "-D", str(self.data))

    def destroy(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str, **query: object) -> str:
        url = f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"
        return f"{url}?{urlencode(query)}" if query else url

    def admin(self, sql: str) -> None:
        """Run one statement on the maintenance database, outside a transaction."""
        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user=USER, dbname="postgres")
        try:
            conn.autocommit = True
            with conn.cursor() as cursor:
                cursor.execute(sql)
        finally:
            conn.close()

    def create_database(self, prefix: str = "test") -> str:
        """A new, empty database; returns its name."""
        name = f"{prefix}_{os.getpid()}_{next(self._names)}"
        self.admin(f'CREATE DATABASE "{name}" TEMPLATE template0 STRATEGY FILE_COPY')
        return name

    def drop_database(self, name: str) -> None:
        self.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
