"""A stream request to a cold on-demand model waits for its load no longer than the
stream's deadline: a load that never finishes answers that request with the
deadline's error, and the stream ends (no Triton is reached: the load is scripted)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable

import peewee as pw
from tritonclient.grpc import service_pb2

from mlserve.access.keys import Access
from mlserve.core.paging import PageTokens
from mlserve.deploy.fleet import Fleet
from mlserve.gateway import wire
from mlserve.gateway.forwarding import Forwarder
from mlserve.gateway.router import Router
from mlserve.gateway.stats import InferenceStats


class ShortDeadline:
    """A stream whose client left it a moment (the load below never ends)."""

    def time_remaining(self) -> float | None:
        return 0.05

    def invocation_metadata(self) -> Iterable[tuple[str, str | bytes]] | None:
        return ()


def test_a_stream_request_waits_for_a_cold_load_only_within_the_deadline(
    store_db: pw.Database,
) -> None:
    # store_db: the wait holds a busy mark, which is written to the store.
    async def scenario() -> list[str]:
        fleet = Fleet(PageTokens(b"k" * 32))
        forwarder = Forwarder(Router(fleet), fleet, InferenceStats(), Access())
        loads: list[str] = []

        async def never_loads(model: str) -> bool:
            loads.append(model)
            await asyncio.Event().wait()
            return True

        forwarder.load_on_demand(never_loads)

        async def requests() -> AsyncIterator[bytes]:
            yield wire.encode(service_pb2.ModelInferRequest(model_name="cold"))

        answers = [
            service_pb2.ModelStreamInferResponse.FromString(response).error_message
            async for response in forwarder.stream(requests(), ShortDeadline())
        ]
        assert loads == ["cold"]
        return answers

    assert asyncio.run(scenario()) == [
        "model 'cold' is loading on demand and was not ready within the call's deadline; retry"
    ]
