"""The spec rules that need no server: which of model and pipeline, paths checked
against a pipeline's tensors, table baselines' fields, and the stored JSON (old
rows without the newer fields read as before)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

import pytest

from mlserve.assays.spec import (
    ARTIFACT,
    DATASET,
    INPUT,
    OUTPUT,
    AssaySpec,
    Baseline,
    Path,
    TableColumn,
    Window,
    check_spec,
    from_json,
    resolve_path,
    to_json,
)
from mlserve.catalog.pipelines import Tensor
from mlserve.core.errors import InvalidArgument

PIPELINE_TENSORS = {
    INPUT: [Tensor("A", "FP32", (4,)), Tensor("TEXT", "STRING", (1,))],
    OUTPUT: [Tensor("OUT", "FP32", (4,))],
}


def _spec(**changes: object) -> AssaySpec:
    spec = AssaySpec(
        name="drift",
        model="",
        pipeline="chain",
        path=Path("input", "A", 0),
        baseline=Baseline(values=(1.0, 2.0)),
        window=Window(dt.timedelta(hours=1)),
    )
    return dataclasses.replace(spec, **changes)  # type: ignore[arg-type]


def test_a_pipeline_path_resolves_by_name_or_position() -> None:
    assert resolve_path(Path("output", "0", 3), PIPELINE_TENSORS, "pipeline 'chain'") == Path(
        "output", "OUT", 3
    )


@pytest.mark.parametrize(
    ("path", "said"),
    [
        (Path("input", "NOPE", 0), "pipeline 'chain' has no input 'NOPE' (its inputs: A, TEXT)"),
        (Path("input", "TEXT", 0), "is BYTES"),
        (Path("output", "OUT", 4), "path.index 4 is outside"),
    ],
)
def test_a_path_the_pipeline_lacks_is_invalid(path: Path, said: str) -> None:
    with pytest.raises(InvalidArgument, match=said.replace("(", r"\(").replace(")", r"\)")):
        resolve_path(path, PIPELINE_TENSORS, "pipeline 'chain'")


@pytest.mark.parametrize(("model", "pipeline"), [("", ""), ("add", "chain")])
def test_exactly_one_of_model_and_pipeline(model: str, pipeline: str) -> None:
    with pytest.raises(InvalidArgument, match="model or pipeline: set exactly one"):
        check_spec(_spec(model=model, pipeline=pipeline))


@pytest.mark.parametrize(
    ("column", "said"),
    [
        (TableColumn(DATASET, "", 0, "x"), "baseline.dataset.dataset is required"),
        (TableColumn(DATASET, "trips", -1, "x"), "baseline.dataset.version must not be negative"),
        (TableColumn(DATASET, "trips", 0, ""), "baseline.dataset.column is required"),
        (TableColumn(ARTIFACT, "add", 1, "x"), "baseline.artifact.path is required"),
        (TableColumn(ARTIFACT, "", 1, "x", "a.csv"), "baseline.artifact.model is required"),
    ],
)
def test_a_table_baseline_needs_its_fields(column: TableColumn, said: str) -> None:
    with pytest.raises(InvalidArgument, match=said):
        check_spec(_spec(baseline=Baseline(column=column)))


def test_the_stored_json_keeps_the_pipeline_and_the_column() -> None:
    spec = _spec(baseline=Baseline(column=TableColumn(ARTIFACT, "add", 2, "x", "train.csv")))
    assert from_json(to_json(spec)) == spec


def test_rows_stored_before_pipelines_and_columns_read_as_model_assays() -> None:
    data = json.loads(to_json(_spec(model="add", pipeline="")))
    del data["pipeline"]
    del data["baseline"]["column"]
    spec = from_json(json.dumps(data))
    assert (spec.model, spec.pipeline, spec.subject) == ("add", "", "add")
    assert spec.baseline.column is None
