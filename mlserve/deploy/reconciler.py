"""The reconcile loop: makes each server match its deployments, apart from the health loop.

The health loop only observes. When it sees a server ready (every round: a
Triton that restarted between two rounds looks ready twice but has lost its
models) or no longer ready, it calls :meth:`Reconciler.request`, which never
waits. The reconciler's workers then run the registered callbacks (the
deployments' ``server_changed``) for that server, so a model that takes 25 s
to load delays that server's next reconcile and nothing else.

Requests are coalesced per server, the way a Kubernetes work queue
coalesces keys: a server is queued at most once, carrying the latest state
asked for; a request for a server being reconciled queues it again for
after. The queue therefore never holds more entries than there are servers,
however many health rounds pass during a slow load: that is the back-pressure,
and why ``request`` may drop nothing and still never block. One server is
reconciled by at most one worker at a time; different servers in parallel.

A callback that raises is logged and does not stop the loop: the server is
retried after a back-off (doubling, capped) that also holds back the health
loop's requests for it, so a failing server is not retried every round.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from mlserve.core.aio import Backoff

__all__ = ["ChangeCallback", "Reconciler"]

log = logging.getLogger(__name__)

ChangeCallback = Callable[[str, str], Awaitable[None]]
"""``callback(server_name, state)``: make that server, now in ``state``, match its deployments."""

RETRY_BACKOFF = Backoff(initial=1.0, cap=30.0)
DEFAULT_WORKERS = 4


class Reconciler:
    """A coalescing queue of servers to reconcile and the workers that drain it."""

    def __init__(self, *, workers: int = DEFAULT_WORKERS, retry: Backoff = RETRY_BACKOFF) -> None:
        self._callbacks: list[ChangeCallback] = []
        self._workers = workers
        self._retry = retry
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        # Servers waiting for a worker (queued, running again after, or held
        # back), each with the latest state asked for. Insertion order is
        # request order.
        self._wanted: dict[str, str] = {}
        self._running: set[str] = set()
        self._held: dict[str, asyncio.TimerHandle] = {}
        self._failures: dict[str, int] = {}
        self._forgotten: set[str] = set()  # deleted while being reconciled: no retry
        self._idle = asyncio.Event()
        self._idle.set()

    def on_change(self, callback: ChangeCallback) -> None:
        """Run ``callback(server, state)`` for each reconcile, after those registered before."""
        self._callbacks.append(callback)

    def request(self, server: str, state: str) -> None:
        """Ask for ``server`` to be reconciled in ``state``; never waits.

        A server already waiting only has its state replaced by ``state``.
        """
        self._forgotten.discard(server)
        queued = server in self._wanted
        self._wanted[server] = state
        if queued or server in self._running or server in self._held:
            return
        self._queue.put_nowait(server)
        self._idle.clear()

    def forget(self, server: str) -> None:
        """Drop what is waiting for ``server`` (it was deleted); a running reconcile finishes."""
        self._wanted.pop(server, None)
        self._failures.pop(server, None)
        held = self._held.pop(server, None)
        if held is not None:
            held.cancel()
        if server in self._running:
            self._forgotten.add(server)
        self._update_idle()

    def pending(self) -> dict[str, str]:
        """The servers waiting to be reconciled, each with the state it will be reconciled in."""
        return dict(self._wanted)

    async def wait_idle(self) -> None:
        """Return once nothing is queued, running or held back for a retry."""
        await self._idle.wait()

    async def run(self) -> None:
        """Drain the queue until cancelled (one task per worker)."""
        workers = [
            asyncio.create_task(self._work(), name=f"reconciler-{number}")
            for number in range(self._workers)
        ]
        try:
            await asyncio.gather(*workers)
        finally:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            for held in self._held.values():
                held.cancel()
            self._held.clear()

    async def _work(self) -> None:
        while True:
            server = await self._queue.get()
            if server in self._running or server in self._held or server not in self._wanted:
                # A stale entry (the server was forgotten, or queued twice):
                # whoever holds it queues it again when it is due.
                self._update_idle()
                continue
            state = self._wanted.pop(server)
            self._running.add(server)
            try:
                failed = await self._reconcile(server, state)
            finally:
                self._running.discard(server)
            self._after(server, state, failed)

    async def _reconcile(self, server: str, state: str) -> bool:
        """Run every callback for ``server``; True if any raised (each runs regardless)."""
        failed = False
        for callback in self._callbacks:
            try:
                await callback(server, state)
            except Exception:
                failed = True
                log.exception("reconciling server %s (%s) failed", server, state)
        return failed

    def _after(self, server: str, state: str, failed: bool) -> None:
        if server in self._forgotten:
            self._forgotten.discard(server)
        elif failed:
            failures = self._failures.get(server, 0) + 1
            self._failures[server] = failures
            delay = self._retry.delay(failures)
            log.warning("retrying the reconcile of server %s in %gs", server, delay)
            # A request that came in meanwhile is newer; keep its state.
            self._wanted.setdefault(server, state)
            loop = asyncio.get_running_loop()
            self._held[server] = loop.call_later(delay, self._release, server)
        else:
            self._failures.pop(server, None)
            if server in self._wanted:
                self._queue.put_nowait(server)
        self._update_idle()

    def _release(self, server: str) -> None:
        self._held.pop(server, None)
        if server in self._wanted and server not in self._running:
            self._queue.put_nowait(server)
        self._update_idle()

    def _update_idle(self) -> None:
        if self._wanted or self._running or self._held:
            self._idle.clear()
        else:
            self._idle.set()
