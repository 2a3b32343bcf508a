"""Triton's share of gateway latency, from Triton's own statistics.

Triton keeps cumulative totals per model version (successful inferences and
the nanoseconds they took, queue and compute included), not a distribution.
Each health round reads them from every server a model is routed to and adds
what grew since the last round to two counters, so
``rate(mlserve_triton_inference_seconds_total) /
rate(mlserve_triton_inference_requests_total)`` beside
``mlserve_gateway_latency_seconds`` shows how much of a call is Triton's.
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter

from mlserve.core.errors import MLServeError
from mlserve.deploy.fleet import READY, Fleet
from mlserve.gateway.router import Router

log = logging.getLogger(__name__)

Totals = dict[int, tuple[int, int]]  # version -> (count, ns), as Triton reports them


class TritonShare:
    def __init__(self, registry: CollectorRegistry) -> None:
        self._seconds = Counter(
            "mlserve_triton_inference_seconds",
            "Time Triton spent on successful inferences (queue and compute), from its statistics",
            ["model", "version"],
            registry=registry,
        )
        self._requests = Counter(
            "mlserve_triton_inference_requests",
            "Successful inferences as Triton counted them",
            ["model", "version"],
            registry=registry,
        )
        self._last: dict[tuple[str, str], Totals] = {}

    def add(self, server: str, model: str, totals: Totals) -> None:
        """Count what grew since ``server`` last reported ``model``; the first report is the
        baseline (a Triton restarted since is a new baseline too)."""
        previous = self._last.get((server, model))
        self._last[(server, model)] = totals
        if previous is None:
            return
        for version, (count, nanoseconds) in totals.items():
            old_count, old_ns = previous.get(version, (0, 0))
            if count < old_count or nanoseconds < old_ns:
                continue  # restarted: counted from here on
            if count > old_count:
                self._requests.labels(model, str(version)).inc(count - old_count)
                self._seconds.labels(model, str(version)).inc((nanoseconds - old_ns) / 1e9)

    async def poll(self, router: Router, fleet: Fleet) -> None:
        """Read every routed model's totals from the ready servers it is routed to."""
        for route in router.routes():
            for server in route.servers:
                client = fleet.cached_client(server)
                if client is None or fleet.status(server).state != READY:
                    continue
                try:
                    self.add(server, route.model, await client.inference_totals(route.model))
                except MLServeError as error:
                    log.debug("no statistics of %s from %s: %s", route.model, server, error)
