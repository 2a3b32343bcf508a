"""``mlserve datasets`` and the Python client's dataset calls, as a new user would use
them, against a real MLServe; and the same through grpcurl (reflection)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pa_parquet

from mlserve_api.v1 import dataset_pb2
from mlserve_client import Client
from tests.support.commands import grpcurl, mlserve_cli
from tests.support.mlserve import MLServeProcess

CSV = b"age,bmi,target\n59,32.1,151\n48,21.6,75\n"


def test_the_cli_creates_uploads_finds_shows_downloads_and_deletes(
    mlserve: MLServeProcess, tmp_path: Path, model_name: str
) -> None:
    name = "cli-ds-" + model_name
    (tmp_path / "train.csv").write_bytes(CSV)
    made = mlserve_cli(mlserve, "datasets", "create", name, "--tag", "cli-diabetes")
    assert made.returncode == 0, made.stderr
    uploaded = mlserve_cli(mlserve, "datasets", "upload", name, str(tmp_path / "train.csv"))
    assert uploaded.returncode == 0, uploaded.stderr
    assert "version 1" in uploaded.stdout
    assert "2 rows" in uploaded.stdout
    assert "bmi:double" in uploaded.stdout
    shown = mlserve_cli(mlserve, "datasets", "show", name)
    assert "target" in shown.stdout
    assert "int64" in shown.stdout
    found = mlserve_cli(mlserve, "datasets", "search", "#cli-diabetes")
    assert name in found.stdout
    tags = mlserve_cli(mlserve, "datasets", "tags")
    assert "cli-diabetes" in tags.stdout
    listed = mlserve_cli(mlserve, "datasets", "list", "--tag", "cli-diabetes")
    assert name in listed.stdout
    fetched = mlserve_cli(mlserve, "datasets", "download", name, "1", str(tmp_path / "out"))
    assert fetched.returncode == 0, fetched.stderr
    assert (tmp_path / "out" / "train.csv").read_bytes() == CSV
    broken = tmp_path / "broken.csv"
    broken.write_bytes(b"a,b\n1\n")
    refused = mlserve_cli(mlserve, "datasets", "upload", name, str(broken))
    assert refused.returncode != 0
    assert "Expected 2 columns, got 1" in refused.stderr
    assert "Traceback" not in refused.stderr
    gone = mlserve_cli(mlserve, "datasets", "delete", name)
    assert gone.returncode == 0, gone.stderr
    assert name not in mlserve_cli(mlserve, "datasets", "list").stdout


def test_the_client_uploads_parquet_resumably_and_sends_stored_content_once(
    mlserve: MLServeProcess, tmp_path: Path, model_name: str
) -> None:
    name = "client-ds-" + model_name
    path = tmp_path / "part-0.parquet"
    pa_parquet.write_table(pa.table({"x": [1.5, 2.5, 3.5]}), path)
    with Client(mlserve.address, mlserve.key) as client:
        client.create_dataset(name, tags=["client-tag"])
        sent: list[int] = []
        first = client.upload_dataset(name, [path], progress=lambda done, total: sent.append(done))
        assert [(c.name, c.type) for c in first.columns] == [("x", "double")]
        assert first.row_count == 3
        again: list[int] = []
        same = client.upload_dataset(name, [path], progress=lambda done, total: again.append(done))
        assert same.version == first.version
        assert again == []  # the header alone finished it: no byte travelled twice
        assert [d.name for d in client.search_datasets(["#client-tag"])] == [name]
        assert client.dataset_tags()["client-tag"] == 1
        client.download_dataset(name, 0, tmp_path / "back")
        assert (tmp_path / "back" / "part-0.parquet").read_bytes() == path.read_bytes()
        client.datasets.DeleteDataset(dataset_pb2.DeleteDatasetRequest(name=name))


def test_grpcurl_reaches_the_dataset_service_by_reflection(
    mlserve: MLServeProcess, model_name: str
) -> None:
    name = "grpcurl-ds-" + model_name
    body = json.dumps({"dataset": {"name": name, "tags": ["grpcurl-tag"]}})
    made = grpcurl(mlserve, "-d", body, mlserve.address, "mlserve.v1.DatasetService/CreateDataset")
    assert made.returncode == 0, made.stderr
    found = grpcurl(
        mlserve,
        "-d",
        json.dumps({"query": ["#grpcurl-tag"]}),
        mlserve.address,
        "mlserve.v1.DatasetService/SearchDatasets",
    )
    assert json.loads(found.stdout)["datasets"][0]["name"] == name
    none = grpcurl(
        mlserve,
        "-d",
        json.dumps({"query": ["#no-dataset-has-this"]}),
        mlserve.address,
        "mlserve.v1.DatasetService/SearchDatasets",
    )
    assert none.returncode == 0
    assert json.loads(none.stdout) == {}
    grpcurl(
        mlserve,
        "-d",
        json.dumps({"name": name}),
        mlserve.address,
        "mlserve.v1.DatasetService/DeleteDataset",
    )
