"""The assay scheduler on SQLite and PostgreSQL (``store_db``), over log files
written by the log's own writer: due windows only, catch-up after downtime,
no window twice with two replicas on one database, gauges, and the Alert
webhook received by a local HTTP server."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import http.server
import json
import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import peewee as pw
import pytest
from prometheus_client import CollectorRegistry

from mlserve.assays.maths import Summarizer
from mlserve.assays.scheduler import AssayScheduler
from mlserve.assays.service import Assays
from mlserve.assays.spec import AssaySpec, Baseline, Window
from mlserve.assays.spec import Path as AssayPath
from mlserve.catalog.pipelines import Spec, Step
from mlserve.core.paging import PageTokens
from mlserve.monitor import parquet
from mlserve.monitor.records import Record
from mlserve.storage import tables
from mlserve.storage.repository import LocalRepository
from tests.support.assays import records, store_scale_model

T0 = dt.datetime(2026, 1, 1, 10, 0, tzinfo=dt.timezone.utc)
MODEL = "scored"
SETTLE = dt.timedelta(seconds=2)


def _records(
    start: dt.datetime, values: list[float], model: str = MODEL, tensor: str = "INPUT"
) -> list[Record]:
    return records(start, values, model, tensor)


@pytest.fixture
def log_root(store_db: pw.Database, tmp_path: Path) -> Path:
    """A model row with a version, and a log: minute 0 like the baseline, minute 1
    shifted by 5, minute 2 empty."""
    store_scale_model(MODEL)
    root = tmp_path / "logs"
    same = [i / 50 for i in range(50)]
    parquet.write(root, _records(T0, same))
    parquet.write(root, _records(T0 + dt.timedelta(minutes=1), [5 + v for v in same]))
    return root


class Hook(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, object]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        Hook.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[str]:
    Hook.received = []
    server = http.server.HTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/alerts"
    server.shutdown()
    server.server_close()


def _assays(log_root: Path) -> Assays:
    store = log_root.parent / "store"
    repository = LocalRepository(store / "repository", store / "staging", store / "blobs")
    return Assays(log_root, PageTokens(b"k" * 32), repository)


def _spec(webhook: str) -> AssaySpec:
    return AssaySpec(
        name="drift",
        model=MODEL,
        path=AssayPath("input", "0", 0),  # by position, Wallaroo's way
        baseline=Baseline(values=tuple(i / 50 for i in range(50))),
        window=Window(dt.timedelta(minutes=1), start=T0),
        summarizer=Summarizer(warning_threshold=0.1),
        webhook_url=webhook,
    )


def _stored() -> list[tuple[dt.datetime, str]]:
    rows = tables.AssayResult.select().order_by(tables.AssayResult.window_start)
    return [(r.window_start, r.status) for r in rows]


def test_due_windows_are_scored_once_with_catch_up_across_replicas(
    log_root: Path, webhook: str
) -> None:
    assays = _assays(log_root)
    asyncio.run(assays.create(_spec(webhook)))
    registry = CollectorRegistry()
    first = AssayScheduler(assays, registry, SETTLE)
    second = AssayScheduler(assays, CollectorRegistry(), SETTLE)

    # Minute 0 ended at 10:01 but has not settled: nothing is due yet.
    assert asyncio.run(first.step(T0 + dt.timedelta(minutes=1, seconds=1))) == 0
    assert _stored() == []

    # Down until 10:03:05: the three minutes since are caught up, in order.
    assert asyncio.run(first.step(T0 + dt.timedelta(minutes=3, seconds=5))) == 3
    naive = T0.replace(tzinfo=None)
    assert _stored() == [
        (naive, "ok"),
        (naive + dt.timedelta(minutes=1), "alert"),
        (naive + dt.timedelta(minutes=2), "no_data"),
    ]
    # The other replica, which has not seen the assay's progress, stores nothing twice.
    tables.Assay.update(next_window=None).execute()
    assert asyncio.run(second.step(T0 + dt.timedelta(minutes=3, seconds=5))) == 0
    assert len(_stored()) == 3

    # One alert, posted once, to the local server.
    assert [m["window_start"] for m in Hook.received] == [
        (T0 + dt.timedelta(minutes=1)).isoformat()
    ]
    assert Hook.received[0]["assay"] == "drift"
    assert Hook.received[0]["status"] == "alert"
    # The gauges hold the latest window: no data (-1), and the last score seen.
    assert registry.get_sample_value("mlserve_assay_status", {"assay": "drift"}) == -1
    assert registry.get_sample_value("mlserve_assay_score", {"assay": "drift"}) > 0.25


def test_inactive_assays_are_not_run(log_root: Path, webhook: str) -> None:
    assays = _assays(log_root)
    asyncio.run(assays.create(_spec(webhook)))
    asyncio.run(assays.set_active("drift", False))
    scheduler = AssayScheduler(assays, CollectorRegistry(), SETTLE)
    assert asyncio.run(scheduler.step(T0 + dt.timedelta(minutes=10))) == 0
    assert _stored() == []


def test_a_pipeline_assay_is_scheduled_over_the_pipelines_own_records(
    log_root: Path, webhook: str
) -> None:
    """A one-step pipeline over the model: its calls are logged under its name with its
    input A; the model's own log (INPUT) is not what the assay reads."""
    spec = Spec(["A"], ["OUT"], [Step("s", MODEL, 0, {"INPUT": "A"}, {"OUTPUT": "OUT"})])
    chain = tables.Pipeline.create(name="chain")
    tables.PipelineVersion.create(pipeline=chain, version=1, spec=spec.to_json())
    same = [i / 50 for i in range(50)]
    parquet.write(log_root, _records(T0, same, "chain", "A"))
    shifted = [5 + v for v in same]
    parquet.write(log_root, _records(T0 + dt.timedelta(minutes=1), shifted, "chain", "A"))
    assays = _assays(log_root)
    pipeline_spec = dataclasses.replace(
        _spec(webhook), name="chain-drift", model="", pipeline="chain", path=AssayPath("input", "A")
    )
    asyncio.run(assays.create(pipeline_spec))
    scheduler = AssayScheduler(assays, CollectorRegistry(), SETTLE)
    assert asyncio.run(scheduler.step(T0 + dt.timedelta(minutes=2, seconds=5))) == 2
    naive = T0.replace(tzinfo=None)
    assert _stored() == [(naive, "ok"), (naive + dt.timedelta(minutes=1), "alert")]
    (alert,) = Hook.received
    assert (alert["assay"], alert["pipeline"], alert["model"]) == ("chain-drift", "chain", "")


