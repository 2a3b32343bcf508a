"""Datasets against a real MLServe: create, upload CSV and Parquet (schema read from
the file), list by tags with paging, update by mask, tags and tag search,
visibility, the training dataset of a model version, download, delete; and the
bad inputs, each with its exact code and nothing committed or left staged."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator, Mapping
from typing import Any

import grpc
import pyarrow as pa
import pyarrow.parquet as pa_parquet
import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from mlserve_api.v1 import dataset_pb2, model_pb2
from tests.support.checks import delete_model_quietly, expect_error, tree
from tests.support.mlserve import MLServeProcess, Stubs
from tests.support.uploading import get_upload, manifest, upload
from tests.support.users import PID, make_user

Code = grpc.StatusCode
Request = dataset_pb2.UploadDatasetVersionRequest
DIABETES_CSV = b"age,bmi,target\n59,32.1,151\n48,21.6,75\n72,30.5,141\n"


def parquet_bytes() -> bytes:
    table = pa.table({"age": pa.array([1, 2], pa.int32()), "name": ["a", "b"]})
    sink = io.BytesIO()
    pa_parquet.write_table(table, sink)
    return sink.getvalue()


def dataset_stream(
    dataset: str, files: Mapping[str, bytes], *, upload_id: str = ""
) -> Iterator[Request]:
    yield Request(
        header=dataset_pb2.DatasetUploadHeader(
            dataset=dataset, upload_id=upload_id, files=manifest(files)
        )
    )
    for path, data in sorted(files.items()):
        yield Request(chunk=model_pb2.FileChunk(path=path, offset=0, data=data))


def send(stubs: Stubs, messages: Iterator[Request]) -> Any:
    return stubs.datasets.UploadDatasetVersion(messages, metadata=stubs.auth, timeout=60)


def create(stubs: Stubs, name: str, **fields: Any) -> dataset_pb2.Dataset:
    request = dataset_pb2.CreateDatasetRequest(dataset=dataset_pb2.Dataset(name=name, **fields))
    return stubs.datasets.CreateDataset(request, metadata=stubs.auth)


def get(stubs: Stubs, name: str) -> dataset_pb2.Dataset:
    return stubs.datasets.GetDataset(dataset_pb2.GetDatasetRequest(name=name), metadata=stubs.auth)


def delete(stubs: Stubs, name: str) -> None:
    stubs.datasets.DeleteDataset(dataset_pb2.DeleteDatasetRequest(name=name), metadata=stubs.auth)


def names(datasets: Any) -> list[str]:
    return [d.name for d in datasets]


def listed(stubs: Stubs, **fields: Any) -> list[str]:
    request = dataset_pb2.ListDatasetsRequest(page_size=1000, **fields)
    return names(stubs.datasets.ListDatasets(request, metadata=stubs.auth).datasets)


def search(stubs: Stubs, *terms: str) -> list[str]:
    request = dataset_pb2.SearchDatasetsRequest(query=list(terms))
    return names(stubs.datasets.SearchDatasets(request, metadata=stubs.auth).datasets)


def tag_counts(stubs: Stubs) -> dict[str, int]:
    response = stubs.datasets.ListDatasetTags(
        dataset_pb2.ListDatasetTagsRequest(), metadata=stubs.auth
    )
    return {entry.tag: entry.count for entry in response.tags}


@pytest.fixture
def dataset(stubs: Stubs, model_name: str) -> Iterator[str]:
    name = "ds-" + model_name
    create(stubs, name, description="diabetes", tags=["diabetes", "tabular"])
    yield name
    if name in listed(stubs, name_prefix=name):
        delete(stubs, name)


def storage(mlserve: MLServeProcess) -> dict[str, Any]:
    """The files the upload machinery keeps on disk, staged and stored (the empty shard
    directories garbage collection leaves are not content)."""
    return {
        part: {
            path: entry for path, entry in tree(mlserve.home / part).items() if entry[0] != "dir"
        }
        for part in ("staging", "blobs")
    }


def test_csv_and_parquet_versions_carry_the_schema_read_from_the_file(
    stubs: Stubs, dataset: str
) -> None:
    first = send(stubs, dataset_stream(dataset, {"train.csv": DIABETES_CSV}))
    assert first.version == 1
    assert [(c.name, c.type) for c in first.columns] == [
        ("age", "int64"),
        ("bmi", "double"),
        ("target", "int64"),
    ]
    assert first.row_count == 3
    assert first.files[0].file.sha256 == hashlib.sha256(DIABETES_CSV).hexdigest()

    again = send(stubs, dataset_stream(dataset, {"train.csv": DIABETES_CSV}))
    assert (again.version, again.sha256) == (1, first.sha256)  # identical content: same version

    second = send(stubs, dataset_stream(dataset, {"part-0.parquet": parquet_bytes()}))
    assert second.version == 2
    assert [(c.name, c.type) for c in second.columns] == [("age", "int32"), ("name", "string")]
    assert second.row_count == 2

    latest = stubs.datasets.GetDatasetVersion(
        dataset_pb2.GetDatasetVersionRequest(dataset=dataset), metadata=stubs.auth
    )
    assert latest.version == 2
    record = get(stubs, dataset)
    assert (record.latest_version, record.version_count) == (2, 2)
    assert record.description == "diabetes"
    assert list(record.tags) == ["diabetes", "tabular"]
    assert record.visibility == model_pb2.VISIBILITY_PRIVATE

    chunks = stubs.datasets.DownloadDatasetVersion(
        dataset_pb2.DownloadDatasetVersionRequest(dataset=dataset, version=1), metadata=stubs.auth
    )
    assert b"".join(piece.data for piece in chunks) == DIABETES_CSV
    versions = stubs.datasets.ListDatasetVersions(
        dataset_pb2.ListDatasetVersionsRequest(dataset=dataset, page_size=1), metadata=stubs.auth
    )
    assert [v.version for v in versions.versions] == [1]
    assert versions.next_page_token


def test_list_filters_by_tags_and_pages(stubs: Stubs, model_name: str) -> None:
    made = [f"ds-page-{index}-{model_name}" for index in range(3)]
    tags = [["pg-a", "pg-b"], ["pg-a"], ["pg-c"]]
    for name, carried in zip(made, tags, strict=True):
        create(stubs, name, tags=carried)
    try:
        assert listed(stubs, tags_all=["pg-a", "pg-b"]) == [made[0]]
        assert listed(stubs, tags_any=["pg-b", "pg-c"]) == [made[0], made[2]]
        seen, token = [], ""
        while True:
            page = stubs.datasets.ListDatasets(
                dataset_pb2.ListDatasetsRequest(page_size=1, page_token=token, tags_any=["pg-a"]),
                metadata=stubs.auth,
            )
            seen += names(page.datasets)
            token = page.next_page_token
            if not token:
                break
        assert seen == made[:2]
        assert search(stubs, "#pg-a") == made[:2]
        assert search(stubs, "#pg-a", "#pg-b") == [made[0]]
        assert search(stubs, "#no-such-tag-anywhere") == []  # an empty answer, not an error
        counts = tag_counts(stubs)
        assert (counts["pg-a"], counts["pg-b"], counts["pg-c"]) == (2, 1, 1)
    finally:
        for name in made:
            delete(stubs, name)


def test_update_changes_only_the_masked_fields(stubs: Stubs, dataset: str) -> None:
    request = dataset_pb2.UpdateDatasetRequest(
        dataset=dataset_pb2.Dataset(name=dataset, description="ignored", tags=["renamed"]),
        update_mask=FieldMask(paths=["tags"]),
    )
    updated = stubs.datasets.UpdateDataset(request, metadata=stubs.auth)
    assert list(updated.tags) == ["renamed"]
    assert updated.description == "diabetes"
    bad = dataset_pb2.UpdateDatasetRequest(
        dataset=dataset_pb2.Dataset(name=dataset), update_mask=FieldMask(paths=["workspace"])
    )
    expect_error(Code.INVALID_ARGUMENT, stubs.datasets.UpdateDataset, bad, metadata=stubs.auth)
    assert list(get(stubs, dataset).tags) == ["renamed"]


def test_private_datasets_are_invisible_to_other_workspaces(stubs: Stubs, dataset: str) -> None:
    outsider = make_user(stubs, f"ds-outsider-{PID}-{dataset[-12:]}", "editor")
    missing = expect_error(Code.NOT_FOUND, get, stubs, "ds-never-created-" + dataset)
    hidden = expect_error(Code.NOT_FOUND, get, outsider, dataset)
    assert hidden.details() == missing.details().replace("ds-never-created-" + dataset, dataset)
    assert dataset not in listed(outsider)
    assert dataset not in search(outsider, "#diabetes")
    assert tag_counts(outsider).get("diabetes", 0) == tag_counts(stubs)["diabetes"] - 1
    expect_error(Code.NOT_FOUND, send, outsider, dataset_stream(dataset, {"x.csv": DIABETES_CSV}))
    public = dataset_pb2.UpdateDatasetRequest(
        dataset=dataset_pb2.Dataset(name=dataset, visibility=model_pb2.VISIBILITY_PUBLIC),
        update_mask=FieldMask(paths=["visibility"]),
    )
    stubs.datasets.UpdateDataset(public, metadata=stubs.auth)
    assert get(outsider, dataset).name == dataset
    assert dataset in search(outsider, "#diabetes")
    # Public means readable, not writable by another workspace.
    expect_error(Code.PERMISSION_DENIED, delete, outsider, dataset)


def test_a_model_version_names_its_training_dataset_which_then_cannot_go(
    stubs: Stubs, dataset: str, model_name: str
) -> None:
    trained_on = send(stubs, dataset_stream(dataset, {"train.csv": DIABETES_CSV}))
    files = {"model.py": b"# trained\n"}
    messages = [
        model_pb2.UploadModelVersionRequest(
            header=model_pb2.UploadHeader(
                model=model_name,
                files=manifest(files),
                training_dataset=model_pb2.DatasetVersionRef(dataset=dataset, version=0),
            )
        ),
        model_pb2.UploadModelVersionRequest(
            chunk=model_pb2.FileChunk(path="model.py", offset=0, data=files["model.py"])
        ),
    ]
    try:
        version = upload(stubs, messages)
        assert version.training_dataset.dataset == dataset
        assert version.training_dataset.version == trained_on.version
        shown = stubs.models.GetModelVersion(
            model_pb2.GetModelVersionRequest(model=model_name, version=version.version),
            metadata=stubs.auth,
        )
        assert shown.training_dataset == version.training_dataset
        error = expect_error(Code.FAILED_PRECONDITION, delete, stubs, dataset)
        assert model_name in error.details()
        assert get(stubs, dataset).version_count == 1
    finally:
        delete_model_quietly(stubs, model_name)
    delete(stubs, dataset)
    expect_error(Code.NOT_FOUND, get, stubs, dataset)


def test_a_missing_training_dataset_is_not_found_and_nothing_is_written(
    stubs: Stubs, model_name: str
) -> None:
    files = {"model.py": b"# untrained\n"}
    header = model_pb2.UploadModelVersionRequest(
        header=model_pb2.UploadHeader(
            model=model_name,
            files=manifest(files),
            training_dataset=model_pb2.DatasetVersionRef(dataset="ds-nowhere-" + model_name),
        )
    )
    expect_error(Code.NOT_FOUND, upload, stubs, [header])
    expect_error(
        Code.NOT_FOUND,
        stubs.models.GetModel,
        model_pb2.GetModelRequest(name=model_name),
        metadata=stubs.auth,
    )


@pytest.mark.parametrize(
    ("path", "data", "parser_says"),
    [
        ("ragged.csv", b"a,b\n1,2\n3\n", "Expected 2 columns, got 1"),
        ("empty.csv", b"", "Empty CSV file"),
        ("broken.parquet", b"not a parquet file at all", "Parquet magic bytes not found"),
    ],
    ids=["ragged-csv", "empty-csv", "broken-parquet"],
)
def test_a_malformed_file_is_invalid_argument_with_the_parsers_message_and_not_committed(
    stubs: Stubs, mlserve: MLServeProcess, dataset: str, path: str, data: bytes, parser_says: str
) -> None:
    upload_id = f"bad-{path.replace('.', '-')}-{PID}"
    before = storage(mlserve)
    error = expect_error(
        Code.INVALID_ARGUMENT,
        send,
        stubs,
        dataset_stream(dataset, {path: data}, upload_id=upload_id),
    )
    assert parser_says in error.details()
    assert path in error.details()
    assert get(stubs, dataset).version_count == 0
    expect_error(Code.NOT_FOUND, get_upload, stubs, upload_id)  # the upload was dropped
    assert storage(mlserve) == before  # no staged bytes, no blob left behind


def test_files_of_one_version_must_share_columns(
    stubs: Stubs, mlserve: MLServeProcess, dataset: str
) -> None:
    before = storage(mlserve)
    files = {"a.csv": DIABETES_CSV, "b.csv": b"other\n1\n"}
    error = expect_error(Code.INVALID_ARGUMENT, send, stubs, dataset_stream(dataset, files))
    assert "share one schema" in error.details()
    assert get(stubs, dataset).version_count == 0
    assert storage(mlserve) == before


@pytest.mark.parametrize(
    ("files", "code"),
    [
        ({"notes.txt": b"hello"}, Code.INVALID_ARGUMENT),
        ({}, Code.INVALID_ARGUMENT),
        ({"../escape.csv": DIABETES_CSV}, Code.INVALID_ARGUMENT),
    ],
    ids=["not-csv-or-parquet", "no-files", "escaping-path"],
)
def test_bad_headers_are_refused_before_any_byte(
    stubs: Stubs, mlserve: MLServeProcess, dataset: str, files: dict[str, bytes], code: Any
) -> None:
    before = storage(mlserve)
    expect_error(code, send, stubs, dataset_stream(dataset, files))
    assert get(stubs, dataset).version_count == 0
    assert storage(mlserve) == before


def test_bad_requests_name_what_is_wrong(stubs: Stubs, dataset: str) -> None:
    expect_error(Code.ALREADY_EXISTS, create, stubs, dataset)
    expect_error(Code.INVALID_ARGUMENT, create, stubs, "bad name!")
    expect_error(Code.INVALID_ARGUMENT, create, stubs, "ds-x-" + dataset, tags=[""])
    error = expect_error(Code.INVALID_ARGUMENT, search, stubs, "diabetes")
    assert "'#'" in error.details()
    expect_error(
        Code.NOT_FOUND,
        send,
        stubs,
        dataset_stream("ds-nowhere-" + dataset, {"x.csv": DIABETES_CSV}),
    )
    expect_error(
        Code.NOT_FOUND,
        stubs.datasets.GetDatasetVersion,
        dataset_pb2.GetDatasetVersionRequest(dataset=dataset, version=7),
        metadata=stubs.auth,
    )
    expect_error(
        Code.INVALID_ARGUMENT,
        stubs.datasets.ListDatasets,
        dataset_pb2.ListDatasetsRequest(page_token="garbage"),
        metadata=stubs.auth,
    )


def test_viewers_read_but_do_not_write(stubs: Stubs, dataset: str) -> None:
    viewer = make_user(stubs, f"ds-viewer-{PID}-{dataset[-12:]}", "viewer")
    expect_error(Code.PERMISSION_DENIED, create, viewer, "ds-by-viewer-" + dataset)
