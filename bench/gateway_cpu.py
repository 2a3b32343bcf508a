"""The gateway's CPU per call at concurrency 1: this checkout against
earlier revisions of MLServe, side by side in one run.

Each revision's ``mlserve/`` package is taken with ``git archive`` and run
from a temporary directory (``PYTHONPATH``; ``PYTHONSAFEPATH`` keeps the
checkout's own package out of the way; its generated stubs and client
package come from the same revision), with the same venv, the same client
and each its own embedded Triton. In interleaved rounds each MLServe is
first left idle (its CPU per second then is the background: health rounds,
the log writer's wake-ups), then loaded with the 1x4 FP32 "add" model at
c=1 (``tritonclient.grpc.aio``), then with two 4 MiB inputs at c=1. CPU per
call is the MLServe process's CPU (all threads, ``/proc/<pid>/stat``) over
the calls answered; "per call without the background" subtracts the idle
rate for the same seconds, since at c=1 a fixed cost per second is spread
over few calls.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry
from tritonclient.grpc import service_pb2

from bench.common import RESULTS_DIR, MLServeProcess, Report, Table, cpu_seconds
from bench.gateway import load
from mlserve.access import rules
from mlserve.access.rules import Principal
from mlserve.core.paging import PageTokens
from mlserve.deploy.fleet import READY, Fleet, ServerStatus
from mlserve.gateway import wire
from mlserve.gateway.router import Route, Router
from mlserve.gateway.stats import InferenceStats
from mlserve.monitor import InferenceLog, LogSettings
from tests.support.models import upload_add
from tests.support.tritons import deploy

DEFAULT_SECONDS = 4.0
DEFAULT_ROUNDS = 3
IDLE_SECONDS = 3.0
LARGE_ELEMENTS = 1024 * 1024  # FP32 per input: 4 MiB each, two inputs
# The last commit before the inference log and the per-call version pin landed.
DEFAULT_AGAINST = ("208dfbe",)
ROOT = Path(__file__).resolve().parents[1]
# The server, its generated stubs and the client its CLI is built on, all of one revision.
_PACKAGES = (Path("mlserve"), Path("generated/mlserve_api"), Path("clients/python/mlserve_client"))


@dataclass
class _Variant:
    label: str
    server: MLServeProcess
    rates: list[float] = field(default_factory=list)
    per_call: list[float] = field(default_factory=list)  # µs of CPU per call
    idle: list[float] = field(default_factory=list)  # ms of CPU per second, idle
    large: list[float] = field(default_factory=list)  # µs of CPU per 2x4 MiB call

    def measure(self, seconds: float) -> None:
        assert self.server.process is not None
        pid = self.server.process.pid
        before = cpu_seconds(pid)
        time.sleep(IDLE_SECONDS)
        idle_rate = (cpu_seconds(pid) - before) / IDLE_SECONDS
        headers = {"authorization": f"Bearer {self.server.key}"}
        before = cpu_seconds(pid)
        run = asyncio.run(load(self.server.address, headers, 4, 1, seconds))
        used = cpu_seconds(pid) - before
        calls = max(run.rate * seconds, 1)
        self.rates.append(run.rate)
        self.per_call.append(used / calls * 1e6)
        self.idle.append(idle_rate * 1000)
        before = cpu_seconds(pid)
        run = asyncio.run(load(self.server.address, headers, LARGE_ELEMENTS, 1, seconds))
        self.large.append((cpu_seconds(pid) - before) / max(run.rate * seconds, 1) * 1e6)

    def row(self, seconds: float) -> list[str]:
        median = statistics.median
        rate, per_call, idle = median(self.rates), median(self.per_call), median(self.idle)
        # The background's share of each call: idle CPU per second over calls per second.
        without = per_call - idle / 1000 / rate * 1e6
        return [self.label, f"{rate:.0f}", f"{per_call:.0f}", f"{idle:.1f}", f"{without:.0f}",
                f"{min(self.per_call):.0f}-{max(self.per_call):.0f}",
                f"{median(self.large):.0f}"]  # fmt: skip


def run(
    against: tuple[str, ...] = DEFAULT_AGAINST,
    seconds: float = DEFAULT_SECONDS,
    rounds: int = DEFAULT_ROUNDS,
) -> Report:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=RESULTS_DIR) as work:
        variants: list[_Variant] = []
        try:
            for revision in against:
                code = Path(work) / f"code-{revision}"
                code.mkdir()
                archive = subprocess.run(
                    ["git", "-C", str(ROOT), "archive", revision, *_PACKAGES],
                    check=True, capture_output=True,
                ).stdout  # fmt: skip
                subprocess.run(["tar", "-x", "-C", str(code)], input=archive, check=True)
                path = ":".join(str(code / package.parent) for package in _PACKAGES)
                environ = {"PYTHONPATH": path, "PYTHONSAFEPATH": "1"}
                server = MLServeProcess(Path(work) / f"home-{revision}", env=environ)
                variants.append(_Variant(revision, server))
            variants.append(_Variant("this checkout", MLServeProcess(Path(work) / "home")))
            for variant in variants:
                variant.server.start()
                stubs = variant.server.stubs()
                upload_add(stubs, "add")
                deploy(stubs, "add")
                stubs.channel.close()
            for variant in variants:  # warm each connection path once
                headers = {"authorization": f"Bearer {variant.server.key}"}
                asyncio.run(load(variant.server.address, headers, 4, 1, 1.0))
            for _ in range(rounds):
                for variant in variants:
                    variant.measure(seconds)
        finally:
            for variant in variants:
                variant.server.stop()
    header = ["code", "req/s", "CPU us/call", "idle CPU ms/s", "us/call without the background",
              "CPU us/call range", "4 MiB c=1 CPU us/call"]  # fmt: skip
    notes = [
        f"{rounds} interleaved rounds per revision: {IDLE_SECONDS:.0f} s idle, then "
        f"{seconds:.0f} s of 1x4 FP32 at c=1, then {seconds:.0f} s of 2 x 4 MiB FP32 at c=1; "
        "medians",
        "each MLServe with its own embedded Triton, health interval 0.5 s (as in the tests)",
    ]
    table = Table(header, [variant.row(seconds) for variant in variants])
    pieces = Table(["hot-path piece (this checkout, in process)", "CPU us/call"], _pieces())
    notes.append(
        "pieces: the real classes on a 1x4 FP32 request, best of 5 loops of 20,000 calls "
        "(the writer: per record of a batch); grpc's own work is not among them"
    )
    return Report(
        "gateway-cpu: CPU per small call at c=1, revisions side by side", [table, pieces], notes
    )


def _per_call(work: Callable[[], object], calls: int = 20_000) -> float:
    best = math.inf
    for _ in range(5):
        began = time.process_time()
        for _ in range(calls):
            work()
        best = min(best, (time.process_time() - began) / calls)
    return best * 1e6


def _pieces() -> list[list[str]]:
    """What each step of a small logged call costs, timed on the real objects."""
    request, response = _small_call()
    tokens = PageTokens(b"0" * 32)
    fleet = Fleet(tokens)
    fleet._status["local"] = ServerStatus(READY)  # as a health round would have seen it
    router = Router(fleet)
    route = Route("add", 1, ("local",))
    stats = InferenceStats()
    principal = Principal("bench", "admin", rules.ADMIN, 1, 1, {1: "owner"})
    with tempfile.TemporaryDirectory(dir=RESULTS_DIR) as work:
        log = InferenceLog(LogSettings(Path(work), queue_size=10**7), CollectorRegistry(), tokens)

        def capture() -> None:
            log.capture("add", 1, "local", principal, request, response, "OK", "",
                        time.time(), 0.001)  # fmt: skip

        def in_flight() -> None:
            with router.in_flight("local"):
                pass

        rows = [
            ("auth: the call's rule (rules.authorize)",
             lambda: rules.authorize("/inference.GRPCInferenceService/ModelInfer", principal)),
            ("routing: model and version from the bytes (wire)",
             lambda: wire.model_name_and_version(request)),
            ("routing: choose the replica (Router.choose_routed)",
             lambda: router.choose_routed(route, "", frozenset())),
            ("routing: count it in flight (Router.in_flight)", in_flight),
            ("version pin (wire.with_version)", lambda: wire.with_version(request, 1)),
            ("stats (InferenceStats.record)", lambda: stats.record("add", 1, True, 0.001)),
            ("log capture, mode metadata (InferenceLog.capture)", capture),
        ]  # fmt: skip
        timed = [[label, f"{_per_call(work):.2f}"] for label, work in rows]
        log._queue.clear()
        for batch in (300, 1000):
            for _ in range(batch):
                capture()
            began = time.process_time()
            log.flush()
            per_record = (time.process_time() - began) / batch * 1e6
            timed.append([f"log writer thread, per record of {batch} (decode + Parquet)",
                          f"{per_record:.1f}"])  # fmt: skip
    return timed


def _small_call() -> tuple[bytes, bytes]:
    """A ModelInferRequest of the add model (two 1x4 FP32) and its response, serialized."""
    four = np.ones(4, np.float32).tobytes()
    request = service_pb2.ModelInferRequest(model_name="add")
    response = service_pb2.ModelInferResponse(model_name="add", model_version="1")
    for message, names, raws in (
        (request.inputs, ("INPUT0", "INPUT1"), request.raw_input_contents),
        (response.outputs, ("OUTPUT0", "OUTPUT1"), response.raw_output_contents),
    ):
        for name in names:
            message.add(name=name, datatype="FP32", shape=[4])
            raws.append(four)
    return request.SerializeToString(), response.SerializeToString()
