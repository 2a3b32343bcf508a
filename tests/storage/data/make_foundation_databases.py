"""Write the saved foundation-schema databases that test_store_migrations opens.

Run it with the foundation's code (schema 3, commit 12c1548) on the path, so
the files are what that MLServe wrote, e.g.::

    git worktree add /tmp/foundation 12c1548
    cd /tmp/foundation && ../wt/.venv/bin/python \
        ../wt/tests/storage/data/make_foundation_databases.py \
        ../wt/tests/storage/data postgresql://USER@127.0.0.1:PORT/EMPTY_DB

It writes ``foundation.sqlite3`` and, given a PostgreSQL URL of an empty
database, ``foundation.postgresql.sql`` (``pg_dump --inserts`` of it).
Every table gets rows; ``EXPECTED`` in the test lists what must survive.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

from mlserve.storage import tables

WHEN = dt.datetime(2026, 11, 1, 12, 0, 0)


def fill() -> None:
    assert tables.SCHEMA_VERSION == 3, "run with the foundation's code (schema 3)"
    tables.Setting.create(key="page_token_secret", value=b"\x00\x01secret\xff")
    tables.ApiKey.create(
        prefix="oldprefix", secret_hash="scrypt$abc", owner="admin", role="admin",
        create_time=WHEN,
    )  # fmt: skip
    resnet = tables.Model.create(
        name="resnet", description="image classifier", labels=json.dumps({"team": "vision"}),
        create_time=WHEN, update_time=WHEN,
    )  # fmt: skip
    tables.Model.create(name="empty", create_time=WHEN, update_time=WHEN)
    for tag in ("prod", "vision"):
        tables.ModelTag.create(model=resnet, tag=tag)
    for number in (1, 2):
        files = [["model.py", 10 * number, f"{number:064x}"]]
        tables.ModelVersion.create(
            model=resnet, version=number, sha256=f"{number + 10:064x}",
            size_bytes=10 * number, files=json.dumps(files), config='backend: "python"',
            upload_id=f"upload-{number}", create_time=WHEN,
        )  # fmt: skip
        tables.Upload.create(
            upload_id=f"upload-{number}", model="resnet", files=json.dumps(files),
            config='backend: "python"', manifest_sha256=f"{number + 10:064x}",
            committed_version=number, create_time=WHEN, update_time=WHEN,
        )  # fmt: skip
    local = tables.Server.create(
        name="local", address="127.0.0.1:8001", embedded=True, shares_repository=True,
        create_time=WHEN,
    )  # fmt: skip
    remote = tables.Server.create(
        name="remote", address="10.0.0.2:8001", labels=json.dumps({"zone": "b"}),
        create_time=WHEN,
    )  # fmt: skip
    deployment = tables.Deployment.create(
        name="resnet", model=resnet, version=2, create_time=WHEN, update_time=WHEN
    )
    for position, server in enumerate((local, remote)):
        tables.DeploymentTarget.create(
            deployment=deployment, server=server, position=position, state="READY",
            update_time=WHEN,
        )  # fmt: skip
    tables.InferenceCount.create(model="resnet", version=2, count=42, failures=1, last_time=WHEN)


def main(out: Path, postgresql_url: str = "") -> None:
    sqlite_file = out / "foundation.sqlite3"
    sqlite_file.unlink(missing_ok=True)
    db = tables.connect(f"sqlite:///{sqlite_file}")
    fill()
    db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    db.execute_sql("PRAGMA journal_mode=DELETE")
    db.close()
    if postgresql_url:
        db = tables.connect(postgresql_url)
        fill()
        db.close()
        parts = urlsplit(postgresql_url)
        dump = subprocess.run(
            ["pg_dump", "--inserts", "--no-owner", "--no-privileges", "-h", parts.hostname or "",
             "-p", str(parts.port or 5432), "-U", parts.username or "", parts.path.lstrip("/")],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        # Plain SQL any client can run: drop psql's \restrict meta-commands.
        lines = [line for line in dump.splitlines() if not line.startswith("\\")]
        (out / "foundation.postgresql.sql").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), *sys.argv[2:])
