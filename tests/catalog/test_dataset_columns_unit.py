"""read_numeric_column over real blobs in a LocalRepository: CSV and Parquet read
by Arrow, one column cast to float64 (nulls as NaN); a missing column names the
ones there; a text column is refused."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pa_parquet
import pytest

from mlserve.catalog.datasets import read_numeric_column
from mlserve.core.errors import InvalidArgument
from mlserve.storage.blobs import FileSpec
from mlserve.storage.repository import LocalRepository


def _stored(repository: LocalRepository, path: str, data: bytes) -> FileSpec:
    sha256 = hashlib.sha256(data).hexdigest()
    staged = repository.staged_file("u1", path)
    staged.parent.mkdir(parents=True, exist_ok=True)
    staged.write_bytes(data)
    repository.store_blob("u1", path, sha256)
    return FileSpec(path=path, size=len(data), sha256=sha256)


@pytest.fixture
def repository(tmp_path: Path) -> LocalRepository:
    return LocalRepository(tmp_path / "repository", tmp_path / "staging", tmp_path / "blobs")


def _parquet(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pa_parquet.write_table(table, sink)
    return sink.getvalue()


def test_csv_and_parquet_files_are_read_in_order_as_float64(repository: LocalRepository) -> None:
    files = [
        _stored(repository, "a.csv", b"x,city\n1,a\n2,b\n,c\n"),
        _stored(repository, "b.parquet", _parquet(pa.table({"x": pa.array([3, 4], pa.int8())}))),
    ]
    values = read_numeric_column(repository, files, "x", "dataset 'd' version 1")
    assert values.dtype == np.float64
    np.testing.assert_array_equal(values, [1.0, 2.0, np.nan, 3.0, 4.0])


def test_a_missing_column_names_the_columns_there(repository: LocalRepository) -> None:
    files = [_stored(repository, "a.csv", b"x,city\n1,a\n")]
    with pytest.raises(InvalidArgument) as caught:
        read_numeric_column(repository, files, "fare", "dataset 'd' version 1")
    assert caught.value.message == (
        "column 'fare': dataset 'd' version 1 has no such column; its columns: x, city"
    )


@pytest.mark.parametrize("path", ["a.csv", "a.parquet"])
def test_a_text_column_is_not_numeric(repository: LocalRepository, path: str) -> None:
    data = b"x,city\n1,a\n" if path.endswith(".csv") else _parquet(pa.table({"city": ["a"]}))
    files = [_stored(repository, path, data)]
    with pytest.raises(InvalidArgument, match="'city' of dataset 'd' version 1 is string, not"):
        read_numeric_column(repository, files, "city", "dataset 'd' version 1")


def test_the_type_is_every_rows_not_the_first_blocks(repository: LocalRepository) -> None:
    """Arrow guesses a CSV column's type from its first block (1 MiB): numbers there and
    text later is refused as text; blank there and numbers later is read (it was
    refused as null, or read and then failed the cast: INTERNAL)."""
    block = b"1\n" * 600_000  # 1.2 MB: beyond the first block
    late_text = [_stored(repository, "late.csv", b"x\n" + block + b"seven\n")]
    with pytest.raises(InvalidArgument, match="'x' of artifact 'a' is string, not numeric"):
        read_numeric_column(repository, late_text, "x", "artifact 'a'")
    late_numbers = [_stored(repository, "blank.csv", b"x,y\n" + b",1\n" * 600_000 + b"2.5,1\n")]
    values = read_numeric_column(repository, late_numbers, "x", "artifact 'a'")
    assert values.size == 600_001
    assert values[-1] == 2.5
    assert np.isnan(values[:-1]).all()


def test_integers_beyond_float64s_precision_are_rounded(repository: LocalRepository) -> None:
    big = 2**60 + 1  # an id, say: a safe cast to float64 refuses it
    files = [_stored(repository, "ids.parquet", _parquet(pa.table({"id": pa.array([big, 1])})))]
    values = read_numeric_column(repository, files, "id", "dataset 'd' version 1")
    np.testing.assert_array_equal(values, [float(big), 1.0])


def test_a_file_that_does_not_parse_is_invalid(repository: LocalRepository) -> None:
    files = [_stored(repository, "a.parquet", b"not parquet at all")]
    with pytest.raises(InvalidArgument, match=r"file 'a\.parquet' does not read as Parquet"):
        read_numeric_column(repository, files, "x", "artifact 'a.parquet'")
