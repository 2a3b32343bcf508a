"""The deployment lifecycle over scripted Triton clients: one lock per Triton
model name, and reads of the deployment made under it; the database's named
locks across processes; the reconciler's back-off on a failing load; loads in
the background (LOADING), their deadline, and deleting a wedged one."""

from __future__ import annotations

import asyncio
from pathlib import Path

import peewee as pw
import pytest
from google.protobuf import text_format

from mlserve.core.aio import Backoff
from mlserve.core.errors import FailedPrecondition, InvalidArgument, NotFound
from mlserve.core.paging import PageTokens
from mlserve.deploy.fleet import Fleet
from mlserve.deploy.lifecycle import Deployments, Placement, Wanted
from mlserve.storage import db, tables
from mlserve.storage.repository import LocalRepository
from tests.support.models import add_model_config
from tests.support.scripted_triton import ScriptedTritons, scripted_fleet


def add_versions(name: str, count: int) -> None:
    model = tables.Model.create(name=name)
    config = text_format.MessageToString(add_model_config(name))
    for number in range(1, count + 1):
        tables.ModelVersion.create(
            model=model, version=number, sha256=f"{number:064d}", size_bytes=0, files="[]",
            config=config, upload_id=f"u-{name}-{number}",
        )  # fmt: skip


class WatchedLock(asyncio.Lock):
    """An asyncio lock that tells when it is taken, and when someone waits for it."""

    def __init__(self) -> None:
        super().__init__()
        self.taken = asyncio.Event()
        self.waited = asyncio.Event()

    async def acquire(self) -> bool:
        if self.locked():
            self.waited.set()
        acquired = await super().acquire()
        self.taken.set()
        return acquired


def test_unload_model_reads_the_deployment_under_the_lock(
    store_db: pw.Database, tmp_path: Path
) -> None:
    """An UnloadModel that waited for an update keeps the update's version."""
    add_versions("m", 2)

    async def scenario() -> tuple[int, list[str]]:
        tritons = ScriptedTritons()
        fleet = await scripted_fleet(tritons, "a", "b")
        repository = LocalRepository(
            tmp_path / "repository", tmp_path / "staging", tmp_path / "blobs"
        )
        deployments = Deployments(fleet, repository, PageTokens(b"k" * 32))
        await deployments.create(Wanted(model="m", version=1, placement=Placement(["a", "b"])))
        lock = deployments._locks["m"] = WatchedLock()
        release = tritons["a"].hold("load")
        update = asyncio.create_task(deployments.update("m", 2, None))
        await lock.taken.wait()  # the update holds the lock (its loads wait)
        unload = asyncio.create_task(deployments.unload_model("m", "b"))
        await lock.waited.wait()  # the unload waits for the update
        release.set()
        await update
        await unload
        record = await deployments.get("m")
        return record.version, record.servers

    assert asyncio.run(scenario()) == (2, ["a"])


def test_named_locks_keep_a_second_holder_out(store_db: pw.Database) -> None:
    async def scenario() -> tuple[bool, bool, bool]:
        async with db.named_locks(["m", "p"]) as first:
            async with db.named_locks(["p"], wait=False) as second:
                pass
            async with db.named_locks(["other"], wait=False) as unrelated:
                pass
        async with db.named_locks(["p"], wait=False) as after:
            pass
        return first and unrelated and after, second, first

    held, second, _ = asyncio.run(scenario())
    assert held
    # PostgreSQL's advisory locks keep the second holder out; SQLite has one writer.
    assert second == isinstance(store_db, pw.SqliteDatabase)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_waiting_holder_goes_on_once_the_first_lets_go(store_db: pw.Database) -> None:
    async def scenario() -> list[str]:
        order: list[str] = []
        first_holds = asyncio.Event()

        async def first() -> None:
            async with db.named_locks(["m"]):
                first_holds.set()
                order.append("first holds")
                await asyncio.sleep(0.3)  # the second asks meanwhile
                order.append("first lets go")

        async def second() -> None:
            await first_holds.wait()
            async with db.named_locks(["m"]):
                order.append("second holds")

        await asyncio.gather(first(), second())
        return order

    assert asyncio.run(scenario()) == ["first holds", "first lets go", "second holds"]


def test_the_reconciler_backs_off_a_failing_load(store_db: pw.Database, tmp_path: Path) -> None:
    """A deployment whose load keeps failing is tried again after 2, 4, 8 … seconds of
    the lifecycle's clock, not every round; once a load works it is retried no more."""
    add_versions("m", 1)
    now = [0.0]

    async def scenario() -> list[int]:
        tritons = ScriptedTritons()
        fleet = await scripted_fleet(tritons, "a")
        repository = LocalRepository(
            tmp_path / "repository", tmp_path / "staging", tmp_path / "blobs"
        )
        deployments = Deployments(
            fleet,
            repository,
            PageTokens(b"k" * 32),
            retry=Backoff(2.0, 300.0),
            clock=lambda: now[0],
        )
        triton = tritons["a"]
        triton.load_errors["m"] = FailedPrecondition("the model is broken")
        created = await deployments.create(Wanted(model="m", version=1), wait=True)
        assert created.state == "FAILED"
        loads = []
        for at in (0.5, 1.9, 2.0, 3.0, 5.9, 6.0, 13.9):  # failed at 0: again at 2, 6, 14
            now[0] = at
            await deployments.reconcile_server("a")
            loads.append(triton.calls.count(("load", "m")))
        del triton.load_errors["m"]
        now[0] = 14.0
        await deployments.reconcile_server("a")
        assert (await deployments.get("m")).state == "READY"
        now[0] = 15.0
        await deployments.reconcile_server("a")
        loads.append(triton.calls.count(("load", "m")))
        return loads

    assert asyncio.run(scenario()) == [1, 1, 2, 2, 2, 3, 3, 4]


