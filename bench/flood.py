"""An honest caller during a flood of wrong secrets for one known key id.

One MLServe (``--no-embedded-triton``: the calls here need no Triton). An
honest caller makes ``GetModel`` calls one after another with a valid key
and times each one; ``FLOOD_THREADS`` threads in another process (so their
client work does not share the honest caller's interpreter) send
``ListModels`` with wrong secrets for another user's key id, as fast as the
server answers. The honest caller's latencies are measured without the
flood, during it, and without it again, in one run, and the p99 during the
flood is compared with the p99 without it.

The honest key's decision is cached for a second, so about once a second
the honest call reads its key, user and memberships again: that read is what
a flood stalled when hashing shared the database calls' threads.
"""

from __future__ import annotations

import multiprocessing
import statistics
import tempfile
import threading
import time
from pathlib import Path

import grpc

from bench.common import RESULTS_DIR, MLServeProcess, Report, Table
from mlserve.access.keys import BACKOFF_SECONDS, FAILURES_BEFORE_BACKOFF, HASHING_THREADS
from mlserve_api.v1 import model_pb2, model_pb2_grpc
from tests.support.users import make_user

DEFAULT_SECONDS = 8.0
FLOOD_THREADS = 64
MODEL = "flood-target"


def run(seconds: float = DEFAULT_SECONDS) -> Report:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=RESULTS_DIR) as work:
        server = MLServeProcess(Path(work) / "home", "--no-embedded-triton")
        server.start(wait_for_triton=False)
        try:
            stubs = server.stubs()
            stubs.models.CreateModel(
                model_pb2.CreateModelRequest(model=model_pb2.Model(name=MODEL)),
                metadata=stubs.auth,
            )
            victim = make_user(stubs, "flood-victim", "viewer").key
            honest = model_pb2_grpc.ModelServiceStub(stubs.channel)
            quiet = _honest_calls(honest, stubs.auth, seconds)
            flooded, refused = _during_flood(server.address, victim, honest, stubs.auth, seconds)
            after = _honest_calls(honest, stubs.auth, seconds)
            stubs.channel.close()
        finally:
            server.stop()
    without = quiet + after
    rows = [
        _row("without flood (before and after)", without),
        _row(f"during flood ({FLOOD_THREADS} threads)", flooded),
    ]
    ratio = _p99(flooded) / _p99(without)
    notes = [
        f"p99 during the flood / p99 without it: {ratio:.2f}x; "
        f"{refused} wrong-secret calls refused during the flood "
        f"({refused / seconds:.0f}/s)",
        f"{seconds:.0f} s per phase, one run, one MLServe; the flood runs in its own process; "
        "the machine was shared with other work",
        f"hashing: {HASHING_THREADS} threads of its own; after {FAILURES_BEFORE_BACKOFF} wrong "
        f"secrets in a row a key id is refused without hashing for {BACKOFF_SECONDS:.0f} s "
        "after each hashed failure, and each refusal is answered when the back-off ends",
    ]
    header = ["honest GetModel", "calls", "p50 ms", "p99 ms", "max ms"]
    return Report("flood: honest calls during a wrong-secret flood", [Table(header, rows)], notes)


def _honest_calls(
    stub: model_pb2_grpc.ModelServiceStub, auth: list[tuple[str, str]], seconds: float
) -> list[float]:
    """Seconds per GetModel call, one after another, for ``seconds``."""
    request = model_pb2.GetModelRequest(name=MODEL)
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.perf_counter()
        stub.GetModel(request, metadata=auth, timeout=60)
        latencies.append(time.perf_counter() - started)
    return latencies


def _during_flood(
    address: str,
    victim: str,
    honest: model_pb2_grpc.ModelServiceStub,
    auth: list[tuple[str, str]],
    seconds: float,
) -> tuple[list[float], int]:
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    ready = context.Barrier(2)
    refused = context.Value("q", 0)
    flood = context.Process(target=_flood, args=(address, victim, stop, ready, refused))
    flood.start()
    try:
        ready.wait(60)
        time.sleep(0.5)  # let every flood thread be under way
        latencies = _honest_calls(honest, auth, seconds)
    finally:
        stop.set()
        flood.join(60)
    return latencies, int(refused.value)


def _flood(address: str, victim: str, stop: object, ready: object, refused: object) -> None:
    """In a child process: FLOOD_THREADS threads of wrong secrets for ``victim``'s key id."""
    prefix = victim.split("_")[1]
    channel = grpc.insecure_channel(address)
    stub = model_pb2_grpc.ModelServiceStub(channel)
    request = model_pb2.ListModelsRequest(page_size=1)
    lock = threading.Lock()

    def attack(thread: int) -> None:
        n = 0
        while not stop.is_set():  # type: ignore[attr-defined]
            key = f"mls_{prefix}_{thread:06d}{n:037d}"
            n += 1
            try:
                stub.ListModels(request, metadata=[("authorization", f"Bearer {key}")], timeout=60)
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.UNAUTHENTICATED:
                    raise
                with lock:
                    refused.value += 1  # type: ignore[attr-defined]
            else:
                raise AssertionError("a wrong secret was accepted")

    threads = [
        threading.Thread(target=attack, args=(i,), daemon=True) for i in range(FLOOD_THREADS)
    ]
    for thread in threads:
        thread.start()
    ready.wait(60)  # type: ignore[attr-defined]
    stop.wait()  # type: ignore[attr-defined]
    for thread in threads:
        thread.join(60)
    channel.close()


def _p99(latencies: list[float]) -> float:
    if len(latencies) < 2:  # a phase stalled into a call or two
        return max(latencies)
    return statistics.quantiles(latencies, n=100, method="inclusive")[98]


def _row(label: str, latencies: list[float]) -> list[str]:
    return [
        label,
        str(len(latencies)),
        f"{statistics.median(latencies) * 1000:.1f}",
        f"{_p99(latencies) * 1000:.1f}",
        f"{max(latencies) * 1000:.1f}",
    ]
