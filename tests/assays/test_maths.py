"""The assay rules, each against values worked out by hand (the arithmetic is in the test)."""

from __future__ import annotations

from math import log

import numpy as np
import pytest

from mlserve.assays.maths import (
    Aggregation,
    BinMode,
    Metric,
    Status,
    Summarizer,
    bin_counts,
    edges_of,
    finite,
    score_window,
    status_of,
    summarize_baseline,
)
from mlserve.core.errors import InvalidArgument

BASELINE = [1.0, 2.0, 3.0, 4.0, 5.0]
# Quantile edges, n = 4: positions (5 - 1)·k/4 = 0, 1, 2, 3, 4 → 1, 2, 3, 4, 5.
# Bins (-∞,1) [1,2] (2,3] (3,4] (4,5] (5,∞) hold 0, {1,2}, {3}, {4}, {5}, 0.
BASELINE_DENSITY = [0, 2 / 5, 1 / 5, 1 / 5, 1 / 5, 0]
# 0 < 1 (left outlier), 3 and 3 in (2,3], 6 > 5 (right outlier): counts 1,0,2,0,0,1 of 4.
WINDOW = [0.0, 3.0, 3.0, 6.0]
WINDOW_DENSITY = [1 / 4, 0, 2 / 4, 0, 0, 1 / 4]


def quartiles(metric: Metric = Metric.PSI, **fields: object) -> Summarizer:
    return Summarizer(num_bins=4, metric=metric, **fields)  # type: ignore[arg-type]


def test_quantile_edges_are_numpys_linear_quantiles() -> None:
    assert edges_of(finite(BASELINE), quartiles()).tolist() == [1, 2, 3, 4, 5]
    # [0, 10]: quantile(q) = 0 + q·(10 - 0) → 0, 2.5, 5, 7.5, 10.
    assert edges_of(finite([10.0, 0.0]), quartiles()).tolist() == [0, 2.5, 5, 7.5, 10]


def test_equal_edges_split_min_to_max() -> None:
    # min 0, max 10, n = 5: eₖ = 0 + k·10/5.
    summarizer = Summarizer(bin_mode=BinMode.EQUAL, num_bins=5)
    assert edges_of(finite([0.0, 1.0, 10.0]), summarizer).tolist() == [0, 2, 4, 6, 8, 10]


def test_provided_edges_n_plus_one_as_given_or_n_right_edges_from_the_baseline_min() -> None:
    full = Summarizer(bin_mode=BinMode.PROVIDED, num_bins=2, provided_edges=(0.0, 1.5, 9.0))
    assert edges_of(finite(BASELINE), full).tolist() == [0, 1.5, 9]
    right = Summarizer(bin_mode=BinMode.PROVIDED, num_bins=4, provided_edges=(2, 3, 4, 5))
    assert edges_of(finite(BASELINE), right).tolist() == [1, 2, 3, 4, 5]  # e₀ = min(b) = 1


def test_baseline_summary_counts_densities_and_moments() -> None:
    summary = summarize_baseline(BASELINE, quartiles())
    assert summary.counts.tolist() == [0, 2, 1, 1, 1, 0]
    assert summary.densities.tolist() == pytest.approx(BASELINE_DENSITY)
    assert (summary.count, summary.minimum, summary.maximum) == (5, 1, 5)
    assert (summary.mean, summary.median) == (3, 3)
    # Population std: sqrt(((-2)² + (-1)² + 0 + 1² + 2²)/5) = sqrt(2).
    assert summary.std == pytest.approx(2**0.5)


def test_without_outlier_edges_values_outside_fall_in_the_end_bins() -> None:
    edges = np.array([1.0, 2, 3, 4, 5])
    # Inner counts [1,2]:0 (2,3]:2 (3,4]:0 (4,5]:0, then 0 joins the first and 6 the last.
    assert bin_counts(finite(WINDOW), edges, add_outlier_edges=False).tolist() == [1, 2, 0, 1]
    assert bin_counts(finite(WINDOW), edges, add_outlier_edges=True).tolist() == [1, 0, 2, 0, 0, 1]


