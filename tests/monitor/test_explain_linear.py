"""Explain of a linear model y = w·x + c on a real MLServe and Triton: the contributions
are wᵢ·(xᵢ - E[xᵢ]) within 1e-6, the Triton calls stay within the issue's bound, rows
of the wrong type or width are refused naming the feature (and never reach the model),
and grpcurl and the CLI ask the same."""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pandas as pd
import pytest
import tritonclient.grpc as triton
from google.protobuf.timestamp_pb2 import Timestamp

from mlserve_api.v1 import dataset_pb2, explain_pb2, inference_log_pb2, model_pb2
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
    """Explain ``rows``, the background ``dataset`` (or, for "", what ``options`` name)."""
    request = explain_pb2.ExplainRequest(
        model=model, rows=[explain_pb2.ExplainRow(values=row) for row in rows], **options
    )
    if dataset:
        request.background_dataset.CopyFrom(model_pb2.DatasetVersionRef(dataset=dataset))
    response: explain_pb2.ExplainResponse = stubs.explain.Explain(
        request, metadata=stubs.auth, timeout=120
    )
    return response


SETTLED_FOR = 1.0  # seconds without a new count: Triton has counted what it answered


def executions(stubs: Stubs, model: str, at_least: int = 0) -> int:
    """How many calls of ``model`` Triton itself has run (no dynamic batching: one a request),
    once its statistics have settled: Triton counts a call just after answering it, later
    on a loaded machine. ``at_least``: first wait (bounded) for that many."""

    client = local_triton(stubs)

    def count() -> int:
        (stats,) = client.get_inference_statistics(model).model_stats
        return int(stats.execution_count)

    try:
        wait_for(lambda: count() >= at_least, 60, f"Triton to count {at_least} calls of {model}")
        seen, since = count(), time.monotonic()
        while time.monotonic() - since < SETTLED_FOR:
            time.sleep(0.25)
            now = count()
            if now != seen:
                seen, since = now, time.monotonic()
        return seen
    finally:
        client.close()


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


