"""Explain against a real MLServe and Triton, on the examples/diabetes model: KernelSHAP
through MLServe's own routing equals coef*(x - mean(background)) for the linear model,
the contributions add up to the prediction, and each bad input gets its exact code."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import grpc
import numpy as np
import pandas as pd
import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from mlserve_api.v1 import dataset_pb2, explain_pb2, model_pb2
from mlserve_client import Client
from tests.support.checks import expect_error
from tests.support.commands import mlserve_cli
from tests.support.mlserve import MLServeProcess, Stubs
from tests.support.training import make_dataset
from tests.support.tritons import deploy, remove_model, wait_for
from tests.support.users import PID, make_user
from tests.training.test_diabetes_example import diabetes_csv, run_by_hand

Code = grpc.StatusCode

# Over ~20 s each (or a slow module start): `pytest -m "not slow"` leaves them out.
pytestmark = pytest.mark.slow
BYTES_CONFIG = """
backend: "python"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_STRING dims: [ 1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_STRING dims: [ 1 ] } ]
"""
BYTES_MODEL = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            echoed = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", echoed)]))
        return responses
"""


def explain(
    stubs: Stubs, model: str, rows: np.ndarray, **options: object
) -> explain_pb2.ExplainResponse:
    request = explain_pb2.ExplainRequest(
        model=model, rows=[explain_pb2.ExplainRow(values=list(row)) for row in rows], **options
    )
    response: explain_pb2.ExplainResponse = stubs.explain.Explain(
        request, metadata=stubs.auth, timeout=300
    )
    return response


