"""One Explain of a 20-feature model, side by side with the same KernelSHAP run by hand.

The model is linear, PREDICTION = FEATURES · w + c (a Python-backend model on
MLServe's embedded Triton, ``max_batch_size`` 1024); the background is a
dataset of 50 rows, one row is explained with 2,048 samples, so KernelSHAP
evaluates the model on 2,048 · 50 = 102,400 perturbed rows. Three ways, in
interleaved rounds:

- in process: ``shap.KernelExplainer`` with the model as a numpy function
  (what shap itself costs, no model calls at all);
- in process, vectorised: the same with ``mlserve.monitor.kernel_shap``'s
  explainer (shap's, its per-sample expectation done in one numpy step),
  what MLServe's explanation costs without the model calls;
- by hand on Triton: the same, its model function calling Triton directly
  with tritonclient, one ModelInfer per ``max_batch_size`` rows;
- MLServe: ``Explain`` through the Python client (MLServe calls the model
  through its own gateway), with ``include_prediction``.

Each way's contributions are checked against w · (x - mean(background)).
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import shap
import tritonclient.grpc as triton

from bench.common import MLServeProcess, Report, Table, served_in_scratch
from mlserve.monitor.kernel_shap import KernelExplainer
from mlserve_client import Client
from tests.support.models import linear_model_files, local_triton
from tests.support.tritons import deploy, wait_for

MODEL, DATASET = "bench-explain-linear", "bench-explain-background"
FEATURES, BACKGROUND, SAMPLES, MAX_BATCH = 20, 50, 2048, 1024
DEFAULT_ROUNDS = 5
Array = np.ndarray[Any, Any]


def run(rounds: int = DEFAULT_ROUNDS) -> Report:
    with served_in_scratch("explain-") as (server, work):
        times, calls = measure(server, work, rounds)
    bound = math.ceil(SAMPLES * BACKGROUND / MAX_BATCH) + 1
    by_hand, mlserve = statistics.median(times["by hand"]), statistics.median(times["MLServe"])
    rows = []
    for way, seconds in times.items():
        median = statistics.median(seconds)
        rows.append(
            [way, f"{median:.2f}", f"{min(seconds):.2f}", f"{max(seconds):.2f}",
             str(calls[way]) if calls[way] else "none", f"{median / by_hand:.2f}"]
        )  # fmt: skip
    return Report(
        f"explain: {FEATURES} features, {BACKGROUND} background rows, {SAMPLES} samples",
        [Table(["way", "median s", "min s", "max s", "Triton calls", "vs by hand"], rows)],
        [
            f"{rounds} interleaved rounds; one row explained; max_batch_size {MAX_BATCH}",
            f"aims: MLServe ≤ 3 s (median {mlserve:.2f} s); Triton calls ≤ "
            f"⌈{SAMPLES}·{BACKGROUND} / {MAX_BATCH}⌉ + 1 = {bound} (MLServe: {calls['MLServe']})",
        ],
    )


def measure(
    server: MLServeProcess, work: Path, rounds: int
) -> tuple[dict[str, list[float]], dict[str, int]]:
    generator = np.random.default_rng(7)
    weights = generator.normal(size=FEATURES)
    bias = 0.5
    names = [f"f{i}" for i in range(FEATURES)]
    background = generator.normal(size=(BACKGROUND, FEATURES))
    row = generator.normal(size=(1, FEATURES))
    expected = weights * (row[0] - background.mean(axis=0))

    model_dir = work / "model"
    model_dir.mkdir()
    files = linear_model_files(MODEL, weights.tolist(), bias, max_batch_size=MAX_BATCH)
    for path, content in files.items():
        (model_dir / path).write_bytes(content)
    data = work / "background.csv"
    pd.DataFrame(background, columns=names).to_csv(data, index=False, float_format="%.17g")
    stubs = server.stubs()
    with Client(server.address, server.key) as client, contextlib.closing(stubs.channel):
        client.upload(model_dir, MODEL)
        client.create_dataset(DATASET)
        client.upload_dataset(DATASET, [data])
        deploy(stubs, MODEL)
        direct = local_triton(stubs)
        wait_for(lambda: direct.is_model_ready(MODEL), 120, "the model to load")

        def in_process() -> tuple[Array, int]:
            return by_shap(lambda x: x @ weights + bias, background, row), 0

        def vectorised() -> tuple[Array, int]:
            explainer = KernelExplainer(lambda x: x @ weights + bias, background)
            values = explainer.shap_values(row, nsamples=SAMPLES, silent=True)
            return np.asarray(values).reshape(-1), 0

        def by_hand() -> tuple[Array, int]:
            triton_model = OnTriton(direct)
            return by_shap(triton_model.predict, background, row), triton_model.calls

        def through_mlserve() -> tuple[Array, int]:
            response = client.explain(
                MODEL, row.tolist(), dataset=DATASET, samples=SAMPLES,
                background_size=BACKGROUND, include_prediction=True, timeout=300,
            )  # fmt: skip
            return np.asarray(response.explanations[0].contributions), response.model_calls

        ways: dict[str, Callable[[], tuple[Array, int]]] = {
            "in process": in_process,
            "in process, vectorised": vectorised,
            "by hand": by_hand,
            "MLServe": through_mlserve,
        }
        for way in ways.values():  # warm up: imports, the model's first calls
            way()
        times: dict[str, list[float]] = {name: [] for name in ways}
        calls: dict[str, int] = {}
        for number in range(rounds):
            for name, way in ways.items():
                began = time.perf_counter()
                contributions, calls[name] = way()
                times[name].append(time.perf_counter() - began)
                if not np.allclose(contributions, expected, atol=1e-6):
                    raise RuntimeError(f"{name}: contributions {contributions} ≠ {expected}")
            print(
                f"explain: round {number + 1}/{rounds}: "
                + ", ".join(f"{name} {t[-1]:.2f}s" for name, t in times.items()),
                flush=True,
            )
        direct.close()
    return times, calls


def by_shap(model: Callable[[Array], Array], background: Array, row: Array) -> Array:
    """KernelSHAP contributions of ``row``, computed in this process."""
    explainer = shap.KernelExplainer(model, background)
    values = explainer.shap_values(row, nsamples=SAMPLES, silent=True)
    return np.asarray(values).reshape(-1)


class OnTriton:
    """The model straight on Triton: one ModelInfer per ``MAX_BATCH`` rows, counted."""

    def __init__(self, client: triton.InferenceServerClient) -> None:
        self.client = client
        self.calls = 0

    def predict(self, rows: Array) -> Array:
        parts = []
        for start in range(0, len(rows), MAX_BATCH):
            batch = np.ascontiguousarray(rows[start : start + MAX_BATCH], dtype=np.float64)
            tensor = triton.InferInput("FEATURES", list(batch.shape), "FP64")
            tensor.set_data_from_numpy(batch)
            self.calls += 1
            parts.append(self.client.infer(MODEL, [tensor]).as_numpy("PREDICTION").reshape(-1))
        return np.concatenate(parts)
