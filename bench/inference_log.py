"""The inference log (issue 13): what recording costs the gateway, how fast the
writer is, whether sampling keeps its rate, and how listing grows with the log.

- gateway: 1x4 FP32 "add" at c=16 through MLServe, the deployment's policy
  switched between ``off`` and ``all`` (sample 1.0) round by round in one run;
- writer: decode + Parquet (zstd) of gateway captures with 4 KiB of tensors
  each (1x1024 FP32 in, the same out), this process pinned to one CPU;
- sampling: the share of 100,000 calls the hot path keeps at rate 0.1, random
  and by sampling key;
- listing: one page of 100 (newest first, then 10 pages deep) over logs of
  10,000 / 100,000 / 1,000,000 metadata records spread over 24 hourly
  partitions, read as ListInferenceLogs reads them (``monitor.reader``).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry
from tritonclient.grpc import service_pb2

from bench.common import RESULTS_DIR, MLServeProcess, Report, Table
from bench.gateway import load
from mlserve.core.paging import PageTokens
from mlserve.monitor import InferenceLog, LoggingPolicy, LogSettings, Mode
from mlserve.monitor import parquet as log_files
from mlserve.monitor.reader import LogQuery, read_page
from mlserve.monitor.records import Capture
from mlserve.monitor.store import LogStore
from mlserve_api.v1 import inference_log_pb2
from tests.support.models import upload_add
from tests.support.tritons import deploy

GATEWAY_SECONDS = 4.0
GATEWAY_ROUNDS = 3
WRITER_RECORDS = 20_000
SAMPLED_CALLS = 100_000
LIST_SIZES = (10_000, 100_000, 1_000_000)
PAGES = 20


def run() -> Report:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=RESULTS_DIR) as work:
        root = Path(work)
        tables = [
            _gateway(root / "home"),
            _writer(root / "writer"),
            _sampling(),
            _listing(root / "listing"),
        ]
    notes = [
        f"gateway: {GATEWAY_ROUNDS} rounds of {GATEWAY_SECONDS:.0f} s per mode, off then all; "
        "medians; the client, Triton and MLServe share the machine's CPUs",
        f"writer: {WRITER_RECORDS} records in batches of 1,000 (one flush each), one CPU",
        f"listing: p50 over {PAGES} requests per row",
    ]
    return Report("inference log: cost, writer, sampling, listing", tables, notes)


def _gateway(home: Path) -> Table:
    server = MLServeProcess(home, "--log-flush-interval", "0.5").start()
    try:
        stubs = server.stubs()
        upload_add(stubs, "add")
        deploy(stubs, "add")
        headers = {"authorization": f"Bearer {server.key}"}
        rates: dict[str, list[float]] = {"off": [], "all": []}
        for _ in range(GATEWAY_ROUNDS):
            for mode in ("off", "all"):
                policy = inference_log_pb2.LoggingPolicy(
                    deployment="add",
                    mode=inference_log_pb2.LoggingMode.Value(f"LOGGING_MODE_{mode.upper()}"),
                    sample_rate=1.0,
                )
                stubs.logs.UpdateLoggingPolicy(
                    inference_log_pb2.UpdateLoggingPolicyRequest(policy=policy), metadata=stubs.auth
                )
                result = asyncio.run(load(server.address, headers, 4, 16, GATEWAY_SECONDS))
                rates[mode].append(result.rate)
        dropped = stubs.logs.GetLoggingPolicy(
            inference_log_pb2.GetLoggingPolicyRequest(deployment="add"), metadata=stubs.auth
        ).dropped
        stubs.channel.close()
    finally:
        server.stop()
    ratios = [a / o for a, o in zip(rates["all"], rates["off"], strict=True)]
    return Table(
        ["gateway 1x4 FP32, c=16", "off req/s", "all req/s", "ratio all/off", "range", "dropped"],
        [[
            "mode all, sample 1.0",
            f"{statistics.median(rates['off']):.0f}", f"{statistics.median(rates['all']):.0f}",
            f"{statistics.median(ratios):.2f}", f"{min(ratios):.2f}-{max(ratios):.2f}",
            str(dropped),
        ]],
    )  # fmt: skip


_RANDOM = np.random.default_rng(13)


def _capture(n: int, policy: LoggingPolicy, floats: int) -> Capture:
    """A call of ``floats`` FP32 values in and as many out."""
    # Distinct random floats per record: the worst case for compression.
    data = _RANDOM.random(floats, dtype=np.float32).tobytes()
    request = service_pb2.ModelInferRequest(model_name="m", id=f"r{n}")
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, floats])
    request.raw_input_contents.append(data)
    response = service_pb2.ModelInferResponse(model_name="m", id=f"r{n}")
    response.outputs.add(name="OUTPUT0", datatype="FP32", shape=[1, floats])
    response.raw_output_contents.append(data[::-1])
    return Capture(time.time(), "m", 1, "local", None, policy, request.SerializeToString(),
                   response.SerializeToString(), "OK", "", 0.001)  # fmt: skip


def _writer(directory: Path) -> Table:
    """Records of 4 KiB in + 4 KiB out, and of 4 KiB in all (2 + 2)."""
    rows = [
        _write(directory / "8k", 1024, "4 KiB in + 4 KiB out, zstd"),
        _write(directory / "4k", 512, "2 KiB in + 2 KiB out, zstd"),
    ]
    return Table(
        ["writer (one CPU)", "records/s", "records per CPU-second", "bytes on disk per record",
         "payload per record"],
        rows,
    )  # fmt: skip


def _write(directory: Path, floats: int, label: str) -> list[str]:
    policy = LoggingPolicy(Mode.ALL)
    log = InferenceLog(
        LogSettings(directory, queue_size=WRITER_RECORDS), CollectorRegistry(), PageTokens(b"b")
    )
    captures = [_capture(n, policy, floats) for n in range(WRITER_RECORDS)]
    every_cpu = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(every_cpu)})
    try:
        began, began_cpu = time.perf_counter(), time.process_time()
        for start in range(0, WRITER_RECORDS, 1000):
            log._queue.extend(captures[start : start + 1000])  # the queue as capture fills it
            log.flush()
        seconds = time.perf_counter() - began
        # The CPU the writer used: on a shared machine the wall clock also counts the
        # time the one CPU spent on other processes.
        cpu_seconds = time.process_time() - began_cpu
    finally:
        os.sched_setaffinity(0, every_cpu)
    on_disk = sum(file.size for file in LogStore.of(directory).files())
    return [label, f"{WRITER_RECORDS / seconds:.0f}", f"{WRITER_RECORDS / cpu_seconds:.0f}",
            f"{on_disk / WRITER_RECORDS:.0f}", str(8 * floats)]  # fmt: skip


def _sampling() -> Table:
    rows = []
    for label, policy in (
        ("random, rate 0.1", LoggingPolicy(Mode.METADATA, 0.1)),
        ("by key, rate 0.1", LoggingPolicy(Mode.METADATA, 0.1, sampling_key="user")),
    ):
        if policy.sampling_key:
            kept = sum(policy.samples_key(f"user-{n}") for n in range(SAMPLED_CALLS))
        else:
            kept = sum(policy.samples() for _ in range(SAMPLED_CALLS))
        share = kept / SAMPLED_CALLS
        rows.append([label, str(SAMPLED_CALLS), str(kept), f"{share:.4f}",
                     "yes" if abs(share - 0.1) <= 0.01 else "NO"])  # fmt: skip
    return Table(["sampling", "calls", "recorded", "share", "within ±1%"], rows)


def _listing(root: Path) -> Table:
    rows = []
    written = 0
    policy = LoggingPolicy(Mode.METADATA)
    hours = 24
    now = time.time()
    for size in LIST_SIZES:
        # Grow the same log: older hours fill first, 10,000 records per file.
        while written < size:
            batch = []
            for n in range(written, min(written + 10_000, size)):
                moment = now - (hours * 3600) * (1 - n / LIST_SIZES[-1])
                request = service_pb2.ModelInferRequest(id=f"r{n}").SerializeToString()
                batch.append(Capture(moment, "m", 1, "local", None, policy, request, None, "OK",
                                     "", 0.001))  # fmt: skip
            log_files.write(root, batch)
            written += len(batch)
        first, deep = [], []
        for _ in range(PAGES):
            began = time.perf_counter()
            _, after = read_page(root, LogQuery(("m",)), None, 100)
            first.append(time.perf_counter() - began)
            for _ in range(9):
                _, after = read_page(root, LogQuery(("m",)), after, 100)
            began = time.perf_counter()
            read_page(root, LogQuery(("m",)), after, 100)
            deep.append(time.perf_counter() - began)
        files = len(LogStore.of(root).files())
        rows.append([f"{size:,}", str(files), f"{statistics.median(first) * 1000:.1f}",
                     f"{statistics.median(deep) * 1000:.1f}"])  # fmt: skip
    return Table(["records in the log", "files", "p50 first page ms", "p50 page 11 ms"], rows)
