"""Keeps the embedded Triton running: when it exits, start it again, with back-off.

The supervisor waits for the process to exit by itself (SIGKILL, a crash, the
OOM killer; never a :meth:`EmbeddedTriton.stop`), logs the exit with the last
lines Triton wrote and the log file's path, waits a back-off delay and starts
Triton again. A restart that fails (Triton exits during start-up, or is not
ready in time) is logged the same way and tried again after a longer delay:
0.5 s doubling up to 30 s. A Triton that then stays up for a minute counts
as recovered, and its next crash is restarted after 0.5 s again.

Once Triton is back, ``on_restart(address)`` tells the fleet where it now
listens (the port may be new); the fleet checks it, and its reconciler loads
the deployments the restart lost. That call is retried with the same
back-off if it fails (the database may be away), since until it succeeds the
fleet does not know the new address.

Whether a Triton that fails at MLServe's own start is retried is decided by
the caller; ``mlserve serve`` does not retry it (see ``server.py``).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

from mlserve.core.aio import Backoff
from mlserve.core.errors import MLServeError

__all__ = ["RESTART_BACKOFF", "STABLE_AFTER", "Supervised", "TritonSupervisor"]

log = logging.getLogger(__name__)

RESTART_BACKOFF = Backoff(initial=0.5, cap=30.0)
STABLE_AFTER = 60.0
"""Seconds a restarted Triton must stay up before its next crash counts as a first one."""


class Supervised(Protocol):
    """What the supervisor needs of a process (``EmbeddedTriton`` is one)."""

    @property
    def address(self) -> str: ...

    @property
    def pid(self) -> int | None: ...

    @property
    def log_path(self) -> Path: ...

    async def start(self) -> None: ...

    async def wait_exit(self) -> int | None: ...

    def log_tail(self) -> str: ...


class TritonSupervisor:
    """Restarts ``triton`` whenever it exits by itself; see the module docstring."""

    def __init__(
        self,
        triton: Supervised,
        on_restart: Callable[[str], Awaitable[object]],
        *,
        backoff: Backoff = RESTART_BACKOFF,
        stable_after: float = STABLE_AFTER,
    ) -> None:
        self._triton = triton
        self._on_restart = on_restart
        self._backoff = backoff
        self._stable_after = stable_after
        self.restarts = 0
        """How many times Triton was started again (successfully)."""

    async def run(self) -> None:
        """Supervise until cancelled, or until Triton is stopped on purpose."""
        loop = asyncio.get_running_loop()
        failures = 0
        up_since = loop.time()
        while True:
            pid = self._triton.pid
            code = await self._triton.wait_exit()
            if code is None:
                return  # stopped on purpose, or never running
            ran_for = loop.time() - up_since
            failures = 1 if ran_for >= self._stable_after else failures + 1
            delay = self._backoff.delay(failures)
            log.error(
                "the embedded Triton (pid %s) exited (%s) after %.0fs; restarting it in %gs. "
                "The end of its log (%s):\n%s",
                pid,
                describe_exit(code),
                ran_for,
                delay,
                self._triton.log_path,
                self._triton.log_tail(),
            )
            failures = await self._restart(failures, delay)
            up_since = loop.time()
            self.restarts += 1
            log.warning(
                "the embedded Triton is running again (pid %s) at %s; restarts so far: %d",
                self._triton.pid,
                self._triton.address,
                self.restarts,
            )
            await self._announce()

    async def _restart(self, failures: int, delay: float) -> int:
        """Start Triton after ``delay``, retrying with back-off; the failure count after."""
        while True:
            await asyncio.sleep(delay)
            try:
                await self._triton.start()
            except (MLServeError, OSError) as error:
                failures += 1
                delay = self._backoff.delay(failures)
                message = error.message if isinstance(error, MLServeError) else str(error)
                log.error(
                    "the embedded Triton could not be restarted; trying again in %gs: %s",
                    delay,
                    message,
                )
                continue
            return failures

    async def _announce(self) -> None:
        """Tell ``on_restart`` the new address, retrying while Triton stays up."""
        failures = 0
        while self._triton.pid is not None:
            try:
                await self._on_restart(self._triton.address)
            except Exception:
                failures += 1
                delay = self._backoff.delay(failures)
                log.exception(
                    "could not record the restarted Triton's address %s; trying again in %gs",
                    self._triton.address,
                    delay,
                )
                await asyncio.sleep(delay)
            else:
                return


def describe_exit(code: int) -> str:
    """``exit code 1``; ``killed by SIGKILL`` for Popen's negative codes, and for the
    128 + signal that a wrapper (the sandbox) exits with when its child was killed."""
    if code < 0:
        return f"killed by {_signal_name(-code) or f'signal {-code}'}"
    wrapped = _signal_name(code - 128) if code > 128 else None
    return f"exit code {code}: killed by {wrapped}" if wrapped else f"exit code {code}"


def _signal_name(number: int) -> str | None:
    try:
        return signal.Signals(number).name
    except ValueError:
        return None
