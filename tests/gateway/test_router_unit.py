"""The router's choice of replica, over servers whose health comes from scripted
Triton clients: only ready replicas, the least busy first, turns on ties."""

from __future__ import annotations

import asyncio

import pytest

from mlserve.core.errors import FailedPrecondition, InvalidArgument, Unavailable
from mlserve.deploy.fleet import READY, Fleet
from mlserve.gateway.router import Route, Router
from mlserve.storage import tables
from tests.support.scripted_triton import ScriptedTritons, scripted_fleet

pytestmark = [
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
    pytest.mark.usefixtures("store_db"),
]
ROUTE = Route("m", 3, ("a", "b", "c"))


def fleet_with(tritons: ScriptedTritons, *down: str) -> Fleet:
    async def build() -> Fleet:
        fleet = await scripted_fleet(tritons, *ROUTE.servers)
        for name in down:
            tritons[name].ready = False
        await fleet.refresh_all()
        return fleet

    return asyncio.run(build())


def test_only_ready_replicas_are_chosen() -> None:
    router = Router(fleet_with(ScriptedTritons(), "a", "c"))
    choices = {router.choose_routed(ROUTE, "", frozenset()).server for _ in range(10)}
    assert choices == {"b"}
    with pytest.raises(Unavailable, match=r"no replica of model 'm' is reachable \(deployed on: a"):
        router.choose_routed(ROUTE, "", frozenset({"b"}))


def test_the_least_busy_replica_wins_and_equal_ones_take_turns() -> None:
    router = Router(fleet_with(ScriptedTritons()))

    def chosen() -> set[str]:
        return {router.choose_routed(ROUTE, "", frozenset()).server for _ in range(6)}

    assert chosen() == {"a", "b", "c"}
    with router.in_flight("a"), router.in_flight("b"):
        assert chosen() == {"c"}


def test_a_version_other_than_the_deployed_one_is_refused() -> None:
    router = Router(fleet_with(ScriptedTritons()))
    assert router.choose_routed(ROUTE, "3", frozenset()).version == 3
    with pytest.raises(FailedPrecondition, match="version 2 of model 'm' is not deployed"):
        router.choose_routed(ROUTE, "2", frozenset())
    with pytest.raises(
        InvalidArgument,
        match="from specified version string 'two': model_version must be a version number",
    ):
        router.choose_routed(ROUTE, "two", frozenset())


def test_a_route_with_nothing_loaded_is_read_again_before_it_is_refused() -> None:
    async def scenario() -> str:
        fleet = await scripted_fleet(ScriptedTritons(), "a")
        model = tables.Model.create(name="m")
        deployment = tables.Deployment.create(name="m", model=model, version=1)
        target = tables.DeploymentTarget.create(
            deployment=deployment, server=tables.Server.get(tables.Server.name == "a")
        )
        router = Router(fleet)
        await router.reload()  # a health round's reload, while "m" is loading
        route = router.route("m")
        assert route is not None
        assert route.servers == ()
        target.state = READY  # the load finished (written by another replica)
        target.save()
        return (await router.choose("m", "")).server

    assert asyncio.run(scenario()) == "a"
