"""Where a downloaded artifact lands, and that a failed one leaves no partial file behind."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from mlserve_api.v1 import model_pb2
from mlserve_client import artifact_destination, partial_file
from mlserve_client.download import ArtifactWriter


def test_a_folder_or_a_trailing_slash_means_inside_it(tmp_path: Path) -> None:
    assert artifact_destination(tmp_path, "train.csv") == tmp_path / "train.csv"
    assert artifact_destination(f"{tmp_path}/new/", "train.csv") == tmp_path / "new/train.csv"
    assert (tmp_path / "new").is_dir()
    assert artifact_destination(str(tmp_path / "x.csv"), "train.csv") == tmp_path / "x.csv"
    assert not (tmp_path / "x.csv").exists()


def test_a_file_that_cannot_be_put_in_place_removes_its_part(tmp_path: Path) -> None:
    data = b"abc" * 1000
    artifact = model_pb2.Artifact(
        path="train.csv", size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest()
    )
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "keeps-it-non-empty").write_text("x")
    with ArtifactWriter(blocked, artifact) as writer:  # os.replace onto a folder fails
        writer.write(model_pb2.FileChunk(path="train.csv", offset=0, data=data))
        with pytest.raises(IsADirectoryError):
            writer.finish()
    assert not partial_file(blocked).exists()
