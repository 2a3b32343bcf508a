"""The supervisor's decisions over a scripted process: restart after an exit,
back-off that grows while restarts fail and resets after a stable run, the
fleet told the new address, and no restart after a deliberate stop.

The integration tests (tests/triton/test_supervision.py) SIGKILL a real Triton."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mlserve.core.aio import Backoff
from mlserve.core.errors import Unavailable
from mlserve.triton.supervisor import TritonSupervisor, describe_exit
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
