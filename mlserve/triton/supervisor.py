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

A Triton that is alive but hung (stopped by SIGSTOP, deadlocked) never
exits, so waiting for its exit is not enough: while it runs, the supervisor
probes it (ServerLive, every ``interval`` seconds, each probe with a
``timeout``). After ``failures`` failed probes in a row it logs why, SIGKILLs
Triton's process group (a stopped process handles no SIGTERM) and restarts it
as above. A success resets the count. Probes before Triton's first answer in a
run do not count (it may still be starting); that start-up has its own bound,
``startup`` seconds. Every restart is counted by its reason, ``exited`` or
``hung`` (``restarts_by_reason`` and, given a registry, the Prometheus counter
``mlserve_triton_restarts_total{reason}``).

Whether a Triton that fails at MLServe's own start is retried is decided by
the caller; ``mlserve serve`` does not retry it (see ``server.py``).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter

from mlserve.core.aio import Backoff
from mlserve.core.errors import MLServeError

__all__ = [
    "EXITED",
    "HUNG",
    "RESTART_BACKOFF",
    "STABLE_AFTER",
    "Liveness",
    "LivenessProbing",
    "Supervised",
    "TritonSupervisor",
]

log = logging.getLogger(__name__)

RESTART_BACKOFF = Backoff(initial=0.5, cap=30.0)
STABLE_AFTER = 60.0
"""Seconds a restarted Triton must stay up before its next crash counts as a first one."""

EXITED = "exited"
HUNG = "hung"
"""The reasons a restart is counted under."""


@dataclass(frozen=True)
class LivenessProbing:
    """How a running Triton is probed; the defaults are ``mlserve serve``'s."""

    interval: float = 5.0
    """Seconds between probes; 0: no probes (a hung Triton is then never restarted)."""
    timeout: float = 2.0
    """Seconds one probe may take."""
    failures: int = 3
    """Failed probes in a row that make Triton hung."""
    startup: float = 60.0
    """Seconds a run may take to answer its first probe (the launcher's start timeout)."""


class Liveness:
    """The decision over one run's probes: hung after ``failures`` failures in a row,
    counted from the run's first success; before it, hung only once ``startup``
    seconds passed without one."""

    def __init__(self, probing: LivenessProbing, started_at: float) -> None:
        self._probing = probing
        self._started_at = started_at
        self._answered = False
        self._misses = 0

    def observe(self, live: bool, now: float) -> str | None:
        """Record one probe's outcome at ``now``; why Triton is hung, or None if it is not."""
        probing = self._probing
        if live:
            self._answered, self._misses = True, 0
            return None
        if not self._answered:
            waited = now - self._started_at
            if waited < probing.startup:
                return None  # still starting: not counted
            return f"it has not answered a liveness probe in the {waited:.0f}s since it started"
        self._misses += 1
        if self._misses < probing.failures:
            return None
        return (
            f"it failed {self._misses} liveness probes in a row "
            f"(ServerLive every {probing.interval:g}s, {probing.timeout:g}s deadline)"
        )


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

    async def is_live(self, timeout: float) -> bool: ...

    async def kill(self) -> None: ...

    def log_tail(self) -> str: ...


class TritonSupervisor:
    """Restarts ``triton`` whenever it exits by itself or hangs; see the module docstring."""

    def __init__(
        self,
        triton: Supervised,
        on_restart: Callable[[str], Awaitable[object]],
        *,
        backoff: Backoff = RESTART_BACKOFF,
        stable_after: float = STABLE_AFTER,
        probing: LivenessProbing | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._triton = triton
        self._on_restart = on_restart
        self._backoff = backoff
        self._stable_after = stable_after
        self._probing = probing or LivenessProbing()
        self.restarts_by_reason = {EXITED: 0, HUNG: 0}
        """How many times Triton was started again (successfully), by why it had to be."""
        self._counter = (
            None
            if registry is None
            else Counter(
                "mlserve_triton_restarts",
                "Restarts of the embedded Triton, by reason: it exited, or hung (failed its "
                "liveness probes and was killed)",
                ["reason"],
                registry=registry,
            )
        )
        if self._counter is not None:
            for reason in self.restarts_by_reason:
                self._counter.labels(reason)  # both series exist from the start, at 0

    @property
    def restarts(self) -> int:
        """How many times Triton was started again (successfully), for any reason."""
        return sum(self.restarts_by_reason.values())

    async def run(self) -> None:
        """Supervise until cancelled, or until Triton is stopped on purpose."""
        loop = asyncio.get_running_loop()
        failures = 0
        up_since = loop.time()
        while True:
            pid = self._triton.pid
            code, hung = await self._wait_exit_or_hang(up_since)
            if code is None:
                return  # stopped on purpose, or never running
            ran_for = loop.time() - up_since
            failures = 1 if ran_for >= self._stable_after else failures + 1
            delay = self._backoff.delay(failures)
            what = (
                f"hung ({hung}) and was killed ({describe_exit(code)})"
                if hung
                else f"exited ({describe_exit(code)})"
            )
            log.error(
                "the embedded Triton (pid %s) %s after %.0fs; restarting it in %gs. "
                "The end of its log (%s):\n%s",
                pid,
                what,
                ran_for,
                delay,
                self._triton.log_path,
                self._triton.log_tail(),
            )
            failures = await self._restart(failures, delay)
            up_since = loop.time()
            reason = HUNG if hung else EXITED
            self.restarts_by_reason[reason] += 1
            if self._counter is not None:
                self._counter.labels(reason).inc()
            log.warning(
                "the embedded Triton is running again (pid %s) at %s after %s; "
                "restarts so far: %d (exits %d, hangs %d)",
                self._triton.pid,
                self._triton.address,
                "a hang" if hung else "an exit",
                self.restarts,
                self.restarts_by_reason[EXITED],
                self.restarts_by_reason[HUNG],
            )
            await self._announce()

    async def _wait_exit_or_hang(self, started_at: float) -> tuple[int | None, str | None]:
        """Triton's exit code (None: stopped on purpose) and, if the supervisor killed
        it for hanging, why it counted as hung."""
        exited = asyncio.ensure_future(self._triton.wait_exit())
        hanging = asyncio.ensure_future(self._watch_liveness(started_at))
        try:
            await asyncio.wait({exited, hanging}, return_when=asyncio.FIRST_COMPLETED)
            hung = None
            if hanging.done() and not exited.done():
                hung = hanging.result()
                log.error(
                    "the embedded Triton (pid %s) is hung: %s; killing its process group "
                    "with SIGKILL",
                    self._triton.pid,
                    hung,
                )
                await self._triton.kill()
            return await exited, hung
        finally:
            exited.cancel()
            hanging.cancel()

    async def _watch_liveness(self, started_at: float) -> str:
        """Probe the running Triton until it counts as hung; why it does. Never
        returns when probing is off."""
        probing = self._probing
        if probing.interval <= 0:
            await asyncio.Future()  # until cancelled
        loop = asyncio.get_running_loop()
        liveness = Liveness(probing, started_at)
        while True:
            await asyncio.sleep(probing.interval)
            try:
                live = await self._triton.is_live(probing.timeout)
            except Exception:
                log.exception("the liveness probe of the embedded Triton failed")
                live = False
            hung = liveness.observe(live, loop.time())
            if hung is not None:
                return hung

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
