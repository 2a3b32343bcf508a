"""What authentication costs the gateway: keyed vs keyless inference, same
process, same client (``tritonclient.grpc.aio``), interleaved rounds; and
what a refused wrong key costs.

MLServe runs with the hidden ``--bench-anonymous-gateway`` flag (loopback
only): a gateway call that sends no key at all is served without any access
check, while a call with a key takes the normal path (cached principal,
per-RPC rule, cached per-model decision). That is the only difference
between the two columns.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import grpc

from bench.common import RESULTS_DIR, MLServeProcess, Report, Table
from bench.gateway import load
from mlserve.access.keys import FAILURES_BEFORE_BACKOFF
from mlserve_api.v1 import model_pb2
from tests.support.mlserve import Stubs
from tests.support.models import upload_add
from tests.support.tritons import deploy

DEFAULT_SECONDS = 4.0
DEFAULT_ROUNDS = 3
# (label, FP32 elements per input, concurrency)
CASES = (("small 1x4, c=1", 4, 1), ("small 1x4, c=16", 4, 16))
# A known prefix is hashed FAILURES_BEFORE_BACKOFF times in a row, then backs
# off (bench/flood.py measures that): time only the hashed refusals.
WRONG_KEYS = {"unknown prefix": 1000, "known prefix, wrong secret": FAILURES_BEFORE_BACKOFF}


def run(seconds: float = DEFAULT_SECONDS, rounds: int = DEFAULT_ROUNDS) -> Report:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=RESULTS_DIR) as work:
        server = MLServeProcess(Path(work) / "home", "--bench-anonymous-gateway").start()
        try:
            stubs = server.stubs()
            upload_add(stubs, "add")
            deploy(stubs, "add")
            keyed = {"authorization": f"Bearer {server.key}"}
            rows: list[list[str]] = []
            for label, elements, concurrency in CASES:
                anonymous: list[float] = []
                authenticated: list[float] = []
                for _ in range(rounds):
                    for rates, headers in ((anonymous, {}), (authenticated, keyed)):
                        result = asyncio.run(
                            load(server.address, headers, elements, concurrency, seconds)
                        )
                        rates.append(result.rate)
                without, with_key = sum(anonymous) / rounds, sum(authenticated) / rounds
                rows.append([
                    label, f"{without:.0f}", f"{with_key:.0f}", f"{with_key / without:.3f}",
                    f"{(1 - with_key / without) * 100:+.1f}%",
                ])  # fmt: skip
            wrong = [[kind, str(count), f"{_wrong_keys(stubs, kind, count) * 1000:.2f}"]
                     for kind, count in WRONG_KEYS.items()]  # fmt: skip
            stubs.channel.close()
        finally:
            server.stop()
    header = ["case", "no key req/s", "with key req/s", "ratio", "auth cost"]
    notes = [
        f"{rounds} interleaved rounds of {seconds:.0f} s per column and case, averaged; "
        "one MLServe, one client process; the machine was shared with other work",
        "a refused key: unknown prefix = one indexed lookup, no hash; known prefix = one "
        "scrypt (N=2^14, r=8, p=1; on 2 threads of its own), for the first "
        f"{FAILURES_BEFORE_BACKOFF} in a row (then the key id backs off: python -m bench flood)",
    ]
    tables = [Table(header, rows), Table(["wrong key", "calls", "ms per refused call"], wrong)]
    return Report("auth: gateway throughput with and without a key", tables, notes)


def _wrong_keys(stubs: Stubs, kind: str, count: int) -> float:
    """Seconds per refused ListModels call with a wrong key of ``kind``."""
    prefix = stubs.key.split("_")[1]
    request = model_pb2.ListModelsRequest(page_size=1)
    started = time.perf_counter()
    for i in range(count):
        key = f"mls_{i:012x}_{'x' * 43}" if kind == "unknown prefix" else f"mls_{prefix}_{i:043d}"
        try:
            stubs.models.ListModels(request, metadata=[("authorization", f"Bearer {key}")])
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.UNAUTHENTICATED:
                raise
        else:
            raise AssertionError("a wrong key was accepted")
    elapsed = (time.perf_counter() - started) / count
    stubs.models.ListModels(request, metadata=stubs.auth)  # a good call still answers
    return elapsed