def test_a_broken_assay_or_webhook_does_not_stop_the_others(
    log_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An assay whose log has a file that does not read (a non-MLServe error) is logged
    and skipped, and a webhook answering something other than HTTP is logged: the
    other assays' windows are stored and published all the same."""
    spec = Spec(["A"], ["OUT"], [Step("s", MODEL, 0, {"INPUT": "A"}, {"OUTPUT": "OUT"})])
    broken = tables.Pipeline.create(name="broken")
    tables.PipelineVersion.create(pipeline=broken, version=1, spec=spec.to_json())
    parquet.write(log_root, _records(T0, [1.0], "broken", "A"))
    (damaged,) = (log_root / "model=broken").rglob("*.parquet")
    damaged.write_bytes(b"not parquet at all")
    garbage = socket.create_server(("127.0.0.1", 0))

    def answer_garbage() -> None:
        while True:
            try:
                connection, _ = garbage.accept()
            except OSError:
                return
            with connection:
                connection.recv(65536)
                connection.sendall(b"garbage\r\n\r\n")

    threading.Thread(target=answer_garbage, daemon=True).start()
    hook = f"http://127.0.0.1:{garbage.getsockname()[1]}/alerts"
    assays = _assays(log_root)
    first = dataclasses.replace(
        _spec(hook), name="a-broken", model="", pipeline="broken", path=AssayPath("input", "A")
    )
    asyncio.run(assays.create(first))  # created first: the scheduler meets it first
    asyncio.run(assays.create(_spec(hook)))
    registry = CollectorRegistry()
    scheduler = AssayScheduler(assays, registry, SETTLE)
    try:
        with caplog.at_level(logging.WARNING, "mlserve.assays.scheduler"):
            assert asyncio.run(scheduler.step(T0 + dt.timedelta(minutes=2, seconds=5))) == 2
            # The broken one fails again at the next poll: logged once a minute, not again.
            assert asyncio.run(scheduler.step(T0 + dt.timedelta(minutes=2, seconds=6))) == 0
    finally:
        garbage.close()
    assert [r.getMessage() for r in caplog.records if "not run" in r.getMessage()] == [
        "assay 'a-broken' not run"
    ]
    naive = T0.replace(tzinfo=None)
    assert _stored() == [(naive, "ok"), (naive + dt.timedelta(minutes=1), "alert")]
    assert registry.get_sample_value("mlserve_assay_status", {"assay": "drift"}) == 2
    assert registry.get_sample_value("mlserve_assay_status", {"assay": "a-broken"}) is None
