"""The supervisor's decisions over a scripted process: restart after an exit,
back-off that grows while restarts fail and resets after a stable run, the
fleet told the new address, no restart after a deliberate stop, and a kill and
restart after failed liveness probes (scripted answers).

The integration tests (tests/triton/test_supervision.py) SIGKILL and SIGSTOP a
real Triton."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from mlserve.core.aio import Backoff
from mlserve.core.errors import Unavailable
from mlserve.triton.supervisor import (
    Liveness,
    LivenessProbing,
    TritonSupervisor,
    describe_exit,
)
from tests.support.aio import run

FAST = Backoff(initial=0.001, cap=0.004)
LOG = Path("/var/lib/mlserve/triton.log")


class ScriptedProcess:
    """A supervised process the test crashes and whose starts it scripts."""

    def __init__(self) -> None:
        self.port = 8000
        self.running = True
        self.starts = 0
        self.start_errors: list[Exception] = []  # raised by the next starts, in order
        self.answers: list[bool | Exception] = []  # the next liveness probes' answers
        self.probes = 0
        self.probed_when_killed: list[int] = []
        self._exits: asyncio.Queue[int | None] = asyncio.Queue()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return 4000 + self.starts if self.running else None

    @property
    def log_path(self) -> Path:
        return LOG

    async def start(self) -> None:
        self.starts += 1
        if self.start_errors:
            raise self.start_errors.pop(0)
        self.port += 1  # a restarted Triton may listen on another port
        self.running = True

    async def wait_exit(self) -> int | None:
        code = await self._exits.get()
        self.running = False
        return code

    async def is_live(self, timeout: float) -> bool:
        """The next scripted answer; live once the script is done."""
        self.probes += 1
        answer = self.answers.pop(0) if self.answers else True
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def kill(self) -> None:
        self.probed_when_killed.append(self.probes)
        self.exit(-9)

    def log_tail(self) -> str:
        return f"E1201 the last line Triton wrote (start {self.starts})"

    def exit(self, code: int | None) -> None:
        """Exit with ``code`` (negative: a signal); None: stopped on purpose."""
        self._exits.put_nowait(code)


class Fleet:
    """Stands in for ``fleet.register_embedded``: records the addresses it is told."""

    def __init__(self, failures: int = 0) -> None:
        self.addresses: list[str] = []
        self.failures = failures
        self._told = asyncio.Condition()

    async def __call__(self, address: str) -> None:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("the database is away")
        self.addresses.append(address)
        async with self._told:
            self._told.notify_all()

    async def told(self, times: int) -> None:
        async with self._told:
            await self._told.wait_for(lambda: len(self.addresses) >= times)


def delays(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    """The ``in Ns`` delays of the log lines containing ``text``."""
    return [
        record.getMessage().split(" in ", 1)[1].split("s", 1)[0]
        for record in caplog.records
        if text in record.getMessage()
    ]


def test_an_exit_is_logged_with_the_log_and_restarted(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> tuple[ScriptedProcess, Fleet, int]:
        process, fleet = ScriptedProcess(), Fleet()
        supervisor = TritonSupervisor(process, fleet, backoff=FAST)
        task = asyncio.create_task(supervisor.run())
        process.exit(-9)
        await fleet.told(1)
        process.exit(None)  # MLServe stops it: no restart, the loop ends
        await task
        return process, fleet, supervisor.restarts

    process, fleet, restarts = run(scenario)
    assert (restarts, process.starts, fleet.addresses) == (1, 1, ["127.0.0.1:8001"])
    (exited,) = [r.getMessage() for r in caplog.records if "exited" in r.getMessage()]
    assert exited.startswith("the embedded Triton (pid 4000) exited (killed by SIGKILL) after")
    assert "restarting it in 0.001s" in exited
    assert f"The end of its log ({LOG}):\nE1201 the last line Triton wrote (start 0)" in exited
    assert "the embedded Triton is running again (pid 4001) at 127.0.0.1:8001" in caplog.text


def test_failed_restarts_are_retried_with_growing_delays(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> ScriptedProcess:
        process, fleet = ScriptedProcess(), Fleet()
        startup_exit = Unavailable(f"Triton exited during startup (exit code 1); log {LOG}")
        process.start_errors = [startup_exit] * 4 + [OSError("No space left on device")]
        task = asyncio.create_task(TritonSupervisor(process, fleet, backoff=FAST).run())
        process.exit(1)
        await fleet.told(1)
        task.cancel()
        return process

    assert run(scenario).starts == 6
    retried = delays(caplog, "could not be restarted")
    assert retried == ["0.002", "0.004", "0.004", "0.004", "0.004"]  # doubling, capped
    assert caplog.text.count(f"Triton exited during startup (exit code 1); log {LOG}") == 4
    assert "No space left on device" in caplog.text


def test_crashes_in_a_row_back_off_and_a_stable_run_starts_over(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def crashes(stable_after: float) -> None:
        process, fleet = ScriptedProcess(), Fleet()
        supervisor = TritonSupervisor(process, fleet, backoff=FAST, stable_after=stable_after)
        task = asyncio.create_task(supervisor.run())
        for restarts in range(1, 5):
            process.exit(-6)
            await fleet.told(restarts)
        task.cancel()

    run(lambda: crashes(stable_after=3600))  # every crash soon after the last
    assert delays(caplog, "exited (killed by SIGABRT)") == ["0.001", "0.002", "0.004", "0.004"]
    caplog.clear()
    run(lambda: crashes(stable_after=0))  # every run counts as stable
    assert delays(caplog, "exited (killed by SIGABRT)") == ["0.001"] * 4


def test_the_new_address_is_told_again_until_it_is_recorded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> Fleet:
        process, fleet = ScriptedProcess(), Fleet(failures=2)
        task = asyncio.create_task(TritonSupervisor(process, fleet, backoff=FAST).run())
        process.exit(-9)
        await fleet.told(1)
        task.cancel()
        return fleet

    assert run(scenario).addresses == ["127.0.0.1:8001"]
    assert delays(caplog, "could not record the restarted Triton's address") == ["0.001", "0.002"]
    # Each with the traceback that says why.
    assert caplog.text.count('RuntimeError("the database is away")') == 2


def test_a_deliberate_stop_is_not_restarted() -> None:
    async def scenario() -> ScriptedProcess:
        process, fleet = ScriptedProcess(), Fleet()
        process.exit(None)
        await TritonSupervisor(process, fleet, backoff=FAST).run()
        assert fleet.addresses == []
        return process

    assert run(scenario).starts == 0


def test_exit_codes_are_described_for_people() -> None:
    assert describe_exit(1) == "exit code 1"
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(-15) == "killed by SIGTERM"
    assert describe_exit(-100) == "killed by signal 100"
    assert describe_exit(137) == "exit code 137: killed by SIGKILL"  # through the sandbox
    assert describe_exit(255) == "exit code 255"


THREE_MISSES = LivenessProbing(interval=1.0, timeout=0.5, failures=3, startup=10.0)


def verdicts(liveness: Liveness, answers: list[tuple[bool, float]]) -> list[str | None]:
    return [liveness.observe(live, now) for live, now in answers]


def test_three_failed_probes_in_a_row_make_triton_hung() -> None:
    liveness = Liveness(THREE_MISSES, started_at=0.0)
    said = verdicts(liveness, [(True, 1), (False, 2), (False, 3), (False, 4)])
    assert said[:3] == [None, None, None]
    assert said[3] == ("it failed 3 liveness probes in a row (ServerLive every 1s, 0.5s deadline)")


def test_a_success_starts_the_count_over() -> None:
    liveness = Liveness(THREE_MISSES, started_at=0.0)
    answers = [(True, 1), (False, 2), (False, 3), (True, 4), (False, 5), (False, 6)]
    assert verdicts(liveness, answers) == [None] * 6
    assert liveness.observe(False, 7) is not None  # the third in a row since the success


def test_failures_before_the_first_answer_count_only_against_the_startup_bound() -> None:
    liveness = Liveness(THREE_MISSES, started_at=100.0)
    # Still starting: many failures, none counted.
    assert verdicts(liveness, [(False, 100.0 + t) for t in range(1, 10)]) == [None] * 9
    assert liveness.observe(True, 109.5) is None
    assert verdicts(liveness, [(False, 110), (False, 111)]) == [None, None]  # counted now
    assert liveness.observe(False, 112) is not None

    never = Liveness(THREE_MISSES, started_at=100.0)
    assert never.observe(False, 109.9) is None
    assert never.observe(False, 110.0) == (
        "it has not answered a liveness probe in the 10s since it started"
    )


FAST_PROBES = LivenessProbing(interval=0.001, timeout=0.5, failures=3, startup=3600.0)


def test_a_hung_triton_is_killed_restarted_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()

    async def scenario() -> tuple[ScriptedProcess, Fleet, TritonSupervisor]:
        process, fleet = ScriptedProcess(), Fleet()
        # Live, two misses (a probe that raises is one), live again, then three misses.
        process.answers = [True, False, RuntimeError("no channel"), True, False, False, False]
        supervisor = TritonSupervisor(
            process, fleet, backoff=FAST, probing=FAST_PROBES, registry=registry
        )
        task = asyncio.create_task(supervisor.run())
        await fleet.told(1)
        process.exit(None)
        await task
        return process, fleet, supervisor

    process, fleet, supervisor = run(scenario)
    assert process.probed_when_killed == [7]  # killed at the third miss in a row, once
    assert (process.starts, fleet.addresses) == (1, ["127.0.0.1:8001"])
    assert supervisor.restarts_by_reason == {"exited": 0, "hung": 1}
    assert registry.get_sample_value("mlserve_triton_restarts_total", {"reason": "hung"}) == 1
    assert registry.get_sample_value("mlserve_triton_restarts_total", {"reason": "exited"}) == 0
    messages = [record.getMessage() for record in caplog.records]
    (hung,) = [m for m in messages if " is hung: " in m]
    assert hung == (
        "the embedded Triton (pid 4000) is hung: it failed 3 liveness probes in a row "
        "(ServerLive every 0.001s, 0.5s deadline); killing its process group with SIGKILL"
    )
    (restarting,) = [m for m in messages if "restarting it in" in m]
    assert restarting.startswith(
        "the embedded Triton (pid 4000) hung (it failed 3 liveness probes in a row "
        "(ServerLive every 0.001s, 0.5s deadline)) and was killed (killed by SIGKILL) after"
    )
    assert (
        "the embedded Triton is running again (pid 4001) at 127.0.0.1:8001 after a hang; "
        "restarts so far: 1 (exits 0, hangs 1)"
    ) in caplog.text


def test_an_exit_is_counted_as_exited() -> None:
    registry = CollectorRegistry()

    async def scenario() -> TritonSupervisor:
        process, fleet = ScriptedProcess(), Fleet()
        supervisor = TritonSupervisor(process, fleet, backoff=FAST, registry=registry)
        task = asyncio.create_task(supervisor.run())
        process.exit(-11)
        await fleet.told(1)
        task.cancel()
        return supervisor

    assert run(scenario).restarts_by_reason == {"exited": 1, "hung": 0}
    assert registry.get_sample_value("mlserve_triton_restarts_total", {"reason": "exited"}) == 1


def test_no_probes_when_probing_is_off() -> None:
    async def scenario() -> ScriptedProcess:
        process, fleet = ScriptedProcess(), Fleet()
        process.answers = [False] * 10
        off = LivenessProbing(interval=0)
        task = asyncio.create_task(TritonSupervisor(process, fleet, probing=off).run())
        await asyncio.sleep(0.05)
        process.exit(None)
        await task
        return process

    assert run(scenario).probes == 0