def test_explain_the_diabetes_model(
    mlserve: MLServeProcess, stubs: Stubs, tmp_path: Path, model_name: str
) -> None:
    csv = diabetes_csv(tmp_path)
    data = csv.parent
    frame = pd.read_csv(csv)
    features = frame.drop(columns=["target"])
    small = tmp_path / "small"
    small.mkdir()
    frame.head(40).to_csv(small / "diabetes.csv", index=False)
    dataset, background = "explain-" + model_name, "explain-bg-" + model_name
    scripts = "explain-scripts-" + model_name
    bytes_model = "bytes-" + model_name
    try:
        with Client(mlserve.address, mlserve.key) as client:
            for name, folder in ((dataset, data), (background, small)):
                client.create_dataset(name, tags=["diabetes"])
                client.upload_dataset(name, [folder / "diabetes.csv"])
            run_by_hand(data, tmp_path / "v1")
            (tmp_path / "v1" / "metrics.json").unlink()
            client.upload(tmp_path / "v1", model_name)
            bytes_dir = tmp_path / "bytes"
            bytes_dir.mkdir()
            (bytes_dir / "config.pbtxt").write_text(BYTES_CONFIG)
            (bytes_dir / "model.py").write_text(BYTES_MODEL)
            client.upload(bytes_dir, bytes_model)
        rows = features.to_numpy()[:3]
        named = model_pb2.DatasetVersionRef(dataset=background)
        # Not deployed yet: FAILED_PRECONDITION, saying to deploy it.
        undeployed = expect_error(
            Code.FAILED_PRECONDITION, explain, stubs, model_name, rows, background_dataset=named
        )
        assert "deploy" in undeployed.details()
        deploy(stubs, model_name)
        deploy(stubs, bytes_model)

        def answered() -> list[explain_pb2.ExplainResponse]:
            try:
                return [explain(stubs, model_name, rows, background_dataset=named,
                                include_prediction=True)]  # fmt: skip
            except grpc.RpcError as error:
                if error.code() in (Code.UNAVAILABLE, Code.FAILED_PRECONDITION):
                    return []  # still loading
                raise

        (response,) = wait_for(answered, 120, "the model to serve")
        assert response.method == "kernel_shap"
        assert response.output == "PREDICTION"
        assert list(response.feature_names) == list(features.columns)
        coef = np.asarray(
            json.loads(
                b"".join(
                    piece.data
                    for piece in stubs.models.DownloadModelVersion(
                        model_pb2.DownloadModelVersionRequest(
                            model=model_name, version=1, path="weights.json"
                        ),
                        metadata=stubs.auth,
                    )
                )
            )["coef"]
        )
        # Linear model, 10 features, 2048 samples ≥ 2^10 coalitions: KernelSHAP is exact.
        mean = features.head(40).to_numpy().mean(axis=0)
        got = np.asarray([list(e.contributions) for e in response.explanations])
        np.testing.assert_allclose(got, coef * (rows - mean), atol=1e-2)
        for explanation in response.explanations:
            total = response.base_value + sum(explanation.contributions)
            assert abs(total - explanation.prediction) < 1e-2
        # ⌈perturbations / max_batch_size⌉ per row, not one call per perturbation.
        assert 0 < response.model_calls < 3 * (2048 * 40 // 1024 + 4)
        # The training dataset is not recorded for this version: say to name one.
        expect_error(Code.FAILED_PRECONDITION, explain, stubs, model_name, rows)
        # The full dataset, summarised by k-means, still adds up to the prediction.
        summarised = explain(stubs, model_name, rows[:1], samples=256,
                             background_dataset=model_pb2.DatasetVersionRef(dataset=dataset),
                             background_size=10, include_prediction=True)  # fmt: skip
        (one,) = summarised.explanations
        assert abs(summarised.base_value + sum(one.contributions) - one.prediction) < 1e-2

        # The Python client and the CLI ask the same.
        with Client(mlserve.address, mlserve.key) as client:
            again = client.explain(model_name, rows[:1], dataset=background, timeout=300)
        np.testing.assert_allclose(again.explanations[0].contributions, got[0], atol=1e-6)
        shown = mlserve_cli(mlserve, "explain", model_name, "--dataset", background,
                            "--row", ",".join(repr(float(v)) for v in rows[0]))  # fmt: skip
        assert shown.returncode == 0, shown.stderr
        assert "kernel_shap of PREDICTION" in shown.stdout
        assert f"{got[0][-1]:.6g}" in shown.stdout.split("s6")[1].split("\n")[0]
        # Rows of the wrong width: INVALID_ARGUMENT naming the missing feature.
        short = expect_error(Code.INVALID_ARGUMENT, explain, stubs, model_name, rows[:, :9],
                             background_dataset=named)  # fmt: skip
        assert "'s6'" in short.details()
        # A background of scripts only (a code dataset): INVALID_ARGUMENT, no rows in it.
        make_dataset(stubs, scripts, {"train.py": b"print('not rows')\n"})
        only_scripts = model_pb2.DatasetVersionRef(dataset=scripts)
        no_rows = expect_error(Code.INVALID_ARGUMENT, explain, stubs, model_name, rows,
                               background_dataset=only_scripts)  # fmt: skip
        assert "holds no CSV or Parquet table" in no_rows.details()
        # A BYTES-input model: INVALID_ARGUMENT, not supported.
        wrong_type = wait_for(
            lambda: [
                error
                for error in [expect_any(stubs, bytes_model, rows, named)]
                if error.code() != Code.UNAVAILABLE
            ],
            120,
            "the BYTES model to serve",
        )[0]
        assert wrong_type.code() == Code.INVALID_ARGUMENT, wrong_type.details()
        assert "BYTES" in wrong_type.details()
        # A background dataset the caller may not see: NOT_FOUND, like a missing one.
        stubs.models.UpdateModel(
            model_pb2.UpdateModelRequest(
                model=model_pb2.Model(name=model_name, visibility=model_pb2.VISIBILITY_PUBLIC),
                update_mask=FieldMask(paths=["visibility"]),
            ),
            metadata=stubs.auth,
        )
        outsider = make_user(stubs, f"explain-outsider-{PID}-{model_name[-12:]}", "editor")
        hidden = expect_error(Code.NOT_FOUND, explain, outsider, model_name, rows,
                              background_dataset=named)  # fmt: skip
        missing = expect_error(Code.NOT_FOUND, explain, outsider, model_name, rows,
                               background_dataset=model_pb2.DatasetVersionRef(
                                   dataset="never-" + background))  # fmt: skip
        assert hidden.details() == missing.details().replace("never-" + background, background)
        # Without names in the request, the model's features metadata names the columns.
        stubs.models.UpdateModel(
            model_pb2.UpdateModelRequest(
                model=model_pb2.Model(
                    name=model_name,
                    features=[model_pb2.Feature(name=c.upper()) for c in features.columns],
                ),
                update_mask=FieldMask(paths=["features"]),
            ),
            metadata=stubs.auth,
        )
        unnamed = expect_error(Code.INVALID_ARGUMENT, explain, stubs, model_name, rows,
                               background_dataset=named)  # fmt: skip
        assert "no column 'AGE'" in unnamed.details()
    finally:
        remove_model(stubs, model_name)
        remove_model(stubs, bytes_model)
        for name in (dataset, background):
            stubs.datasets.DeleteDataset(
                dataset_pb2.DeleteDatasetRequest(name=name), metadata=stubs.auth
            )
        with contextlib.suppress(grpc.RpcError):
            stubs.datasets.DeleteDataset(
                dataset_pb2.DeleteDatasetRequest(name=scripts), metadata=stubs.auth
            )


def expect_any(
    stubs: Stubs, model: str, rows: np.ndarray, named: model_pb2.DatasetVersionRef
) -> grpc.RpcError:
    try:
        explain(stubs, model, rows, background_dataset=named)
    except grpc.RpcError as error:
        return error
    raise AssertionError("Explain of a BYTES model answered")
