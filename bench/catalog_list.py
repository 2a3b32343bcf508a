"""ListModels with a tag filter over 1,000 / 10,000 / 100,000 models, on SQLite
and on PostgreSQL: p50 per page of 100, and how it grows from 1k to 100k.

Rows go in straight through the store (``insert_many``, in the benchmark
process); the pages are read through the gRPC API of a running MLServe
(``--no-embedded-triton``), so each page's time is a whole ``ListModels``
call: auth, query, record building, serialisation. The catalog grows in place
(1k, then 10k, then 100k) and MLServe keeps running on it; every tenth model
carries the filtered tag, so a walk reads 1 / 10 / 100 pages of 100.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc

from bench.common import RESULTS_DIR, MLServeProcess, Report, Table
from mlserve.storage import tables
from mlserve_api.v1 import model_pb2
from tests.support.databases import close_database
from tests.support.postgres import PostgresCluster

SIZES = (1_000, 10_000, 100_000)
PAGE = 100
TAG = "hot"  # on every tenth model
OTHER_TAGS = ("vision", "text", "tabular")
MIN_CALLS = 400  # pages read per size at least (the walk repeats when shorter)
BATCH = 1_000


def _grow(url: str, start: int, end: int) -> None:
    """Add models ``start``..``end - 1`` with their tags, in batches, in this process."""
    db = tables.connect(url)
    try:
        for first in range(start, end, BATCH):
            last = min(first + BATCH, end)
            names = [f"model-{index:06d}" for index in range(first, last)]
            with db.atomic():
                tables.Model.insert_many(
                    [{"name": name, "description": "bench"} for name in names]
                ).execute()
                ids = dict(
                    tables.Model.select(tables.Model.name, tables.Model.id)
                    .where(tables.Model.name.in_(names))
                    .tuples()
                )
                tags = []
                for index, name in zip(range(first, last), names, strict=True):
                    tags.append({"model": ids[name], "tag": OTHER_TAGS[index % 3]})
                    if index % 10 == 0:
                        tags.append({"model": ids[name], "tag": TAG})
                tables.ModelTag.insert_many(tags).execute()
        # What autovacuum (PostgreSQL) or an occasional ANALYZE would do after a bulk load.
        db.execute_sql("ANALYZE")
    finally:
        close_database(db)


def _walk(server: MLServeProcess) -> list[float]:
    """Milliseconds per ListModels page, walking the tagged models MIN_CALLS pages at least."""
    stubs = server.stubs()
    times: list[float] = []
    try:
        request = model_pb2.ListModelsRequest(page_size=PAGE, tag=TAG)
        stubs.models.ListModels(request, metadata=stubs.auth)  # warm the connection
        token = ""
        while len(times) < MIN_CALLS or token:
            request = model_pb2.ListModelsRequest(page_size=PAGE, tag=TAG, page_token=token)
            began = time.perf_counter()
            page = stubs.models.ListModels(request, metadata=stubs.auth)
            times.append((time.perf_counter() - began) * 1000)
            assert len(page.models) == PAGE or not page.next_page_token
            token = page.next_page_token
    finally:
        stubs.channel.close()
    return times


@contextmanager
def _postgresql() -> Iterator[str]:
    cluster = PostgresCluster().start()
    try:
        yield cluster.url(cluster.create_database("bench"))
    finally:
        cluster.destroy()


def _measure(kind: str, url: str, home: Path) -> list[tuple[int, list[float]]]:
    _grow(url, 0, 0)  # create the schema before MLServe opens it
    server = MLServeProcess(home, "--database", url, "--no-embedded-triton")
    server.start(wait_for_triton=False)
    results = []
    try:
        grown = 0
        for size in SIZES:
            began = time.monotonic()
            _grow(url, grown, size)
            grown = size
            print(f"  {kind}: {size:,} models in place ({time.monotonic() - began:.1f}s)")
            results.append((size, _walk(server)))
    except grpc.RpcError as error:
        raise RuntimeError(
            f"ListModels failed: {error}\n{server.log.read_text()[-2000:]}"
        ) from None
    finally:
        server.stop()
    return results


def run() -> Report:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    rows: list[list[str]] = []
    with tempfile.TemporaryDirectory(dir=RESULTS_DIR) as work:
        sqlite_url = f"sqlite:///{Path(work) / 'catalog.db'}"
        measured = {"SQLite": _measure("SQLite", sqlite_url, Path(work) / "sqlite-home")}
        with _postgresql() as url:
            measured["PostgreSQL"] = _measure("PostgreSQL", url, Path(work) / "pg-home")
    for kind, results in measured.items():
        p50s = {size: statistics.median(times) for size, times in results}
        for size, times in results:
            ordered = sorted(times)
            rows.append([
                kind, f"{size:,}", f"{size // 10:,}", str(len(times)),
                f"{p50s[size]:.1f}", f"{ordered[int(len(ordered) * 0.9)]:.1f}",
                f"{p50s[size] / p50s[SIZES[0]]:.2f}",
            ])  # fmt: skip
    header = ["database", "models", "tagged", "pages read", "p50 ms/page", "p90 ms/page",
              f"p50 vs {SIZES[0]:,}"]  # fmt: skip
    notes = [
        f"ListModels(page_size={PAGE}, tag={TAG!r}) through the gRPC API, one client, "
        "one MLServe (--no-embedded-triton) per database; aim: p50 < 20 ms, flat growth",
        "PostgreSQL: the tests' throwaway cluster (fsync off) on loopback TCP; SQLite in WAL mode",
        "client, MLServe and the database share this machine's cores",
    ]
    return Report("catalog list: ListModels with a tag filter, 1k to 100k models",
                  [Table(header, rows)], notes)  # fmt: skip