def lifecycle(fleet: Fleet, tmp_path: Path, load_timeout: float = 120.0) -> Deployments:
    repository = LocalRepository(tmp_path / "repository", tmp_path / "staging", tmp_path / "blobs")
    return Deployments(fleet, repository, PageTokens(b"k" * 32), load_timeout=load_timeout)


def test_create_answers_loading_and_the_load_goes_on_in_the_background(
    store_db: pw.Database, tmp_path: Path
) -> None:
    add_versions("m", 1)

    async def scenario() -> tuple[str, list[str], str, str]:
        tritons = ScriptedTritons()
        deployments = lifecycle(await scripted_fleet(tritons, "a", "b"), tmp_path)
        release = tritons["a"].hold("load")  # every load waits: a slow initialize()
        created = await deployments.create(Wanted(model="m", placement=Placement(["a", "b"])))
        while_loading = (await deployments.get("m")).state
        release.set()
        settled = await deployments.settled("m")
        return created.state, [t.state for t in created.targets], while_loading, settled.state

    assert asyncio.run(scenario()) == ("LOADING", ["LOADING", "LOADING"], "LOADING", "READY")


def test_wait_answers_once_the_load_finished(store_db: pw.Database, tmp_path: Path) -> None:
    add_versions("m", 2)

    async def scenario() -> tuple[str, str, str]:
        tritons = ScriptedTritons()
        deployments = lifecycle(await scripted_fleet(tritons, "a"), tmp_path)
        created = await deployments.create(Wanted(model="m", version=1), wait=True)
        updated = await deployments.update("m", 2, None, wait=True)
        added = await deployments.load_model("m", 2, "a", wait=True)
        return created.state, updated.state, added.state

    assert asyncio.run(scenario()) == ("READY", "READY", "READY")


@pytest.mark.parametrize("own_timeout", [0.0, 0.05])
def test_a_load_past_its_deadline_is_failed_and_the_server_stays_ready(
    store_db: pw.Database, tmp_path: Path, own_timeout: float
) -> None:
    """The server's default deadline, or the deployment's own: FAILED with the reason,
    the server READY, and what Triton was loading unloaded."""
    add_versions("m", 1)

    async def scenario() -> tuple[str, str, str, bool]:
        tritons = ScriptedTritons()
        fleet = await scripted_fleet(tritons, "a")
        deployments = lifecycle(fleet, tmp_path, load_timeout=0.05 if not own_timeout else 120)
        tritons["a"].hold("load")  # never released: a wedged load
        await deployments.create(Wanted(model="m", load_timeout=own_timeout))
        record = await deployments.settled("m")
        await asyncio.wait_for(tritons["a"].called("unload", "m"), 30)  # in the background
        server = await fleet.get("a")
        return record.state, record.targets[0].message, server.status.state, True

    assert asyncio.run(scenario()) == ("FAILED", "load did not finish in 0.05 s", "READY", True)


def test_delete_abandons_a_wedged_load(store_db: pw.Database, tmp_path: Path) -> None:
    """DeleteDeployment answers while Triton's load still hangs; the model is gone."""
    add_versions("m", 1)

    async def scenario() -> tuple[bool, list[tuple[str, str]]]:
        tritons = ScriptedTritons()
        deployments = lifecycle(await scripted_fleet(tritons, "a"), tmp_path)
        release = tritons["a"].hold("load")
        await deployments.create(Wanted(model="m"))
        await asyncio.wait_for(tritons["a"].called("load", "m"), 30)  # in Triton's hands
        await deployments.delete("m")
        try:
            await deployments.settled("m")
            gone = False
        except NotFound:
            gone = True
        await asyncio.wait_for(tritons["a"].called("unload", "m"), 30)  # quietly, later
        release.set()
        return gone, [call for call in tritons["a"].calls if call[1] == "m"]

    assert asyncio.run(scenario()) == (True, [("load", "m"), ("unload", "m")])


@pytest.mark.parametrize("timeout", [-1.0, float("nan"), float("inf")])
def test_a_bad_load_timeout_is_refused_and_nothing_is_written(
    store_db: pw.Database, tmp_path: Path, timeout: float
) -> None:
    add_versions("m", 1)

    async def scenario() -> None:
        tritons = ScriptedTritons()
        deployments = lifecycle(await scripted_fleet(tritons, "a"), tmp_path)
        with pytest.raises(InvalidArgument, match="load_timeout_seconds"):
            await deployments.create(Wanted(model="m", load_timeout=timeout))
        assert ("load", "m") not in tritons["a"].calls

    asyncio.run(scenario())
    assert tables.Deployment.select().count() == 0
