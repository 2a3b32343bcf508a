"""A scripted stand-in for the Triton *client*, for unit tests of decision logic.

``Fleet(tokens, client_factory=ScriptedTritons().client)`` makes every
server's client a :class:`ScriptedTriton`: it answers ``is_ready``,
``index``, ``load``, ``unload``, ``model_ready``, ``reported_memory`` and
``last_inferences`` from what the test set,
records each call, and can hold a call until the test releases it (a slow
Triton). Integration tests never use it: they run a real Triton.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from mlserve.core.errors import MLServeError, NotFound, Unavailable
from mlserve.core.paging import PageTokens
from mlserve.deploy.fleet import Fleet, ServerFields
from mlserve.triton.client import IndexEntry, TritonClient


class ScriptedTriton(TritonClient):
    """One server's scripted answers; ``calls`` lists ``(method, model)`` in call order."""

    def __init__(self, name: str, address: str) -> None:
        super().__init__(name, address)
        self.ready = True
        self.loaded: dict[str, int] = {}  # model -> version that serves
        self.load_errors: dict[str, MLServeError] = {}  # model -> what its load raises
        self.memory: dict[str, int] = {}  # model -> bytes its statistics report
        # model -> its statistics' last_inference, seconds since the epoch
        self.last_inference: dict[str, float] = {}
        self.calls: list[tuple[str, str]] = []
        # Set to hold every call of that method until the event is set.
        self.gates: dict[str, asyncio.Event] = {}
        self._call_made = asyncio.Condition()

    async def close(self) -> None:
        pass

    async def is_ready(self, timeout: float = 2.0) -> bool:
        await self._called("is_ready")
        return self.ready

    async def index(self, timeout: float = 5.0) -> list[IndexEntry]:
        await self._called("index")
        self._reachable()
        return [IndexEntry(model, version, "READY", "") for model, version in self.loaded.items()]

    async def load(
        self,
        model: str,
        *,
        config_json: str | None = None,
        files: Mapping[str, bytes] | None = None,
        timeout: float = 120.0,
    ) -> None:
        await self._called("load", model)
        self._reachable()
        error = self.load_errors.get(model)
        if error is not None:
            raise error
        self.loaded[model] = 1

    async def unload(self, model: str, timeout: float = 60.0) -> None:
        await self._called("unload", model)
        self._reachable()
        if self.loaded.pop(model, None) is None:
            raise NotFound(f"Triton server '{self.name}' has no model '{model}' to unload")

    async def model_ready(self, model: str, version: int = 0, timeout: float = 5.0) -> bool:
        await self._called("model_ready", model)
        self._reachable()
        return model in self.loaded and version in (0, self.loaded[model])

    async def reported_memory(self, model: str, version: int, timeout: float = 5.0) -> int:
        await self._called("reported_memory", model)
        self._reachable()
        return self.memory.get(model, 0) if model in self.loaded else 0

    async def last_inferences(self, timeout: float = 5.0) -> dict[str, float]:
        await self._called("last_inferences")
        self._reachable()
        return {m: t for m, t in self.last_inference.items() if m in self.loaded}

    def hold(self, method: str) -> asyncio.Event:
        """Make calls of ``method`` wait until the returned event is set."""
        gate = self.gates[method] = asyncio.Event()
        return gate

    async def called(self, method: str, model: str = "") -> None:
        """Return once ``method`` was called for ``model`` (at once if it was)."""
        async with self._call_made:
            await self._call_made.wait_for(lambda: (method, model) in self.calls)

    async def _called(self, method: str, model: str = "") -> None:
        self.calls.append((method, model))
        async with self._call_made:
            self._call_made.notify_all()
        gate = self.gates.get(method)
        if gate is not None:
            await gate.wait()

    def _reachable(self) -> None:
        if not self.ready:
            raise Unavailable(f"Triton server '{self.name}' at {self.address} is unreachable")


class ScriptedTritons:
    """The scripted clients of a fleet, made on first use and kept by server name."""

    def __init__(self) -> None:
        self.by_name: dict[str, ScriptedTriton] = {}

    def client(self, name: str, address: str) -> TritonClient:
        """A :data:`mlserve.deploy.fleet.ClientFactory`."""
        return self.by_name.setdefault(name, ScriptedTriton(name, address))

    def __getitem__(self, name: str) -> ScriptedTriton:
        return self.by_name.setdefault(name, ScriptedTriton(name, f"{name}.test:8001"))


async def scripted_fleet(tritons: ScriptedTritons, *names: str) -> Fleet:
    """A fleet whose clients are ``tritons``, with ``names`` registered (and checked once).

    Needs a store (the ``store_db`` fixture). Nothing runs the reconciler:
    what registration asks of it stays pending until the test runs it.
    """
    fleet = Fleet(PageTokens(b"k" * 32), client_factory=tritons.client)
    for name in names:
        await fleet.register(name, ServerFields(address=f"{name}.test:8001"))
    return fleet
