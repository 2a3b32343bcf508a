"""``mlserve uploads list`` and ``mlserve uploads cancel`` against a real MLServe."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.commands import mlserve_cli
from tests.support.mlserve import MLServeProcess, started_without_triton
from tests.support.uploads import begin


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLServeProcess]:
    with started_without_triton(tmp_path_factory.mktemp("cli-uploads-home")) as process:
        yield process


def test_list_and_cancel_an_upload_from_the_command_line(
    server: MLServeProcess, model_name: str
) -> None:
    stubs = server.stubs()
    upload_id = f"{model_name}-cli"
    files = {"model.py": b"# cli\n", "weights.bin": os.urandom(4000)}
    begin(stubs, model_name, upload_id, files)

    listed = mlserve_cli(server, "uploads", "list")
    assert listed.returncode == 0, listed.stderr
    (row,) = [line for line in listed.stdout.splitlines() if line.startswith(upload_id)]
    assert row.split()[1:6] == [model_name, "admin", "RECEIVING", "2000", str(4000 + 6)]

    cancelled = mlserve_cli(server, "uploads", "cancel", upload_id)
    assert (cancelled.returncode, cancelled.stdout) == (0, f"cancelled upload {upload_id}\n")
    assert upload_id not in mlserve_cli(server, "uploads", "list", "--all").stdout
    assert not (server.home / "staging" / upload_id).exists()

    again = mlserve_cli(server, "uploads", "cancel", upload_id)
    assert again.returncode == 1
    assert f"NOT_FOUND: upload {upload_id!r} does not exist" in again.stderr
    stubs.channel.close()