def test_psi_replaces_zero_densities_by_0_005() -> None:
    result = score_window(WINDOW, summarize_baseline(BASELINE, quartiles()), quartiles())
    z = 0.005
    expected = [
        (1 / 4 - z) * log((1 / 4) / z),  # window 1/4, baseline empty
        (z - 2 / 5) * log(z / (2 / 5)),  # window empty, baseline 2/5
        (2 / 4 - 1 / 5) * log((2 / 4) / (1 / 5)),
        (z - 1 / 5) * log(z / (1 / 5)),
        (z - 1 / 5) * log(z / (1 / 5)),
        (1 / 4 - z) * log((1 / 4) / z),
    ]
    assert result.window_densities.tolist() == pytest.approx(WINDOW_DENSITY)
    assert result.bin_scores.tolist() == pytest.approx(expected)
    assert result.score == pytest.approx(sum(expected))  # ≈ 5.3613
    assert result.count == 4
    assert result.status is Status.ALERT


def test_psi_bin_empty_on_both_sides_contributes_nothing() -> None:
    # Window 1 and 3: bins [1,2] and (2,3] get ½ each; both outlier bins are empty on both sides.
    result = score_window([1.0, 3.0], summarize_baseline(BASELINE, quartiles()), quartiles())
    z = 0.005
    assert result.bin_scores[0] == 0
    assert result.bin_scores[5] == 0
    expected = (
        (1 / 2 - 2 / 5) * log((1 / 2) / (2 / 5))
        + (1 / 2 - 1 / 5) * log((1 / 2) / (1 / 5))
        + 2 * (z - 1 / 5) * log(z / (1 / 5))
    )
    assert result.score == pytest.approx(expected)


def test_the_same_distribution_scores_zero() -> None:
    baseline = summarize_baseline(BASELINE, quartiles())
    for metric in Metric:
        result = score_window(BASELINE, baseline, quartiles(metric))
        assert result.score == pytest.approx(0.0), metric
        assert result.status is Status.OK


def test_all_data_in_the_right_outlier_bin() -> None:
    baseline = summarize_baseline(BASELINE, quartiles())
    psi = score_window([100.0, 200.0], baseline, quartiles())
    z = 0.005
    assert psi.window_densities.tolist() == [0, 0, 0, 0, 0, 1]
    expected = (
        0  # left outlier: empty on both sides
        + (z - 2 / 5) * log(z / (2 / 5))
        + 3 * (z - 1 / 5) * log(z / (1 / 5))
        + (1 - z) * log(1 / z)  # ≈ 5.2718
    )
    assert psi.score == pytest.approx(expected)  # ≈ 9.1607
    max_diff = score_window([100.0, 200.0], baseline, quartiles(Metric.MAX_DIFF))
    assert (max_diff.score, max_diff.max_diff_bin) == (1.0, 5)  # |1 - 0| in the right outlier
    sum_diff = score_window([100.0, 200.0], baseline, quartiles(Metric.SUM_DIFF))
    assert sum_diff.score == pytest.approx(0.5 * (0 + 2 / 5 + 1 / 5 + 1 / 5 + 1 / 5 + 1))  # = 1


def test_repeated_quantile_edges_keep_their_empty_bins() -> None:
    # [1,1,1,1,2], n = 4: positions 0…4 → edges 1, 1, 1, 1, 2. Bins (-∞,1) [1,1] (1,1] (1,1]
    # (1,2] (2,∞): the four 1s go to [1,1], the 2 to (1,2]; the two (1,1] bins stay, empty.
    baseline = summarize_baseline([1.0, 1, 1, 1, 2], quartiles())
    assert baseline.edges.tolist() == [1, 1, 1, 1, 2]
    assert baseline.counts.tolist() == [0, 4, 0, 0, 1, 0]
    result = score_window([1.0, 1.5], baseline, quartiles())
    assert result.window_densities.tolist() == [0, 1 / 2, 0, 0, 1 / 2, 0]
    expected = (1 / 2 - 4 / 5) * log((1 / 2) / (4 / 5)) + (1 / 2 - 1 / 5) * log((1 / 2) / (1 / 5))
    assert result.score == pytest.approx(expected)  # ≈ 0.4159


def test_max_diff_reports_its_bin_and_sum_diff_halves_the_total() -> None:
    baseline = summarize_baseline(BASELINE, quartiles())
    # |w - b| = |1/4-0|, |0-2/5|, |2/4-1/5|, |0-1/5|, |0-1/5|, |1/4-0| = .25 .4 .3 .2 .2 .25
    max_diff = score_window(WINDOW, baseline, quartiles(Metric.MAX_DIFF))
    assert max_diff.score == pytest.approx(0.4)
    assert max_diff.max_diff_bin == 1
    sum_diff = score_window(WINDOW, baseline, quartiles(Metric.SUM_DIFF))
    assert sum_diff.score == pytest.approx(0.5 * (0.25 + 0.4 + 0.3 + 0.2 + 0.2 + 0.25))  # 0.8


