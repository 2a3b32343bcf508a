"""The gateway's routing: which Triton serves a model right now.

Routes are the deployments whose target on a server loaded successfully,
kept in memory and reloaded whenever a deployment or a server's health
changes, so choosing a replica is a dictionary lookup. Among a model's ready
replicas the one with the fewest requests in flight wins (ties rotate): with
Python-backend models whose latency varies, least-outstanding keeps a slow
replica from piling up a queue that round robin would keep feeding.
"""

from __future__ import annotations

import itertools
import logging
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from mlserve.core.aio import Freshest
from mlserve.core.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from mlserve.deploy import targets
from mlserve.deploy.fleet import READY, Fleet
from mlserve.storage import tables
from mlserve.storage.db import in_thread

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Route:
    model: str
    version: int
    servers: tuple[str, ...]  # targets whose load succeeded


@dataclass(frozen=True)
class Choice:
    server: str
    version: int


class Router:
    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self._routes: Freshest[dict[str, Route]] = Freshest({})
        # Requests in flight per server, this process's: for least-outstanding.
        # (What on-demand eviction reads is shared by every process: deploy.busy.)
        self._outstanding: defaultdict[str, int] = defaultdict(int)
        self._turn = itertools.count()

    async def reload(self) -> None:
        """Read the routes from the store (call after any deployment change). Reloads
        overlap (the health round's, one after a change): one that began earlier never
        puts its older routes back over a later one's."""
        await self._routes.read(in_thread(_load_routes))

    def routes(self) -> list[Route]:
        return sorted(self._routes.value.values(), key=lambda route: route.model)

    def route(self, model: str) -> Route | None:
        return self._routes.value.get(model)

    async def choose(
        self, model: str, version: str, exclude: frozenset[str] = frozenset()
    ) -> Choice:
        """The ready replica to send ``model`` (at ``version``, "" for the deployed one) to.

        Reads the routes again first when memory has none for ``model`` or none
        loaded: perhaps it was just deployed, or its load just finished, through
        another replica on the same database (the health loop's reload may have
        seen it still loading).
        """
        route = self.route(model)
        if route is None or not route.servers:
            await self.reload()
            route = self.route(model)
        if route is None:
            await self._explain_missing(model)
            raise AssertionError("explained by raising")  # pragma: no cover
        return self.choose_routed(route, version, exclude)

    def choose_routed(self, route: Route, version: str, exclude: frozenset[str]) -> Choice:
        """``choose`` for a model known to be routed: no awaiting on the hot path."""
        model = route.model
        if version and version != str(route.version):
            if not version.isdigit():
                # Triton's own words first: its clients look for them.
                raise InvalidArgument(
                    f"failed to get model version from specified version string {version!r}: "
                    "model_version must be a version number, or empty for the deployed one"
                )
            raise FailedPrecondition(
                f"version {version} of model {model!r} is not deployed; "
                f"version {route.version} is (leave model_version empty to use it)"
            )
        ready = [
            server
            for server in route.servers
            if server not in exclude and self.fleet.status(server).state == READY
        ]
        if not ready:
            raise Unavailable(
                f"no replica of model {model!r} is reachable "
                f"(deployed on: {', '.join(route.servers) or 'none loaded'})"
            )
        if len(ready) == 1:
            chosen = ready[0]
        else:
            # Rotate the starting point so equal loads take turns.
            start = next(self._turn) % len(ready)
            rotated = ready[start:] + ready[:start]
            chosen = min(rotated, key=self._outstanding.__getitem__)
        return Choice(chosen, route.version)

    @contextmanager
    def in_flight(self, server: str) -> Iterator[None]:
        """Count a request in flight to ``server`` for the block."""
        self._outstanding[server] += 1
        try:
            yield
        finally:
            self._outstanding[server] -= 1

    async def _explain_missing(self, model: str) -> None:
        exists = await in_thread(
            lambda: (
                tables.Model.select().where(tables.Model.name == model).exists()
                or tables.Pipeline.select().where(tables.Pipeline.name == model).exists()
            )
        )()
        if not exists:
            raise NotFound(f"model {model!r} does not exist")
        raise FailedPrecondition(
            f"model {model!r} is not deployed: deploy it first (mlserve deploy {model})"
        )


def _load_routes() -> dict[str, Route]:
    servers: defaultdict[str, list[str]] = defaultdict(list)
    versions: dict[str, int] = {}
    # A deployed pipeline is routed by its name to its ensemble; its members
    # too, for per-step statistics and for calling a step alone. A member
    # deployed on its own comes first and keeps its version.
    for entry in targets.served():
        versions.setdefault(entry.model, entry.version)
        if entry.ready and entry.server not in servers[entry.model]:
            servers[entry.model].append(entry.server)
    return {
        name: Route(name, version, tuple(servers.get(name, ())))
        for name, version in versions.items()
    }
