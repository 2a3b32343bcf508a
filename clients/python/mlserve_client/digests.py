"""The sha256s of local files this client has already learnt, so an unchanged file is
never read twice just to be named.

An upload hashes its files while it sends them and the digest follows the bytes,
so the server cannot skip content it already stores before the bytes travel. After
an upload the digests the server verified are remembered here, keyed by what
identifies an unchanged file (device, inode, size, modification and change times,
in nanoseconds); the next upload of the same file declares its digest up front,
and content the server stores already is not sent again.

Where: ``$MLSERVE_DIGEST_CACHE`` (a file; ``off`` keeps nothing), else
``$XDG_CACHE_HOME/mlserve/digests.json``, else ``~/.cache/mlserve/digests.json``.
A cache that cannot be read or written is ignored: it only saves time.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

ENV = "MLSERVE_DIGEST_CACHE"
MAX_ENTRIES = 4096
"""The most files remembered; the oldest entries go first."""


def file_identity(info: os.stat_result) -> str:
    """What changes whenever a file's content may have changed."""
    return f"{info.st_dev}:{info.st_ino}:{info.st_size}:{info.st_mtime_ns}:{info.st_ctime_ns}"


class DigestCache:
    """A small JSON file mapping file identities to sha256s."""

    def __init__(self, path: Path | None) -> None:
        """``path`` None: a cache that remembers nothing."""
        self.path = path
        self._entries: dict[str, str] | None = None

    @classmethod
    def default(cls) -> DigestCache:
        """The user's cache, at the place the module's doc names."""
        chosen = os.environ.get(ENV, "")
        if chosen == "off":
            return cls(None)
        if chosen:
            return cls(Path(chosen))
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return cls(Path(base) / "mlserve" / "digests.json")

    def get(self, identity: str) -> str:
        """The sha256 remembered for ``identity``; "" when none."""
        return self._load().get(identity, "")

    def remember(self, learnt: Iterable[tuple[str, str]]) -> None:
        """Keep each (identity, sha256); written at once, atomically."""
        entries = self._load()
        changed = False
        for identity, sha256 in learnt:
            if sha256 and entries.get(identity) != sha256:
                entries.pop(identity, None)  # re-inserted last: the newest
                entries[identity] = sha256
                changed = True
        if not changed or self.path is None:
            return
        while len(entries) > MAX_ENTRIES:
            del entries[next(iter(entries))]
        with contextlib.suppress(OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, temporary = tempfile.mkstemp(prefix=".digests-", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as out:
                    json.dump(entries, out)
                os.replace(temporary, self.path)
            except OSError:
                os.unlink(temporary)
                raise

    def _load(self) -> dict[str, str]:
        if self._entries is None:
            self._entries = {}
            if self.path is not None:
                with contextlib.suppress(OSError, ValueError):
                    loaded = json.loads(self.path.read_text(encoding="utf-8"))
                    if isinstance(loaded, dict):
                        self._entries = {
                            str(key): str(value)
                            for key, value in loaded.items()
                            if isinstance(value, str)
                        }
        return self._entries
