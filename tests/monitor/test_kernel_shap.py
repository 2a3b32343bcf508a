"""MLServe's KernelExplainer gives shap's own answers, to rounding: only its
per-sample expectation is computed differently (vectorised)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import shap

from mlserve.monitor.kernel_shap import KernelExplainer, summarise

# shap 0.46 warns on every explanation that l1_reg="auto" will change; both sides use it.
pytestmark = pytest.mark.filterwarnings("ignore:l1_reg=:DeprecationWarning")


@pytest.mark.parametrize(("features", "samples"), [(20, 2048), (6, 2048), (12, 300)])
def test_the_same_values_as_shaps_own(features: int, samples: int) -> None:
    generator = np.random.default_rng(features)
    weights = generator.normal(size=features)
    background = generator.normal(size=(30, features))
    rows = generator.normal(size=(2, features))

    def model(x: Any) -> Any:  # not linear: every coalition counts
        return np.tanh(x @ weights) + x[:, 0] * x[:, 1]

    answers = []
    for explainer in (shap.KernelExplainer(model, background), KernelExplainer(model, background)):
        np.random.seed(3)  # shap draws its coalitions from numpy's global generator
        answers.append(np.asarray(explainer.shap_values(rows, nsamples=samples, silent=True)))
        assert explainer.expected_value == pytest.approx(model(background).mean())
    np.testing.assert_allclose(answers[1], answers[0], rtol=0, atol=1e-12)


def test_a_summarised_background_is_weighted_the_same() -> None:
    generator = np.random.default_rng(1)
    background = generator.normal(size=(200, 5))
    summary = shap.kmeans(background, 7)
    rows = generator.normal(size=(1, 5))

    def model(x: Any) -> Any:
        return np.sin(x).sum(axis=1)

    ours = KernelExplainer(model, summary).shap_values(rows, nsamples=64, silent=True)
    theirs = shap.KernelExplainer(model, summary).shap_values(rows, nsamples=64, silent=True)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=0, atol=1e-12)


def test_summarise_is_shaps_kmeans() -> None:
    rows = np.random.default_rng(2).normal(size=(300, 4))
    ours, theirs = summarise(rows, 5), shap.kmeans(rows, 5)
    np.testing.assert_array_equal(ours.data, theirs.data)
    np.testing.assert_array_equal(ours.weights, theirs.weights)
