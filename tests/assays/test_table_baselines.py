"""Baselines read from the catalog with a real MLServe: a column of a dataset
version (CSV, then Parquet) and of a model version's data artifact, previewed
and stored with its version pinned; and each bad column answered with its exact
code, nothing stored."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path

import grpc
import pyarrow as pa
import pyarrow.parquet as pa_parquet
import pytest

from mlserve_api.v1 import assay_pb2, assay_pb2_grpc, dataset_pb2, model_pb2
from mlserve_client import Client
from tests.support.checks import delete_model_quietly, expect_error
from tests.support.commands import mlserve_cli
from tests.support.mlserve import MLServeProcess, Stubs
from tests.support.models import scale_model_files
from tests.support.pipelines import upload
from tests.support.uploading import manifest
from tests.support.users import PID, make_user

ROWS = 50
VALUES = [i / ROWS for i in range(ROWS)]
# x: the baseline's numbers; city: text, not numbers.
CSV = ("x,city\n" + "".join(f"{v},c{i % 3}\n" for i, v in enumerate(VALUES))).encode()


def _parquet() -> bytes:
    sink = io.BytesIO()
    pa_parquet.write_table(pa.table({"x": pa.array([v + 5 for v in VALUES], pa.float32())}), sink)
    return sink.getvalue()


def _send_dataset(stubs: Stubs, dataset: str, path: str, data: bytes) -> dataset_pb2.DatasetVersion:
    files = {path: data}
    messages = [
        dataset_pb2.UploadDatasetVersionRequest(
            header=dataset_pb2.DatasetUploadHeader(dataset=dataset, files=manifest(files))
        ),
        dataset_pb2.UploadDatasetVersionRequest(
            chunk=model_pb2.FileChunk(path=path, offset=0, data=data)
        ),
    ]
    version: dataset_pb2.DatasetVersion = stubs.datasets.UploadDatasetVersion(
        iter(messages), metadata=stubs.auth, timeout=60
    )
    return version


def _attach(stubs: Stubs, model: str, path: str, data: bytes) -> None:
    header = model_pb2.ArtifactUploadHeader(
        model=model,
        version=1,
        kind=model_pb2.ARTIFACT_KIND_DATA,
        file=model_pb2.FileManifest(
            path=path, size=len(data), sha256=hashlib.sha256(data).hexdigest()
        ),
    )
    messages = [
        model_pb2.UploadArtifactRequest(header=header),
        model_pb2.UploadArtifactRequest(chunk=model_pb2.FileChunk(path=path, offset=0, data=data)),
    ]
    stubs.models.UploadArtifact(iter(messages), metadata=stubs.auth, timeout=60)


@pytest.fixture(scope="module")
def assays(stubs: Stubs) -> assay_pb2_grpc.AssayServiceStub:
    return assay_pb2_grpc.AssayServiceStub(stubs.channel)


@pytest.fixture(scope="module")
def model(stubs: Stubs) -> Iterator[str]:
    """A model with a 4-element FP32 input and a CSV data artifact (x, city)."""
    name = f"t-assay-table-{PID}"
    upload(stubs, scale_model_files(name, dims=(4,)), name)
    _attach(stubs, name, "train.csv", CSV)
    yield name
    delete_model_quietly(stubs, name)


@pytest.fixture(scope="module")
def dataset(stubs: Stubs) -> Iterator[str]:
    """A private dataset: version 1 a CSV (x, city), version 2 a Parquet file (x + 5)."""
    name = f"t-assay-ds-{PID}"
    stubs.datasets.CreateDataset(
        dataset_pb2.CreateDatasetRequest(dataset=dataset_pb2.Dataset(name=name)),
        metadata=stubs.auth,
    )
    _send_dataset(stubs, name, "train.csv", CSV)
    _send_dataset(stubs, name, "shifted.parquet", _parquet())
    yield name
    stubs.datasets.DeleteDataset(dataset_pb2.DeleteDatasetRequest(name=name), metadata=stubs.auth)


def _assay(model: str, name: str, baseline: assay_pb2.AssayBaseline) -> assay_pb2.Assay:
    return assay_pb2.Assay(
        name=name,
        model=model,
        path=assay_pb2.AssayPath(tensor="input INPUT 0"),
        baseline=baseline,
        window=assay_pb2.AssayWindow(width_seconds=60),
        summarizer=assay_pb2.AssaySummarizer(num_bins=5),
    )


def _column(dataset: str, column: str, version: int = 0) -> assay_pb2.AssayBaseline:
    return assay_pb2.AssayBaseline(
        dataset=assay_pb2.AssayDatasetColumn(dataset=dataset, version=version, column=column)
    )


def _names(assays: assay_pb2_grpc.AssayServiceStub, stubs: Stubs, model: str) -> list[str]:
    answer = assays.ListAssays(assay_pb2.ListAssaysRequest(model=model), metadata=stubs.auth)
    return [a.name for a in answer.assays]


def test_a_dataset_column_is_previewed_csv_and_parquet_alike(
    assays: assay_pb2_grpc.AssayServiceStub, stubs: Stubs, model: str, dataset: str
) -> None:
    first = assays.PreviewBaseline(
        assay_pb2.PreviewBaselineRequest(assay=_assay(model, "", _column(dataset, "x", 1))),
        metadata=stubs.auth,
    )
    assert (first.count, first.min, first.max) == (ROWS, 0.0, pytest.approx(0.98))
    assert list(first.edges) == pytest.approx([0.0, 0.196, 0.392, 0.588, 0.784, 0.98])
    assert list(first.counts) == [0, 10, 10, 10, 10, 10, 0]
    latest = assays.PreviewBaseline(
        assay_pb2.PreviewBaselineRequest(assay=_assay(model, "", _column(dataset, "x"))),
        metadata=stubs.auth,
    )
    assert (latest.count, latest.min) == (ROWS, 5.0)  # version 2, the Parquet file


def test_a_stored_assay_keeps_the_dataset_version_it_read(
    assays: assay_pb2_grpc.AssayServiceStub, stubs: Stubs, model: str, dataset: str
) -> None:
    name = f"{model}-ds"
    created = assays.CreateAssay(
        assay_pb2.CreateAssayRequest(assay=_assay(model, name, _column(dataset, "x"))),
        metadata=stubs.auth,
    )
    try:
        assert created.baseline.dataset == assay_pb2.AssayDatasetColumn(
            dataset=dataset, version=2, column="x"
        )
        got = assays.GetAssay(assay_pb2.GetAssayRequest(name=name), metadata=stubs.auth)
        assert got.baseline == created.baseline
    finally:
        assays.DeleteAssay(assay_pb2.DeleteAssayRequest(name=name), metadata=stubs.auth)


def test_a_data_artifact_column_is_a_baseline(
    assays: assay_pb2_grpc.AssayServiceStub, stubs: Stubs, model: str
) -> None:
    baseline = assay_pb2.AssayBaseline(
        artifact=assay_pb2.AssayArtifactColumn(model=model, path="train.csv", column="x")
    )
    summary = assays.PreviewBaseline(
        assay_pb2.PreviewBaselineRequest(assay=_assay(model, "", baseline)), metadata=stubs.auth
    )
    assert (summary.count, summary.max) == (ROWS, pytest.approx(0.98))


def test_an_unknown_column_is_invalid_naming_it_and_the_columns_there(
    assays: assay_pb2_grpc.AssayServiceStub, stubs: Stubs, model: str, dataset: str
) -> None:
    name = f"{model}-unknown"
    error = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        assays.CreateAssay,
        assay_pb2.CreateAssayRequest(assay=_assay(model, name, _column(dataset, "fare", 1))),
        metadata=stubs.auth,
    )
    assert "'fare'" in error.details()
    assert "x, city" in error.details()
    assert name not in _names(assays, stubs, model)


def test_a_text_column_is_invalid(
    assays: assay_pb2_grpc.AssayServiceStub, stubs: Stubs, model: str, dataset: str
) -> None:
    name = f"{model}-text"
    for baseline in (
        _column(dataset, "city", 1),
        assay_pb2.AssayBaseline(
            artifact=assay_pb2.AssayArtifactColumn(model=model, path="train.csv", column="city")
        ),
    ):
        error = expect_error(
            grpc.StatusCode.INVALID_ARGUMENT,
            assays.CreateAssay,
            assay_pb2.CreateAssayRequest(assay=_assay(model, name, baseline)),
            metadata=stubs.auth,
        )
        assert "not numeric" in error.details()
    error = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        assays.PreviewBaseline,
        assay_pb2.PreviewBaselineRequest(assay=_assay(model, "", _column(dataset, "city", 1))),
        metadata=stubs.auth,
    )
    assert "'city'" in error.details()
    assert name not in _names(assays, stubs, model)


def test_a_dataset_the_caller_may_not_see_answers_like_a_missing_one(
    assays: assay_pb2_grpc.AssayServiceStub, stubs: Stubs, dataset: str
) -> None:
    outsider = make_user(stubs, f"t-assay-ds-outsider-{PID}", "editor")
    theirs = assay_pb2_grpc.AssayServiceStub(outsider.channel)
    own = f"t-assay-own-{PID}"
    upload(outsider, scale_model_files(own, dims=(4,)), own)
    try:
        details = []
        for name in (dataset, f"{dataset}-nope"):
            error = expect_error(
                grpc.StatusCode.NOT_FOUND,
                theirs.CreateAssay,
                assay_pb2.CreateAssayRequest(assay=_assay(own, f"{own}-a", _column(name, "x"))),
                metadata=outsider.auth,
            )
            details.append((error.details() or "").replace(name, "NAME"))
            expect_error(
                grpc.StatusCode.NOT_FOUND,
                theirs.PreviewBaseline,
                assay_pb2.PreviewBaselineRequest(assay=_assay(own, "", _column(name, "x"))),
                metadata=outsider.auth,
            )
        assert details[0] == details[1]
        assert _names(theirs, outsider, own) == []
    finally:
        delete_model_quietly(stubs, own)


def test_the_client_and_cli_read_a_dataset_baseline_from_yaml(
    mlserve: MLServeProcess, stubs: Stubs, model: str, dataset: str, tmp_path: Path
) -> None:
    name = f"{model}-yaml"
    spec = tmp_path / "drift.yaml"
    spec.write_text(
        f"name: {name}\nmodel: {model}\npath: input INPUT 0\n"
        f"baseline: {{dataset: {dataset}, version: 1, column: x}}\n"
        "window: {width: 1h}\n"
    )
    with Client(address=mlserve.address, key=stubs.key) as client:
        created = client.create_assay(spec)
        try:
            assert created.baseline.dataset.column == "x"
            assert created.baseline.dataset.version == 1
            shown = mlserve_cli(mlserve, "assays", "get", name)
            assert f"baseline dataset {dataset} version 1 column x" in shown.stdout
        finally:
            client.assays.DeleteAssay(assay_pb2.DeleteAssayRequest(name=name))


def test_an_artifact_whose_column_turns_to_text_or_that_does_not_parse_is_invalid(
    assays: assay_pb2_grpc.AssayServiceStub, stubs: Stubs, model: str
) -> None:
    """Data artifacts are not parsed at upload: numbers for the first 1 MiB and text
    later, or bytes that are not Parquet, are INVALID_ARGUMENT (were INTERNAL), nothing
    stored; ids beyond float64's precision are read."""
    _attach(stubs, model, "late.csv", b"x,id\n" + b"1,1152921504606846977\n" * 60_000 + b"a,1\n")
    _attach(stubs, model, "broken.parquet", b"not parquet at all")
    name = f"{model}-late"
    for path, column, said in (
        ("late.csv", "x", "is string, not numeric"),
        ("broken.parquet", "x", "does not read as Parquet"),
    ):
        baseline = assay_pb2.AssayBaseline(
            artifact=assay_pb2.AssayArtifactColumn(model=model, path=path, column=column)
        )
        error = expect_error(
            grpc.StatusCode.INVALID_ARGUMENT,
            assays.CreateAssay,
            assay_pb2.CreateAssayRequest(assay=_assay(model, name, baseline)),
            metadata=stubs.auth,
        )
        assert said in error.details()
    assert name not in _names(assays, stubs, model)
    ids = assay_pb2.AssayBaseline(
        artifact=assay_pb2.AssayArtifactColumn(model=model, path="late.csv", column="id")
    )
    summary = assays.PreviewBaseline(
        assay_pb2.PreviewBaselineRequest(assay=_assay(model, "", ids)), metadata=stubs.auth
    )
    assert summary.count == 60_001
