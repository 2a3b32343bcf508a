"""The Python client hashes while it sends, and remembers the digests the server
verified, so an unchanged file is named by its digest the next time (and content
the server stores is not sent again). Against a real MLServe."""

from __future__ import annotations

import json
import os
from pathlib import Path

import grpc
import pytest

from mlserve_client import Client
from mlserve_client.digests import ENV, DigestCache, file_identity
from tests.support.checks import delete_model_quietly, sha
from tests.support.mlserve import MLServeProcess, Stubs

MiB = 1024 * 1024


class Stopped(Exception):
    """Raised from the progress callback: the user stops the upload."""


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


@pytest.mark.parametrize("first_declares", [True, False], ids=["declared-first", "late-first"])
def test_a_resume_sends_the_header_the_upload_began_with(
    mlserve: MLServeProcess,
    stubs: Stubs,
    tmp_path: Path,
    model_name: str,
    monkeypatch: pytest.MonkeyPatch,
    first_declares: bool,
) -> None:
    """Begun with digests up front and resumed hashing while sending, or the other
    way round: the client adopts what the upload declared, so the resume is not
    refused as another file set."""
    monkeypatch.setenv(ENV, "off")
    folder = tmp_path / "model"
    folder.mkdir()
    weights = os.urandom(2 * MiB + 3)
    (folder / "model.py").write_text("# resumed\n")
    (folder / "weights.bin").write_bytes(weights)
    upload_id = f"{model_name}-u"

    def stop_after_the_first_chunk(done: int, total: int) -> None:
        if done > 0:
            raise Stopped

    with Client(mlserve.address, mlserve.key) as client:
        with pytest.raises(grpc.RpcError):  # the call is cancelled mid-stream
            client.upload(
                folder, model_name, upload_id=upload_id, prehash=first_declares,
                chunk_size=MiB, progress=stop_after_the_first_chunk,
            )  # fmt: skip
        begun = client.find_upload(upload_id)
        assert begun is not None
        declared = {f.path: f.sha256 for f in begun.files}
        assert (declared["weights.bin"] == sha(weights)) is first_declares
        version = client.upload(folder, model_name, upload_id=upload_id, prehash=not first_declares)
    assert {f.path: f.sha256 for f in version.files}["weights.bin"] == sha(weights)
    delete_model_quietly(stubs, model_name)
