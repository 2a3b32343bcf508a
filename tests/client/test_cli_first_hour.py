"""What a new user meets in the first hour, against a real MLServe and Triton: keys never
echoed, options anywhere, "already stored", artifacts downloaded into folders, paths as
str, and the one line ``mlserve serve`` prints once it serves."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mlserve_api.v1 import model_pb2
from mlserve_client import Client
from tests.support.commands import mlserve_cli
from tests.support.mlserve import MLServeProcess, free_port

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def bare_cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    """``mlserve ARGS`` exactly as given: no --home or --address added."""
    return subprocess.run(
        [sys.executable, "-m", "mlserve", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "MLSERVE_HOME": str(home)},
    )


def test_no_error_shows_the_key(mlserve: MLServeProcess) -> None:
    key = mlserve.key
    secret = key.rsplit("_", 1)[-1]
    prefix = key.split("_")[1]
    wrong = f"mls_{prefix}_{'x' * len(secret)}"
    unused = f"127.0.0.1:{free_port()}"
    failures = [
        bare_cli("--address", mlserve.address, key, "models", "list", home=mlserve.home),
        bare_cli("--address", mlserve.address, "models", "list", key, home=mlserve.home),
        bare_cli("--key", key, "--address", mlserve.address, "models", "lst", home=mlserve.home),
        bare_cli("--key", key, "--address", unused, "models", "list", home=mlserve.home),
        bare_cli("--key", key, "--address", mlserve.address, "models", "get", "t-none-such",
                 home=mlserve.home),
        bare_cli("--key", wrong, "--address", mlserve.address, "models", "list", home=mlserve.home),
        bare_cli("--address", mlserve.address, "models", "list", "--key", f"{key}\n",
                 home=mlserve.home),
    ]  # fmt: skip
    for failed in failures:
        assert failed.returncode != 0, failed.args
        assert "error" in failed.stderr, failed.args
        assert secret not in failed.stderr + failed.stdout, failed.args
    assert "NOT_FOUND" in failures[4].stderr
    assert "UNAUTHENTICATED" in failures[5].stderr


def test_options_work_before_and_after_the_command(mlserve: MLServeProcess) -> None:
    elsewhere = mlserve.home.parent / "not-the-home"
    before = bare_cli("--home", str(mlserve.home), "--address", mlserve.address,
                      "models", "list", home=elsewhere)  # fmt: skip
    after = bare_cli("models", "list", "--home", str(mlserve.home), "--address", mlserve.address,
                     home=elsewhere)  # fmt: skip
    mixed = bare_cli("--key", mlserve.key, "servers", "list", "--address", mlserve.address,
                     home=elsewhere)  # fmt: skip
    for done in (before, after, mixed):
        assert done.returncode == 0, done.stderr
    assert "local" in mixed.stdout


def test_registering_a_server_talks_to_mlserve_not_to_that_address(
    mlserve: MLServeProcess, model_name: str
) -> None:
    name = model_name[-40:].strip("-").lower()
    triton = f"127.0.0.1:{free_port()}"  # nothing listens there: the server is UNREACHABLE
    registered = mlserve_cli(mlserve, "servers", "register", name, triton, "--label", "zone=a")
    assert registered.returncode == 0, registered.stderr
    assert f"registered server {name} at {triton}" in registered.stdout
    deleted = mlserve_cli(mlserve, "servers", "delete", name)
    assert deleted.returncode == 0, deleted.stderr


def test_uploading_stored_content_says_already_stored(
    mlserve: MLServeProcess, tmp_path: Path, model_name: str
) -> None:
    model_dir = tmp_path / "add"
    shutil.copytree(EXAMPLES / "add", model_dir)
    first = mlserve_cli(mlserve, "models", "upload", str(model_dir), "--name", model_name)
    assert first.returncode == 0, first.stderr
    assert f"model {model_name} version 1 " in first.stdout
    again = mlserve_cli(mlserve, "models", "upload", str(model_dir), "--name", model_name)
    assert again.returncode == 0, again.stderr
    assert f"model {model_name}: already stored as version 1" in again.stdout
    other_id = mlserve_cli(mlserve, "models", "upload", str(model_dir), "--name", model_name,
                           "--upload-id", f"other-{model_name}"[:60])  # fmt: skip
    assert other_id.returncode == 0, other_id.stderr
    assert "already stored as version 1" in other_id.stdout
    (model_dir / "1" / "model.py").write_text((model_dir / "1" / "model.py").read_text() + "#\n")
    changed = mlserve_cli(mlserve, "models", "upload", str(model_dir), "--name", model_name)
    assert f"model {model_name} version 2 " in changed.stdout
    with Client(mlserve.address, home=str(mlserve.home)) as client:
        versions = [v.version for v in client.list_versions(model_name)]
        client.models.DeleteModel(model_pb2.DeleteModelRequest(name=model_name))
    assert versions == [1, 2]


def test_artifacts_download_into_a_folder_or_a_path_ending_in_a_slash(
    mlserve: MLServeProcess, tmp_path: Path, model_name: str
) -> None:
    with Client(mlserve.address, home=mlserve.home) as client:
        client.upload(str(EXAMPLES / "add"), model_name)
    data = tmp_path / "train.csv"
    data.write_bytes(os.urandom(300_000))
    attached = mlserve_cli(mlserve, "artifacts", "upload", model_name, "1", str(data),
                           "--kind", "data")  # fmt: skip
    assert attached.returncode == 0, attached.stderr

    existing = tmp_path / "existing"
    existing.mkdir()
    into_folder = mlserve_cli(mlserve, "artifacts", "download", model_name, "1", "train.csv",
                              str(existing))  # fmt: skip
    assert into_folder.returncode == 0, into_folder.stderr
    assert (existing / "train.csv").read_bytes() == data.read_bytes()

    (existing / "train.csv").unlink()
    (existing / "train.csv.part").write_bytes(b"not these bytes" * 100)  # a bad resume
    bad = mlserve_cli(mlserve, "artifacts", "download", model_name, "1", "train.csv",
                      str(existing))  # fmt: skip
    assert bad.returncode == 1
    assert "train.csv: sha256 does not match the manifest" in bad.stderr
    assert not (existing / "train.csv.part").exists()  # a failed file leaves nothing behind
    assert not (existing / "train.csv").exists()

    new_folder = f"{tmp_path}/downloads/"
    with_slash = mlserve_cli(mlserve, "artifacts", "download", model_name, "1", "train.csv",
                             new_folder)  # fmt: skip
    assert with_slash.returncode == 0, with_slash.stderr
    assert (tmp_path / "downloads" / "train.csv").read_bytes() == data.read_bytes()
    assert not list(tmp_path.rglob("*.part"))

    with Client(mlserve.address, home=str(mlserve.home)) as client:
        named = client.download_artifact(model_name, 1, "train.csv", str(tmp_path / "named.csv"))
        assert named.size_bytes == 300_000
        client.models.DeleteModel(model_pb2.DeleteModelRequest(name=model_name))
    assert (tmp_path / "named.csv").read_bytes() == data.read_bytes()


def test_serve_says_where_things_are_once_it_serves(mlserve: MLServeProcess) -> None:
    log = mlserve.log.read_text()
    assert f"MLServe listening on {mlserve.address} (TLS off)" in log
    assert (
        f"ready: serving on {mlserve.address}, TLS off; admin key in {mlserve.home}/admin.key; "
        f"MLServe logs here; Triton's log {mlserve.home}/triton.log"
    ) in log


@pytest.mark.parametrize("home_type", [str, Path])
def test_client_takes_home_as_str_or_path(mlserve: MLServeProcess, home_type: type) -> None:
    with Client(mlserve.address, home=home_type(mlserve.home)) as client:
        assert any(server.name == "local" for server in client.list_servers())
