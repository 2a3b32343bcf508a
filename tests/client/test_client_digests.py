"""The Python client hashes while it sends, and remembers the digests the server
verified, so an unchanged file is named by its digest the next time (and content
the server stores is not sent again). Against a real MLServe."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mlserve_client import Client
from mlserve_client.digests import ENV, DigestCache, file_identity
from tests.support.checks import delete_model_quietly, sha
from tests.support.mlserve import MLServeProcess, Stubs

MiB = 1024 * 1024


def test_an_unchanged_file_is_not_sent_again(
    mlserve: MLServeProcess,
    stubs: Stubs,
    tmp_path: Path,
    model_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache = tmp_path / "digests.json"
    monkeypatch.setenv(ENV, str(cache))
    folder = tmp_path / "model"
    folder.mkdir()
    weights = os.urandom(3 * MiB + 1)
    (folder / "model.py").write_text("# first\n")
    (folder / "weights.bin").write_bytes(weights)
    first: list[int] = []
    again: list[int] = []
    with Client(mlserve.address, mlserve.key) as client:
        version = client.upload(folder, model_name, progress=lambda d, t: first.append(d))
        assert first[0] == 0  # nothing known up front: every byte sent, hashed on the way
        assert {f.path: f.sha256 for f in version.files}["weights.bin"] == sha(weights)
        remembered = json.loads(cache.read_text())
        assert remembered[file_identity((folder / "weights.bin").stat())] == sha(weights)

        (folder / "model.py").write_text("# second\n")
        second = client.upload(folder, model_name, progress=lambda d, t: again.append(d))
    assert second.version == version.version + 1
    assert again[0] == len(weights)  # the stored weights counted as received, not sent
    delete_model_quietly(stubs, model_name)


def test_the_cache_can_be_turned_off(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(ENV, "off")
    cache = DigestCache.default()
    cache.remember([("1:2:3:4:5", "a" * 64)])
    assert cache.path is None
    monkeypatch.setenv(ENV, str(tmp_path / "d.json"))
    kept = DigestCache.default()
    kept.remember([("1:2:3:4:5", "a" * 64)])
    assert DigestCache.default().get("1:2:3:4:5") == "a" * 64
    (tmp_path / "d.json").write_text("not json")
    assert DigestCache.default().get("1:2:3:4:5") == ""  # unreadable: ignored