def test_bin_weights_multiply_each_term() -> None:
    baseline = summarize_baseline(BASELINE, quartiles())
    weights = (0.0, 1.0, 1.0, 1.0, 1.0, 0.0)  # ignore the outlier bins
    result = score_window(WINDOW, baseline, quartiles(Metric.SUM_DIFF, bin_weights=weights))
    assert result.score == pytest.approx(0.5 * (0.4 + 0.3 + 0.2 + 0.2))  # 0.55
    doubled = score_window(
        WINDOW, baseline, quartiles(Metric.MAX_DIFF, bin_weights=(2, 1, 1, 1, 1, 1))
    )
    assert (doubled.score, doubled.max_diff_bin) == (pytest.approx(0.5), 0)  # 2·0.25 beats 0.4


def test_cumulative_sums_the_cdf_differences() -> None:
    baseline = summarize_baseline(BASELINE, quartiles())
    result = score_window(WINDOW, baseline, quartiles(aggregation=Aggregation.CUMULATIVE))
    # CDFb = 0 .4 .6 .8 1 1; CDFw = .25 .25 .75 .75 .75 1; |Δ| = .25 .15 .15 .05 .25 0.
    assert result.bin_scores.tolist() == pytest.approx([0.25, 0.15, 0.15, 0.05, 0.25, 0])
    assert result.score == pytest.approx(0.85)


def test_scipy_metrics_on_disjoint_samples() -> None:
    baseline = summarize_baseline([0.0, 1.0], Summarizer(num_bins=2))
    # Edges 0, .5, 1; the window 2, 3 lies wholly in the right outlier bin.
    ks = score_window([2.0, 3.0], baseline, Summarizer(num_bins=2, metric=Metric.KS))
    assert ks.score == 1.0  # the CDFs never overlap
    wasserstein = score_window(
        [2.0, 3.0], baseline, Summarizer(num_bins=2, metric=Metric.WASSERSTEIN)
    )
    assert wasserstein.score == pytest.approx(2.0)  # every value moves by 2
    js = score_window([2.0, 3.0], baseline, Summarizer(num_bins=2, metric=Metric.JENSEN_SHANNON))
    assert js.score == pytest.approx(1.0)  # disjoint densities: the base-2 maximum


def test_status_thresholds_are_strict() -> None:
    summarizer = Summarizer(warning_threshold=0.1, alert_threshold=0.25)
    assert status_of(0.3, summarizer) is Status.ALERT
    assert status_of(0.25, summarizer) is Status.WARNING  # not above the alert threshold
    assert status_of(0.2, summarizer) is Status.WARNING
    assert status_of(0.1, summarizer) is Status.OK
    assert status_of(0.2, Summarizer()) is Status.OK  # no warning threshold
    assert status_of(None, summarizer) is Status.NO_DATA


def test_a_window_without_data_has_no_score() -> None:
    baseline = summarize_baseline(BASELINE, quartiles())
    result = score_window([float("nan")], baseline, quartiles())
    assert (result.count, result.score, result.status) == (0, None, Status.NO_DATA)


def test_a_baseline_without_values_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="baseline"):
        summarize_baseline([], quartiles())


@pytest.mark.parametrize(
    ("summarizer", "field"),
    [
        (Summarizer(num_bins=1), "num_bins"),
        (Summarizer(num_bins=101), "num_bins"),
        (
            Summarizer(bin_mode=BinMode.PROVIDED, num_bins=3, provided_edges=(1, 2)),
            "provided_edges",
        ),
        (
            Summarizer(bin_mode=BinMode.PROVIDED, num_bins=2, provided_edges=(1, 3, 2)),
            "provided_edges",
        ),
        (Summarizer(num_bins=2, provided_edges=(1, 2)), "provided_edges"),
        (Summarizer(num_bins=2, bin_weights=(1, 1)), "bin_weights"),
        (Summarizer(num_bins=2, add_outlier_edges=False, bin_weights=(1, 1, 1, 1)), "bin_weights"),
        (Summarizer(num_bins=2, metric=Metric.KS, bin_weights=(1, 1, 1, 1)), "bin_weights"),
        (Summarizer(warning_threshold=0.5, alert_threshold=0.25), "warning_threshold"),
    ],
)
def test_bad_summarizers_name_the_field(summarizer: Summarizer, field: str) -> None:
    with pytest.raises(InvalidArgument, match=f"summarizer.{field}"):
        summarizer.check()
