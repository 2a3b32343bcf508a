"""Train a linear regression on the diabetes CSV and write a Triton model of it.

Run by MLServe as a training job (it reads $MLSERVE_DATA, $MLSERVE_PARAMS and writes
$MLSERVE_OUTPUT), or by hand with those three set. The bundled Triton has only the
Python backend (no ONNX Runtime), so the output is a Python-backend model whose
parameters are plain JSON (weights.json): the served model loads numbers, never a
pickle, so a model file from an untrusted job cannot run code when it is loaded
beyond the model.py this script writes.

Parameters: "target" (the column to predict, default "target"), "fit_intercept"
("true"/"false").
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LinearRegression

MODEL_PY = '''"""Triton Python backend: PREDICTION = INPUT @ coef + intercept (weights.json)."""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        weights = json.loads(
            (Path(__file__).parent / "weights.json").read_text()
        )
        self.coef = np.asarray(weights["coef"], dtype=np.float64)
        self.intercept = float(weights["intercept"])

    def execute(self, requests):
        responses = []
        for request in requests:
            rows = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy()
            predicted = rows.astype(np.float64) @ self.coef + self.intercept
            output = pb_utils.Tensor("PREDICTION", predicted.reshape(-1, 1).astype(np.float32))
            responses.append(pb_utils.InferenceResponse(output_tensors=[output]))
        return responses
'''

CONFIG = """backend: "python"
max_batch_size: 1024
input [ {{ name: "INPUT" data_type: TYPE_FP32 dims: [ {features} ] }} ]
output [ {{ name: "PREDICTION" data_type: TYPE_FP32 dims: [ 1 ] }} ]
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
"""


def main() -> None:
    data = Path(os.environ["MLSERVE_DATA"])
    output = Path(os.environ["MLSERVE_OUTPUT"])
    params = json.loads(Path(os.environ["MLSERVE_PARAMS"]).read_text())
    target = params.get("target", "target")
    frame = pd.concat([pd.read_csv(path) for path in sorted(data.glob("*.csv"))])
    features = [column for column in frame.columns if column != target]
    model = LinearRegression(fit_intercept=params.get("fit_intercept", "true") == "true")
    model.fit(frame[features].to_numpy(), frame[target].to_numpy())
    r2 = float(model.score(frame[features].to_numpy(), frame[target].to_numpy()))
    weights = {"features": features, "coef": model.coef_.tolist(),
               "intercept": float(model.intercept_)}  # fmt: skip
    (output / "weights.json").write_text(json.dumps(weights))
    (output / "model.py").write_text(MODEL_PY)
    (output / "config.pbtxt").write_text(CONFIG.format(features=len(features)))
    (output / "metrics.json").write_text(json.dumps({"r2": r2, "rows": len(frame)}))
    print(f"trained on {len(frame)} rows, {len(features)} features: r2 {r2:.4f}", flush=True)
    np.testing.assert_equal(len(model.coef_), len(features))


if __name__ == "__main__":
    main()
