"""Logging policies: which calls to a deployment the inference log records.

The policy table (``tables.LoggingPolicy``, keyed by deployment name) is
owned here. The gateway reads policies from memory on every call
(``Policies.get``); they are reloaded from the store after every change and
on each health round, so a change through another replica arrives within
one round.
"""

from __future__ import annotations

import enum
import hashlib
import random
from dataclasses import dataclass, replace
from typing import Any

from mlserve.core.aio import Freshest
from mlserve.core.errors import InvalidArgument
from mlserve.core.names import check_name
from mlserve.storage import tables
from mlserve.storage.db import in_thread, utcnow

DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024
HEADER_PREFIX = "header:"


class Mode(enum.Enum):
    OFF = "off"
    METADATA = "metadata"
    INPUTS = "inputs"
    OUTPUTS = "outputs"
    ALL = "all"

    @property
    def inputs(self) -> bool:
        return self in (Mode.INPUTS, Mode.ALL)

    @property
    def outputs(self) -> bool:
        return self in (Mode.OUTPUTS, Mode.ALL)


@dataclass(frozen=True)
class LoggingPolicy:
    """What to record of a deployment's calls.

    ``sample_rate`` is the share of calls recorded; with ``sampling_key`` (a
    request parameter) the decision is a hash of that parameter's value, so
    one key is always in or always out. ``header:NAME`` names a request header
    instead (decided on the hot path, as the header is at hand there).
    """

    mode: Mode = Mode.METADATA
    sample_rate: float = 1.0
    sampling_key: str = ""
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES

    def checked(self) -> LoggingPolicy:
        """This policy, or InvalidArgument naming the field that is out of range."""
        if not 0.0 <= self.sample_rate <= 1.0:
            raise InvalidArgument(f"logging.sample_rate must lie in [0, 1], got {self.sample_rate}")
        if self.max_payload_bytes < 0:
            raise InvalidArgument(
                f"logging.max_payload_bytes must not be negative, got {self.max_payload_bytes} "
                "(0 means the default, 1 MiB)"
            )
        if len(self.sampling_key) > 256:
            raise InvalidArgument("logging.sampling_key is longer than 256 characters")
        if self.sampling_key.startswith(HEADER_PREFIX) and not self.header_key:
            raise InvalidArgument(
                "logging.sampling_key 'header:' names no header: use header:NAME, e.g. "
                "header:x-user-id"
            )
        if self.max_payload_bytes == 0:
            return replace(self, max_payload_bytes=DEFAULT_MAX_PAYLOAD_BYTES)
        return self

    @property
    def header_key(self) -> str:
        """The header a ``header:NAME`` sampling key names (lower case, as gRPC sends it),
        else ""."""
        if not self.sampling_key.startswith(HEADER_PREFIX):
            return ""
        return self.sampling_key.removeprefix(HEADER_PREFIX).strip().lower()

    def samples(self) -> bool:
        """Random sampling, decided on the hot path (no sampling key)."""
        rate = self.sample_rate
        return rate >= 1.0 or (rate > 0.0 and random.random() < rate)

    def samples_key(self, value: str) -> bool:
        """Deterministic sampling: the same ``value`` always gets the same answer."""
        digest = hashlib.blake2b(value.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") < self.sample_rate * 2**64


DEFAULT = LoggingPolicy()
OFF = LoggingPolicy(Mode.OFF)


def mode_named(name: str) -> Mode:
    try:
        return Mode(name)
    except ValueError:
        modes = ", ".join(mode.value for mode in Mode)
        raise InvalidArgument(f"logging.mode {name!r} is unknown: use one of {modes}") from None


class Policies:
    """The policy of every deployment, in memory for the gateway, stored for all replicas."""

    def __init__(self) -> None:
        self._policies: Freshest[dict[str, LoggingPolicy]] = Freshest({})

    def get(self, deployment: str) -> LoggingPolicy:
        """The policy in force (DEFAULT when none was set); no I/O."""
        return self._policies.value.get(deployment, DEFAULT)

    async def reload(self) -> None:
        """Read every policy from the store (a read begun before a ``set`` here never
        undoes it)."""
        await self._policies.read(in_thread(_load))

    async def set(self, deployment: str, policy: LoggingPolicy) -> LoggingPolicy:
        """Store ``policy`` for ``deployment`` (validated) and apply it in this process at once.

        Raises:
            InvalidArgument: a field is out of range, or the name is not a name.
        """
        check_name(deployment, "deployment")
        policy = policy.checked()
        await in_thread(_store)(deployment, policy)
        self._policies.write({**self._policies.value, deployment: policy})
        return policy

    async def stored(self, deployment: str) -> LoggingPolicy:
        """The stored policy of ``deployment`` (DEFAULT when none), read from the store."""
        row = await in_thread(
            lambda: tables.LoggingPolicy.get_or_none(tables.LoggingPolicy.deployment == deployment)
        )()
        return DEFAULT if row is None else _policy(row)


def _load() -> dict[str, LoggingPolicy]:
    return {str(row.deployment): _policy(row) for row in tables.LoggingPolicy.select()}


def _policy(row: Any) -> LoggingPolicy:
    return LoggingPolicy(
        Mode(row.mode), row.sample_rate, row.sampling_key, int(row.max_payload_bytes)
    )


def _store(deployment: str, policy: LoggingPolicy) -> None:
    table = tables.LoggingPolicy
    values = {
        table.mode: policy.mode.value,
        table.sample_rate: policy.sample_rate,
        table.sampling_key: policy.sampling_key,
        table.max_payload_bytes: policy.max_payload_bytes,
        table.update_time: utcnow(),
    }
    table.insert({table.deployment: deployment, **values}).on_conflict(
        conflict_target=[table.deployment], update=values
    ).execute()