def test_rows_of_the_wrong_type_or_width_and_bad_options_never_reach_the_model(
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
    # Options out of range, each refused saying which.
    options: list[tuple[list[list[float]], dict[str, object], str]] = [
        ([], {}, "between 1 and 100 rows"),
        ([good] * 101, {}, "between 1 and 100 rows"),
        ([good], {"samples": -1}, "samples must be in"),
        ([good], {"samples": 100_001}, "samples must be in"),
        ([good], {"background_size": 1001}, "background_size"),
        ([good], {"output": "NOPE"}, "its outputs are PREDICTION"),
        ([good], {"output_index": 1}, "output_index 1 is out of range"),
        ([good], {"output_index": -1}, "output_index -1 is out of range"),
        ([good], {"feature_names": ["x0", "x1"]}, "2 feature names"),
        ([good], {"feature_names": [*NAMES[:5], "nope"]}, "no column 'nope'"),
    ]
    for rows, fields, said in options:
        error = expect_error(Code.INVALID_ARGUMENT, explain, stubs, linear.model, rows,
                             linear.dataset, **fields)  # fmt: skip
        assert said in error.details(), error.details()
    # Whole numbers in range are fine for the INT32 model, which agrees with the FP64 one.
    whole = explain(stubs, linear.whole, [[3.0, -1.0, 0.0, 2.0, 4.0, -3.0]], linear.dataset)
    exact = explain(stubs, linear.model, [[3.0, -1.0, 0.0, 2.0, 4.0, -3.0]], linear.dataset)
    np.testing.assert_allclose(
        whole.explanations[0].contributions, exact.explanations[0].contributions, atol=1e-6
    )
    # The refused requests made no inference at all: only the two good ones did.
    expected = {linear.model: exact.model_calls, linear.whole: whole.model_calls}
    after = {model: executions(stubs, model, before[model] + expected[model]) for model in before}
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


def stamp(moment: dt.datetime) -> Timestamp:
    value = Timestamp()
    value.FromDatetime(moment)
    return value


def logged_calls(stubs: Stubs, model: str, since: dt.datetime) -> int:
    request = inference_log_pb2.ListInferenceLogsRequest(
        model=model, start_time=stamp(since), page_size=1000
    )
    return len(stubs.logs.ListInferenceLogs(request, metadata=stubs.auth).records)


def record_inputs(stubs: Stubs, model: str) -> None:
    """Have the gateway log ``model``'s calls with their inputs."""
    stubs.logs.UpdateLoggingPolicy(
        inference_log_pb2.UpdateLoggingPolicyRequest(
            policy=inference_log_pb2.LoggingPolicy(
                deployment=model, mode=inference_log_pb2.LOGGING_MODE_INPUTS
            )
        ),
        metadata=stubs.auth,
    )


def infer(
    gateway: triton.InferenceServerClient, stubs: Stubs, model: str, rows: np.ndarray
) -> None:
    """One call of ``rows`` (FP64) to ``model`` through MLServe's gateway."""
    tensor = triton.InferInput("FEATURES", list(rows.shape), "FP64")
    tensor.set_data_from_numpy(rows)
    gateway.infer(model, [tensor], headers={"authorization": f"Bearer {stubs.key}"})


def test_a_window_of_the_inference_log_as_background(
    mlserve: MLServeProcess, stubs: Stubs, linear: Linear
) -> None:
    began = dt.datetime.now(dt.timezone.utc)
    since = explain_pb2.LogWindow(start_time=stamp(began))
    row = [[1.0, 2.0, -3.0, 0.5, 0.0, -1.5]]
    # Nothing logged in the window yet: FAILED_PRECONDITION, saying what to do.
    empty = expect_error(Code.FAILED_PRECONDITION, explain, stubs, linear.model, row, "",
                         background_log=since)  # fmt: skip
    assert "no logged inputs of model" in empty.details()
    assert "INPUTS" in empty.details()
    # Calls logged with metadata only (the default policy) carry no inputs either.
    traffic = np.random.default_rng(5).normal(size=(40, FEATURES))
    gateway = triton.InferenceServerClient(mlserve.address)

    def call(rows: np.ndarray) -> None:
        infer(gateway, stubs, linear.model, rows)

    call(traffic[:4])
    wait_for(lambda: logged_calls(stubs, linear.model, began) == 1, 30, "the call to be logged")
    expect_error(Code.FAILED_PRECONDITION, explain, stubs, linear.model, row, "",
                 background_log=since)  # fmt: skip
    record_inputs(stubs, linear.model)
    recorded = dt.datetime.now(dt.timezone.utc)
    for start in range(0, 40, 10):
        call(traffic[start : start + 10])
    wait_for(lambda: logged_calls(stubs, linear.model, recorded) == 4, 30, "the calls logged")
    window = explain_pb2.LogWindow(start_time=stamp(recorded))
    # 40 logged rows, fewer than background_size: their exact mean is the base.
    answered = explain(stubs, linear.model, row, "", background_log=window,
                       include_prediction=True)  # fmt: skip
    mean = traffic.mean(axis=0)
    np.testing.assert_allclose(
        answered.explanations[0].contributions, linear.weights * (row[0] - mean), atol=1e-6
    )
    assert list(answered.feature_names) == [f"FEATURES[{i}]" for i in range(FEATURES)]
    # Summarised by k-means to 5 centres: still adds up to the prediction.
    summarised = explain(stubs, linear.model, row, "", background_log=window,
                         background_size=5, include_prediction=True)  # fmt: skip
    (one,) = summarised.explanations
    assert abs(summarised.base_value + sum(one.contributions) - one.prediction) < 1e-6
    # A window that ends before the calls: empty again.
    before = explain_pb2.LogWindow(start_time=stamp(began), end_time=stamp(recorded))
    expect_error(Code.FAILED_PRECONDITION, explain, stubs, linear.model, row, "",
                 background_log=before)  # fmt: skip
    # Backwards, or both a dataset and a window: INVALID_ARGUMENT.
    backwards = explain_pb2.LogWindow(start_time=stamp(recorded), end_time=stamp(began))
    expect_error(Code.INVALID_ARGUMENT, explain, stubs, linear.model, row, "",
                 background_log=backwards)  # fmt: skip
    both = expect_error(Code.INVALID_ARGUMENT, explain, stubs, linear.model, row,
                        linear.dataset, background_log=window)  # fmt: skip
    assert "one background" in both.details()
    gateway.close()
    # The Python client and the CLI name a window by how long ago it starts.
    with Client(mlserve.address, mlserve.key) as client:
        again = client.explain(linear.model, row, log_since=recorded, timeout=120)
    np.testing.assert_allclose(
        again.explanations[0].contributions, answered.explanations[0].contributions, atol=1e-9
    )
    shown = mlserve_cli(mlserve, "explain", linear.model, "--log-since", "1h",
                        "--row", ",".join(str(v) for v in row[0]))  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    first = next(line for line in shown.stdout.splitlines() if line.startswith("FEATURES[0]"))
    assert f"{answered.explanations[0].contributions[0]:.6g}" in first
    old = mlserve_cli(mlserve, "explain", linear.model, "--log-since", "2h", "--log-until", "1h",
                      "--row", ",".join(str(v) for v in row[0]))  # fmt: skip
    assert old.returncode != 0
    assert "no logged inputs" in old.stdout + old.stderr


def test_rows_a_background_cannot_hold_are_left_out_or_refused(
    mlserve: MLServeProcess, stubs: Stubs, linear: Linear, tmp_path: Path
) -> None:
    """A dataset row with a missing value, and a logged row with NaN or ±inf, are left out
    of the background (shap cannot use them; k-means refused ±inf as INTERNAL); a
    background with none left, or a feature column of text, is refused and calls nothing."""
    good = [[1.0, 2.0, -3.0, 0.5, 0.0, -1.5]]
    name = f"linear-messy-{PID}"
    frame = pd.DataFrame(linear.background[:4], columns=NAMES)
    frame.loc[1, "x3"] = math.nan  # a blank cell in the CSV
    frame["label"] = ["a", "b", "c", "d"]
    holey = frame.copy()
    holey["x0"] = math.nan
    for table, file in ((frame, "messy.csv"), (holey, "holey.csv")):
        table.to_csv(tmp_path / file, index=False)
    before = executions(stubs, linear.model)
    try:
        with Client(mlserve.address, mlserve.key) as client:
            client.create_dataset(name)
            client.upload_dataset(name, [tmp_path / "messy.csv"])
            answered = explain(stubs, linear.model, good, name)
            mean = linear.background[[0, 2, 3]].mean(axis=0)
            np.testing.assert_allclose(
                answered.explanations[0].contributions,
                linear.weights * (good[0] - mean),
                atol=1e-6,
            )
            calls = answered.model_calls
            text = expect_error(Code.INVALID_ARGUMENT, explain, stubs, linear.model, good, name,
                                feature_names=[*NAMES[:5], "label"])  # fmt: skip
            assert "column 'label'" in text.details()
            assert "not numbers" in text.details()
            client.upload_dataset(name, [tmp_path / "holey.csv"])
            empty = expect_error(Code.INVALID_ARGUMENT, explain, stubs, linear.model, good, name)
            assert "no row with a finite value" in empty.details()
    finally:
        stubs.datasets.DeleteDataset(
            dataset_pb2.DeleteDatasetRequest(name=name), metadata=stubs.auth
        )
    assert executions(stubs, linear.model, before + calls) - before == calls
    # Logged calls: NaN and ±inf in every row leave no background, whatever its size.
    record_inputs(stubs, linear.model)
    began = dt.datetime.now(dt.timezone.utc)
    gateway = triton.InferenceServerClient(mlserve.address)

    def call(rows: np.ndarray) -> None:
        infer(gateway, stubs, linear.model, rows)

    unusable = np.ones((3, FEATURES))
    unusable[0, 1], unusable[1, 4], unusable[2, 0] = math.nan, math.inf, -math.inf
    call(unusable)
    wait_for(lambda: logged_calls(stubs, linear.model, began) == 1, 30, "the call logged")
    window = explain_pb2.LogWindow(start_time=stamp(began))
    for size in (1, 50):
        refused = expect_error(Code.FAILED_PRECONDITION, explain, stubs, linear.model, good, "",
                               background_log=window, background_size=size)  # fmt: skip
        assert "no logged inputs" in refused.details()
    finite = np.random.default_rng(9).normal(size=(4, FEATURES))
    call(finite)
    gateway.close()
    wait_for(lambda: logged_calls(stubs, linear.model, began) == 2, 30, "the calls logged")
    for size in (2, 50):  # summarised by k-means, or as it is
        logged = explain(stubs, linear.model, good, "", background_log=window,
                         background_size=size, include_prediction=True)  # fmt: skip
        (one,) = logged.explanations
        assert abs(logged.base_value + sum(one.contributions) - one.prediction) < 1e-6
    np.testing.assert_allclose(
        one.contributions, linear.weights * (good[0] - finite.mean(axis=0)), atol=1e-6
    )


def test_a_cancelled_explanation_stops_calling_the_model(stubs: Stubs, linear: Linear) -> None:
    """shap runs in a thread the cancelled call does not stop: its next model call ends
    it. After the cancel settles, a second explanation's calls are all Triton runs."""
    rows = [[float(i % 7 - 3)] * FEATURES for i in range(100)]
    per_row = math.ceil(min(2048, 2**FEATURES - 2) * BACKGROUND / MAX_BATCH)
    whole = 1 + len(rows) * per_row
    before = executions(stubs, linear.model)
    request = explain_pb2.ExplainRequest(
        model=linear.model, rows=[explain_pb2.ExplainRow(values=row) for row in rows]
    )
    request.background_dataset.CopyFrom(model_pb2.DatasetVersionRef(dataset=linear.dataset))
    pending = stubs.explain.Explain.future(request, metadata=stubs.auth, timeout=300)

    def started() -> bool:
        (stats,) = local_triton(stubs).get_inference_statistics(linear.model).model_stats
        return int(stats.execution_count) > before + per_row

    wait_for(started, 120, "the explanation's perturbations to reach Triton")
    pending.cancel()
    stopped = executions(stubs, linear.model)
    assert stopped - before < whole
    again = explain(stubs, linear.model, rows[:1], linear.dataset)
    assert (
        executions(stubs, linear.model, stopped + again.model_calls) - stopped == again.model_calls
    )
