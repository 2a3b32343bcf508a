"""Explain of a linear model y = w·x + c on a real MLServe and Triton: the contributions
are wᵢ·(xᵢ - E[xᵢ]) within 1e-6, the Triton calls stay within the issue's bound, rows
of the wrong type or width are refused naming the feature (and never reach the model),
and grpcurl and the CLI ask the same."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import numpy as np
import pandas as pd
import pytest

from mlserve_api.v1 import dataset_pb2, explain_pb2, model_pb2
from mlserve_client import Client
from tests.support.checks import expect_error
from tests.support.commands import grpcurl, mlserve_cli
from tests.support.mlserve import MLServeProcess, Stubs
from tests.support.models import linear_model_files, local_triton
from tests.support.tritons import deploy, remove_model, wait_for
from tests.support.users import PID

Code = grpc.StatusCode
FEATURES, BACKGROUND, MAX_BATCH = 6, 30, 64
NAMES = [f"x{i}" for i in range(FEATURES)]


@dataclass(frozen=True)
class Linear:
    model: str  # FP64 input
    whole: str  # INT32 input, the same weights
    dataset: str
    weights: np.ndarray
    bias: float
    background: np.ndarray


@pytest.fixture(scope="module")
def linear(
    mlserve: MLServeProcess, stubs: Stubs, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Linear]:
    work = tmp_path_factory.mktemp("explain-linear")
    generator = np.random.default_rng(11)
    weights, bias = generator.normal(size=FEATURES), 0.25
    background = generator.integers(-5, 5, size=(BACKGROUND, FEATURES)).astype(np.float64)
    names = Linear(f"linear-{PID}", f"linear-int-{PID}", f"linear-bg-{PID}", weights, bias,
                   background)  # fmt: skip
    csv = work / "background.csv"
    pd.DataFrame(background, columns=NAMES).to_csv(csv, index=False)
    try:
        with Client(mlserve.address, mlserve.key) as client:
            for model, datatype in ((names.model, "TYPE_FP64"), (names.whole, "TYPE_INT32")):
                folder = work / model
                folder.mkdir()
                files = linear_model_files(model, weights.tolist(), bias, datatype=datatype,
                                           max_batch_size=MAX_BATCH)  # fmt: skip
                for path, content in files.items():
                    (folder / path).write_bytes(content)
                client.upload(folder, model)
            client.create_dataset(names.dataset)
            client.upload_dataset(names.dataset, [csv])
        triton = local_triton(stubs)
        for model in (names.model, names.whole):
            deploy(stubs, model)
            wait_for(lambda m=model: triton.is_model_ready(m), 120, f"{model} to load")
        yield names
    finally:
        for model in (names.model, names.whole):
            remove_model(stubs, model)
        stubs.datasets.DeleteDataset(
            dataset_pb2.DeleteDatasetRequest(name=names.dataset), metadata=stubs.auth
        )


def explain(stubs: Stubs, model: str, rows: list[list[float]], dataset: str,
            **options: object) -> explain_pb2.ExplainResponse:  # fmt: skip
    request = explain_pb2.ExplainRequest(
        model=model,
        rows=[explain_pb2.ExplainRow(values=row) for row in rows],
        background_dataset=model_pb2.DatasetVersionRef(dataset=dataset),
        **options,
    )
    response: explain_pb2.ExplainResponse = stubs.explain.Explain(
        request, metadata=stubs.auth, timeout=120
    )
    return response


def executions(stubs: Stubs, model: str) -> int:
    """How many calls of ``model`` Triton itself has run (no dynamic batching: one a request)."""
    (stats,) = local_triton(stubs).get_inference_statistics(model).model_stats
    return int(stats.execution_count)


def test_contributions_of_a_linear_model_are_exact(stubs: Stubs, linear: Linear) -> None:
    rows = [[1.5, -2.0, 0.0, 3.25, -0.5, 4.0], [0.0] * FEATURES]
    response = explain(stubs, linear.model, rows, linear.dataset, include_prediction=True)
    assert list(response.feature_names) == NAMES
    mean = linear.background.mean(axis=0)
    got = np.asarray([list(e.contributions) for e in response.explanations])
    np.testing.assert_allclose(got, linear.weights * (np.asarray(rows) - mean), rtol=0, atol=1e-6)
    assert abs(response.base_value - (mean @ linear.weights + linear.bias)) < 1e-6
    for row, explanation in zip(rows, response.explanations, strict=True):
        assert abs(explanation.prediction - (np.asarray(row) @ linear.weights + linear.bias)) < 1e-9
    # shap evaluates min(samples, 2^M - 2) coalitions of the background per row; the
    # background and the rows themselves go in one call first.
    coalitions = min(2048, 2**FEATURES - 2)
    assert response.model_calls == 1 + len(rows) * math.ceil(coalitions * BACKGROUND / MAX_BATCH)


def test_rows_of_the_wrong_type_or_width_never_reach_the_model(
    stubs: Stubs, linear: Linear
) -> None:
    good = [1.0] * FEATURES
    before = {model: executions(stubs, model) for model in (linear.model, linear.whole)}
    cases = [
        (linear.model, [good, [*good[:2], math.nan, *good[3:]]], "row 1: feature 'x2' is nan"),
        (linear.model, [[*good[:5], math.inf]], "feature 'x5' is inf"),
        (linear.whole, [[*good[:3], 2.5, *good[4:]]], "feature 'x3' is 2.5, not a INT32"),
        (linear.whole, [[2.0**40, *good[1:]]], "feature 'x0'"),
        (linear.model, [good[:4]], "feature 'x4' is missing"),
        (linear.model, [[*good, 1.0]], "the last being 'x5'"),
    ]
    for model, rows, said in cases:
        error = expect_error(Code.INVALID_ARGUMENT, explain, stubs, model, rows, linear.dataset)
        assert said in error.details(), error.details()
    # Whole numbers in range are fine for the INT32 model, which agrees with the FP64 one.
    whole = explain(stubs, linear.whole, [[3.0, -1.0, 0.0, 2.0, 4.0, -3.0]], linear.dataset)
    exact = explain(stubs, linear.model, [[3.0, -1.0, 0.0, 2.0, 4.0, -3.0]], linear.dataset)
    np.testing.assert_allclose(
        whole.explanations[0].contributions, exact.explanations[0].contributions, atol=1e-6
    )
    # The refused requests made no inference at all: only the two good ones did.
    after = {model: executions(stubs, model) for model in before}
    assert after[linear.model] - before[linear.model] == exact.model_calls
    assert after[linear.whole] - before[linear.whole] == whole.model_calls


def test_grpcurl_and_the_cli_explain_and_refuse(mlserve: MLServeProcess, linear: Linear) -> None:
    row = [2.0, 1.0, -1.0, 0.5, 0.0, 3.0]
    request = {
        "model": linear.model,
        "rows": [{"values": row}],
        "background_dataset": {"dataset": linear.dataset},
        "include_prediction": True,
    }
    answered = grpcurl(mlserve, "-max-time", "60", "-d", json.dumps(request), mlserve.address,
                       "mlserve.v1.ExplainService/Explain")  # fmt: skip
    assert answered.returncode == 0, answered.stderr
    response = json.loads(answered.stdout)
    assert response["method"] == "kernel_shap"
    expected = linear.weights * (np.asarray(row) - linear.background.mean(axis=0))
    (explanation,) = response["explanations"]
    np.testing.assert_allclose(explanation["contributions"], expected, atol=1e-6)
    assert abs(explanation["prediction"] - (np.asarray(row) @ linear.weights + linear.bias)) < 1e-9
    # proto3 JSON spells NaN as a string: the row reaches MLServe and is refused there.
    request["rows"] = [{"values": [*row[:1], "NaN", *row[2:]]}]
    refused = grpcurl(mlserve, "-d", json.dumps(request), mlserve.address,
                      "mlserve.v1.ExplainService/Explain")  # fmt: skip
    assert refused.returncode != 0
    assert "Code: InvalidArgument" in refused.stderr
    assert "feature 'x1' is nan" in refused.stderr
    undeployed = grpcurl(mlserve, "-d", json.dumps({**request, "model": "never-" + linear.model}),
                         mlserve.address, "mlserve.v1.ExplainService/Explain")  # fmt: skip
    assert "Code: NotFound" in undeployed.stderr, undeployed.stderr

    shown = mlserve_cli(mlserve, "explain", linear.model, "--dataset", linear.dataset,
                        "--row", ",".join(str(v) for v in row))  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert f"prediction {np.asarray(row) @ linear.weights + linear.bias:.6g}" in shown.stdout
    x0 = next(line for line in shown.stdout.splitlines() if line.startswith("x0 "))
    assert f"{expected[0]:.6g}" in x0
    wrong = mlserve_cli(mlserve, "explain", linear.model, "--dataset", linear.dataset,
                        "--row", "1,2,3")  # fmt: skip
    assert wrong.returncode != 0
    assert "INVALID_ARGUMENT" in wrong.stdout + wrong.stderr
    assert "feature 'x3' is missing" in wrong.stdout + wrong.stderr
    assert "Traceback" not in wrong.stdout + wrong.stderr
