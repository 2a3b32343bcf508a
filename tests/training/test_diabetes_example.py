"""The examples/diabetes walkthrough on a real MLServe and Triton, in one test: the
scikit-learn diabetes CSV becomes a dataset, examples/diabetes/train.py trains the
model's next version as a training job, it is deployed, inferred through MLServe's
gateway, and its predictions are scikit-learn's."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tritonclient.grpc as triton
from sklearn.linear_model import LinearRegression

from mlserve_api.v1 import dataset_pb2, model_pb2, training_pb2
from mlserve_client import Client
from tests.support.mlserve import MLServeProcess, Stubs
from tests.support.training import attach_code, watch
from tests.support.tritons import deploy, remove_model, wait_for

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "diabetes"


def run_by_hand(data: Path, output: Path) -> None:
    """The training script outside MLServe, with the paths a job would give it."""
    output.mkdir(parents=True)
    params = output.parent / "params.json"
    params.write_text("{}")
    env = {**os.environ, "MLSERVE_DATA": str(data), "MLSERVE_OUTPUT": str(output),
           "MLSERVE_PARAMS": str(params)}  # fmt: skip
    subprocess.run([sys.executable, str(EXAMPLE / "train.py")], env=env, check=True, timeout=120)


def diabetes_csv(tmp_path: Path) -> Path:
    """scikit-learn's diabetes data as examples/diabetes/make_data.py writes it, in data/."""
    data = tmp_path / "data"
    data.mkdir()
    csv = data / "diabetes.csv"
    subprocess.run([sys.executable, str(EXAMPLE / "make_data.py"), str(csv)], check=True)
    return csv


def test_the_diabetes_example_trains_deploys_and_serves(
    mlserve: MLServeProcess, stubs: Stubs, tmp_path: Path, model_name: str
) -> None:
    csv = diabetes_csv(tmp_path)
    dataset = "diabetes-" + model_name
    try:
        with Client(mlserve.address, mlserve.key) as client:
            client.create_dataset(dataset, tags=["diabetes"])
            trained_on = client.upload_dataset(dataset, [csv])
            assert trained_on.row_count == 442
            # Version 1, trained by hand on a slice, carries the script as its code artifact.
            subset = tmp_path / "subset"
            subset.mkdir()
            pd.read_csv(csv).head(50).to_csv(subset / "diabetes.csv", index=False)
            run_by_hand(subset, tmp_path / "v1")
            (tmp_path / "v1" / "metrics.json").unlink()
            client.upload(tmp_path / "v1", model_name)
        script = (EXAMPLE / "train.py").read_bytes()
        attach_code(stubs, model_name, "train.py", script)
        job = stubs.training.CreateTrainingJob(
            training_pb2.CreateTrainingJobRequest(
                job=training_pb2.TrainingJob(
                    model=model_name,
                    code_version=1,
                    code_path="train.py",
                    training_dataset=model_pb2.DatasetVersionRef(dataset=dataset),
                )
            ),
            metadata=stubs.auth,
        )
        lines, done = watch(stubs, job.id)
        assert done.state == training_pb2.TRAINING_JOB_STATE_SUCCEEDED, (done.reason, lines)
        assert done.version == 2
        assert done.metrics["rows"] == 442
        assert done.code_sha256 == hashlib.sha256(script).hexdigest()
        deploy(stubs, model_name, version=2)
        frame = pd.read_csv(csv)
        features = frame.drop(columns=["target"]).to_numpy()
        expected = LinearRegression().fit(features, frame["target"]).predict(features[:8])
        gateway = triton.InferenceServerClient(mlserve.address)
        rows = triton.InferInput("INPUT", [8, 10], "FP32")
        rows.set_data_from_numpy(features[:8].astype(np.float32))
        headers = {"authorization": f"Bearer {mlserve.key}"}

        def served() -> list[np.ndarray]:
            try:
                result = gateway.infer(model_name, [rows], headers=headers)
            except triton.InferenceServerException:
                return []  # not ready yet
            return [result.as_numpy("PREDICTION")]

        (predicted,) = wait_for(served, 120, "the trained version to serve")
        np.testing.assert_allclose(predicted[:, 0], expected, rtol=1e-4)
        weights = json.loads(
            b"".join(
                piece.data
                for piece in stubs.models.DownloadModelVersion(
                    model_pb2.DownloadModelVersionRequest(
                        model=model_name, version=2, path="weights.json"
                    ),
                    metadata=stubs.auth,
                )
            )
        )
        assert len(weights["coef"]) == 10
        # Explained with no background named: the trained version's own training
        # dataset (442 rows, k-means summarised to 50) is the background.
        with Client(mlserve.address, mlserve.key) as client:
            explained = client.explain(model_name, features[:2], include_prediction=True,
                                       timeout=300)  # fmt: skip
        assert explained.version == 2
        assert list(explained.feature_names) == list(frame.columns[:10])
        for explanation, wanted in zip(explained.explanations, expected[:2], strict=True):
            assert explanation.prediction == pytest.approx(wanted, rel=1e-4)
            total = explained.base_value + sum(explanation.contributions)
            assert total == pytest.approx(explanation.prediction, abs=1e-2)
    finally:
        remove_model(stubs, model_name)
        stubs.datasets.DeleteDataset(
            dataset_pb2.DeleteDatasetRequest(name=dataset), metadata=stubs.auth
        )
