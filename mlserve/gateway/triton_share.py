"""Triton's share of gateway latency, from Triton's own statistics.

Triton keeps cumulative totals per model version (successful inferences and
the nanoseconds they took, queue and compute included), not a distribution,
and says nothing about a single request. Each health round (every
``--health-interval``) reads them from every server a model is routed to and:

- adds what grew to two counters (``mlserve_triton_inference_seconds_total``
  and ``…_requests_total``), for the mean over any range;
- observes, per server and version with traffic in the round, the round's mean
  Triton time per inference (time grown / inferences grown) in the histogram
  ``mlserve_triton_interval_mean_seconds``: a distribution of short-interval
  means, one observation per round, not of single requests;
- observes, per version with traffic in the round, Triton's time over the
  gateway's in the same round (``mlserve_triton_share_ratio``): how much of a
  call's time was spent in Triton, one observation per round;
- keeps, per model and server, what its queue time grew by in the round
  (``queue_growth``), for scaling hot on-demand models up
  (``Deployments.scale_up``).
"""

from __future__ import annotations

import logging
from collections import defaultdict

from prometheus_client import CollectorRegistry, Counter, Histogram

from mlserve.core.errors import MLServeError
from mlserve.deploy.fleet import READY, Fleet
from mlserve.deploy.placement import QueueGrowth
from mlserve.gateway.router import Router
from mlserve.gateway.stats import LATENCY_BUCKETS, InferenceStats

log = logging.getLogger(__name__)

Totals = dict[int, tuple[int, int, int]]  # version -> (count, ns, queue ns), as Triton reports
_SHARE_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)


class TritonShare:
    def __init__(self, registry: CollectorRegistry, stats: InferenceStats | None = None) -> None:
        self._stats = stats
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
        self._interval_mean = Histogram(
            "mlserve_triton_interval_mean_seconds",
            "Triton's mean time per successful inference (queue and compute) over one health "
            "interval, from the growth of its statistics; one observation per server, version "
            "and interval with traffic, not per request",
            ["model", "version"],
            registry=registry,
            buckets=LATENCY_BUCKETS,
        )
        self._share = Histogram(
            "mlserve_triton_share_ratio",
            "Triton's time over the gateway's for the calls of one health interval (Triton's "
            "statistics growth / the gateway's latency sum growth); one observation per "
            "version and interval with traffic, not per request",
            ["model", "version"],
            registry=registry,
            buckets=_SHARE_BUCKETS,
        )
        self._last: dict[tuple[str, str], Totals] = {}
        self._gateway_last: dict[tuple[str, int], tuple[int, float]] = {}
        self._queue_round: dict[tuple[str, str], QueueGrowth] = {}

    def queue_growth(self) -> dict[tuple[str, str], QueueGrowth]:
        """Per (model, server) read in the last round, what its successful inferences
        and their queue time grew by since the round before (every version)."""
        return dict(self._queue_round)

    def add(self, server: str, model: str, totals: Totals) -> dict[int, tuple[int, int]]:
        """Count what grew since ``server`` last reported ``model``; the first report is the
        baseline (a Triton restarted since is a new baseline too). Returns the growth per
        version: (inferences, nanoseconds)."""
        previous = self._last.get((server, model))
        self._last[(server, model)] = totals
        grown: dict[int, tuple[int, int]] = {}
        if previous is None:
            return grown
        queued = QueueGrowth(0, 0)
        for version, (count, nanoseconds, queue_ns) in totals.items():
            old_count, old_ns, old_queue_ns = previous.get(version, (0, 0, 0))
            if count < old_count or nanoseconds < old_ns or queue_ns < old_queue_ns:
                continue  # restarted: counted from here on
            if count > old_count:
                label = str(version)
                requests, spent = count - old_count, nanoseconds - old_ns
                queued = QueueGrowth(
                    queued.requests + requests, queued.queue_ns + queue_ns - old_queue_ns
                )
                grown[version] = (requests, spent)
                self._requests.labels(model, label).inc(requests)
                self._seconds.labels(model, label).inc(spent / 1e9)
                self._interval_mean.labels(model, label).observe(spent / requests / 1e9)
        self._queue_round[(model, server)] = queued
        return grown

    def share(self, model: str, grown: dict[int, tuple[int, int]]) -> None:
        """Observe Triton's share of each version's gateway time since the last round.

        ``grown`` is Triton's growth this round over every server. The gateway's
        totals are read every round, so a round without Triton traffic (or Triton's
        baseline round) moves the gateway's baseline too.
        """
        if self._stats is None:
            return
        for version in self._stats.versions(model):
            now = self._stats.latency_totals(model, version)
            # This process's totals start at zero, as the version's first calls do.
            before = self._gateway_last.get((model, version), (0, 0.0))
            self._gateway_last[(model, version)] = now
            requests, nanoseconds = grown.get(version, (0, 0))
            if not requests:
                continue
            gateway_seconds = now[1] - before[1]
            if now[0] > before[0] and gateway_seconds > 0:
                ratio = nanoseconds / 1e9 / gateway_seconds
                self._share.labels(model, str(version)).observe(ratio)

    async def poll(self, router: Router, fleet: Fleet) -> None:
        """Read every routed model's totals from the ready servers it is routed to."""
        self._queue_round = {}
        for route in router.routes():
            grown: defaultdict[int, tuple[int, int]] = defaultdict(lambda: (0, 0))
            for server in route.servers:
                client = fleet.cached_client(server)
                if client is None or fleet.status(server).state != READY:
                    continue
                try:
                    totals = await client.inference_totals(route.model)
                except MLServeError as error:
                    log.debug("no statistics of %s from %s: %s", route.model, server, error)
                    continue
                for version, (requests, nanoseconds) in self.add(
                    server, route.model, totals
                ).items():
                    count, spent = grown[version]
                    grown[version] = (count + requests, spent + nanoseconds)
            self.share(route.model, grown)
