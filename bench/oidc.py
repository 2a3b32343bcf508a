"""What an OIDC token costs the gateway beside an API key: the same admin's
inference with a JWT (RS256, from a test issuer on loopback) and with a key,
c=16, one MLServe, one client process, interleaved rounds.

Both take the same path after the first call of each second: the bearer
value's cached decision (``Access``, 1 s, dropped on any change). Every
second the token's signature, claims, identity and user are checked again,
as a key's row and user are read again.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from bench.common import RESULTS_DIR, MLServeProcess, Report, Table
from bench.gateway import load
from tests.support.issuer import AUDIENCE, Issuer
from tests.support.models import upload_add
from tests.support.tritons import deploy

DEFAULT_SECONDS = 4.0
DEFAULT_ROUNDS = 1
CONCURRENCY = 16
ELEMENTS = 4


def run(seconds: float = DEFAULT_SECONDS, rounds: int = DEFAULT_ROUNDS) -> Report:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    issuer = Issuer()
    with tempfile.TemporaryDirectory(dir=RESULTS_DIR) as work:
        options = ("--oidc-issuer", issuer.url, "--oidc-audience", AUDIENCE)
        server = MLServeProcess(Path(work) / "home", *options).start()
        try:
            stubs = server.stubs()
            upload_add(stubs, "add")
            deploy(stubs, "add")
            stubs.channel.close()
            token = issuer.token("bench-admin", lifetime=3600, realm_access={"roles": ["admin"]})
            columns = {
                "API key": {"authorization": f"Bearer {server.key}"},
                "JWT": {"authorization": f"Bearer {token}"},
            }
            rates: dict[str, list[float]] = {name: [] for name in columns}
            for _ in range(rounds):
                for name, headers in columns.items():
                    result = asyncio.run(
                        load(server.address, headers, ELEMENTS, CONCURRENCY, seconds)
                    )
                    rates[name].append(result.rate)
        finally:
            server.stop()
            issuer.stop()
    key, jwt = (sum(rates[name]) / rounds for name in columns)
    header = ["case", "API key req/s", "JWT req/s", "JWT / key"]
    rows = [
        [f"small 1x{ELEMENTS}, c={CONCURRENCY}", f"{key:.0f}", f"{jwt:.0f}", f"{jwt / key:.3f}"]
    ]
    notes = [
        f"{rounds} round(s) of {seconds:.0f} s per column, key first; one MLServe with its "
        "embedded Triton, one client process (tritonclient.grpc.aio); the machine was shared "
        "with other work",
    ]
    return Report("oidc: gateway throughput with a JWT vs an API key", [Table(header, rows)], notes)
