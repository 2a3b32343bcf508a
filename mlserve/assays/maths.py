"""The maths of a drift assay: edges, bins, densities, scores and status.

Pure functions over numpy arrays, vectorised (no Python loop over rows), so
a window of ten million values costs one ``searchsorted`` and one
``bincount``. The rules, which the README and ``assay.proto`` repeat:

Edges, from the baseline values b and ``num_bins`` n (always n + 1 of them):
    quantile   e₀ = min(b), eₖ = quantile(b, k/n) for k = 1…n (numpy's
               default linear method, so eₙ = max(b)).
    equal      eₖ = min(b) + k·(max(b) - min(b))/n.
    provided   n + 1 edges e₀…eₙ as given, or n edges e₁…eₙ with
               e₀ = min(b) (lowered to e₁ if the baseline starts above it);
               they must increase strictly.

Bins: with outlier edges (the default) n + 2 bins, the left outlier
(-∞, e₀), then [e₀, e₁], (e₁, e₂], …, (eₙ₋₁, eₙ], and the right outlier
(eₙ, +∞). Without, a value below e₀ falls in the first bin and one above eₙ
in the last (n bins). Repeated (quantile) edges make empty bins; they are
kept, never merged. Values that are not finite (NaN, ±inf) are ignored.

Aggregation: ``density`` is count / total per bin. ``cumulative`` is the
running sum of the densities (an empirical CDF per bin); its per-bin score is
|CDFw - CDFb| · weight and the score is their sum, whatever the metric.

Metrics on densities w (window) and b (baseline), per-bin weights ωᵢ
(default 1):
    psi         Σ ωᵢ·(wᵢ - bᵢ)·ln(wᵢ/bᵢ), a zero density replaced by 0.005,
                a bin empty on both sides contributing 0.
    max_diff    max ωᵢ·|wᵢ - bᵢ|, and the (0-based) bin where it is reached
                (the first one on ties).
    sum_diff    ½·Σ ωᵢ·|wᵢ - bᵢ|.
    ks          two-sample Kolmogorov-Smirnov statistic of the raw values
                (scipy.stats.ks_2samp).
    wasserstein earth mover's distance of the raw values
                (scipy.stats.wasserstein_distance), in the data's units.
    jensen_shannon  Jensen-Shannon distance of the two densities, base 2, in
                [0, 1] (scipy.spatial.distance.jensenshannon).
For ks, wasserstein and jensen_shannon the per-bin scores are |wᵢ - bᵢ| (for
reading the chart; they do not add up to the score) and bin weights are
refused.

Status: ALERT when score > alert threshold, else WARNING when a warning
threshold is set and score > it, else OK. A window without values has
status NO_DATA, count 0 and no score — never OK.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from mlserve.core.errors import InvalidArgument

Floats = npt.NDArray[np.float64]

ZERO_DENSITY = 0.005
MIN_BINS, MAX_BINS = 2, 100
DEFAULT_ALERT_THRESHOLD = 0.25


class BinMode(enum.Enum):
    QUANTILE = "quantile"
    EQUAL = "equal"
    PROVIDED = "provided"


class Aggregation(enum.Enum):
    DENSITY = "density"
    CUMULATIVE = "cumulative"


class Metric(enum.Enum):
    PSI = "psi"
    MAX_DIFF = "max_diff"
    SUM_DIFF = "sum_diff"
    KS = "ks"
    WASSERSTEIN = "wasserstein"
    JENSEN_SHANNON = "jensen_shannon"


_BINNED = (Metric.PSI, Metric.MAX_DIFF, Metric.SUM_DIFF)
_RAW = (Metric.KS, Metric.WASSERSTEIN)


class Status(enum.Enum):
    OK = "ok"
    WARNING = "warning"
    ALERT = "alert"
    NO_DATA = "no_data"


@dataclass(frozen=True)
class Summarizer:
    """How values are binned and scored (see the module docstring for the rules)."""

    bin_mode: BinMode = BinMode.QUANTILE
    num_bins: int = 5
    add_outlier_edges: bool = True
    bin_weights: tuple[float, ...] = ()
    provided_edges: tuple[float, ...] = ()
    aggregation: Aggregation = Aggregation.DENSITY
    metric: Metric = Metric.PSI
    warning_threshold: float | None = None
    alert_threshold: float = DEFAULT_ALERT_THRESHOLD

    @property
    def scores_raw_values(self) -> bool:
        """Whether windows are scored against the baseline's raw values (ks and
        wasserstein with density aggregation), not only its bins."""
        return self.aggregation is Aggregation.DENSITY and self.metric in _RAW

    @property
    def bin_count(self) -> int:
        """Bins of a result: num_bins, plus the two outlier bins when they are on."""
        return self.num_bins + (2 if self.add_outlier_edges else 0)

    def check(self) -> None:
        """Raise InvalidArgument naming the first field that breaks a rule."""
        if not MIN_BINS <= self.num_bins <= MAX_BINS:
            raise InvalidArgument(
                f"summarizer.num_bins is {self.num_bins}; it must be between {MIN_BINS} and "
                f"{MAX_BINS} (5-14 is usual)"
            )
        if self.bin_mode is BinMode.PROVIDED:
            edges = np.asarray(self.provided_edges, dtype=np.float64)
            if len(edges) not in (self.num_bins, self.num_bins + 1):
                raise InvalidArgument(
                    f"summarizer.provided_edges has {len(edges)} edges; with num_bins "
                    f"{self.num_bins} give {self.num_bins} (right edges) or {self.num_bins + 1}"
                )
            if not np.all(np.isfinite(edges)) or np.any(np.diff(edges) <= 0):
                raise InvalidArgument(
                    "summarizer.provided_edges must be finite and increase strictly"
                )
        elif self.provided_edges:
            raise InvalidArgument(
                "summarizer.provided_edges is only for bin_mode provided; remove them or set "
                "bin_mode to provided"
            )
        if self.bin_weights:
            if self.metric not in _BINNED and self.aggregation is Aggregation.DENSITY:
                raise InvalidArgument(
                    f"summarizer.bin_weights do not apply to metric {self.metric.value}; they "
                    "weigh the terms of psi, max_diff, sum_diff and cumulative aggregation"
                )
            if len(self.bin_weights) != self.bin_count:
                raise InvalidArgument(
                    f"summarizer.bin_weights has {len(self.bin_weights)} weights; it needs "
                    f"{self.bin_count} (num_bins"
                    + (" + 2 outlier bins)" if self.add_outlier_edges else ")")
                )
            if not all(np.isfinite(w) and w >= 0 for w in self.bin_weights):
                raise InvalidArgument("summarizer.bin_weights must be finite and not negative")
        for name, value in (
            ("warning_threshold", self.warning_threshold),
            ("alert_threshold", self.alert_threshold),
        ):
            if value is not None and not np.isfinite(value):
                raise InvalidArgument(f"summarizer.{name} must be a finite number")
        if self.warning_threshold is not None and self.warning_threshold > self.alert_threshold:
            raise InvalidArgument(
                f"summarizer.warning_threshold ({self.warning_threshold}) is above "
                f"alert_threshold ({self.alert_threshold}); a warning must come first"
            )


@dataclass(frozen=True)
class BaselineSummary:
    """The binned baseline (the "interactive baseline")."""

    edges: Floats
    counts: npt.NDArray[np.int64]
    densities: Floats
    count: int
    minimum: float
    maximum: float
    mean: float
    median: float
    std: float  # population standard deviation (ddof 0)
    values: Floats = field(repr=False)  # kept for ks and wasserstein


@dataclass(frozen=True)
class WindowScore:
    """One window scored against the baseline. ``score`` is None when ``count`` is 0."""

    count: int
    window_densities: Floats
    bin_scores: Floats
    score: float | None
    status: Status
    max_diff_bin: int | None = None


def finite(values: npt.ArrayLike) -> Floats:
    """The values as float64, without NaN and ±inf."""
    array: Floats = np.asarray(values, dtype=np.float64).ravel()
    kept: Floats = array[np.isfinite(array)]
    return kept


def edges_of(baseline: Floats, summarizer: Summarizer) -> Floats:
    """The num_bins + 1 edges e₀…eₙ of ``summarizer`` over ``baseline`` (finite, not empty)."""
    n = summarizer.num_bins
    if summarizer.bin_mode is BinMode.QUANTILE:
        return np.asarray(np.quantile(baseline, np.arange(n + 1) / n), dtype=np.float64)
    low, high = float(baseline.min()), float(baseline.max())
    if summarizer.bin_mode is BinMode.EQUAL:
        return low + np.arange(n + 1) * (high - low) / n
    given = np.asarray(summarizer.provided_edges, dtype=np.float64)
    if len(given) == n + 1:
        return given
    return np.concatenate([[min(low, float(given[0]))], given])


def bin_counts(values: Floats, edges: Floats, add_outlier_edges: bool) -> npt.NDArray[np.int64]:
    """Per-bin counts of finite ``values`` (see the module docstring for which bin is which)."""
    n = len(edges) - 1
    # side="left" puts v in k where eₖ₋₁ < v ≤ eₖ: right-closed bins, v < e₀ in 0, v > eₙ in n+1.
    index = np.searchsorted(edges, values, side="left")
    # The first inner bin is closed on the left too: e₀ itself belongs to [e₀, e₁].
    index[values == edges[0]] = 1
    counts = np.bincount(index, minlength=n + 2).astype(np.int64)
    if add_outlier_edges:
        return counts
    inner = counts[1 : n + 1].copy()
    inner[0] += counts[0]
    inner[-1] += counts[n + 1]
    return inner


def densities(counts: npt.NDArray[np.int64]) -> Floats:
    """count / total per bin (all zeros when there is nothing)."""
    total = int(counts.sum())
    if total == 0:
        return np.zeros(len(counts))
    return counts / total


def summarize_baseline(values: npt.ArrayLike, summarizer: Summarizer) -> BaselineSummary:
    """Bin the baseline; raises InvalidArgument when it has no finite value."""
    baseline = finite(values)
    if baseline.size == 0:
        raise InvalidArgument(
            "baseline has no numeric values; choose a time range with logged data or give values"
        )
    edges = edges_of(baseline, summarizer)
    counts = bin_counts(baseline, edges, summarizer.add_outlier_edges)
    return BaselineSummary(
        edges=edges,
        counts=counts,
        densities=densities(counts),
        count=int(baseline.size),
        minimum=float(baseline.min()),
        maximum=float(baseline.max()),
        mean=float(baseline.mean()),
        median=float(np.median(baseline)),
        std=float(baseline.std()),
        values=baseline,
    )


def psi_terms(window: Floats, baseline: Floats) -> Floats:
    """(w - b)·ln(w/b) per bin, zeros replaced by 0.005, 0 where both are empty."""
    w = np.where(window == 0, ZERO_DENSITY, window)
    b = np.where(baseline == 0, ZERO_DENSITY, baseline)
    terms = (w - b) * np.log(w / b)
    return np.where((window == 0) & (baseline == 0), 0.0, terms)


def status_of(score: float | None, summarizer: Summarizer) -> Status:
    """ALERT above the alert threshold, WARNING above the warning one, else OK."""
    if score is None:
        return Status.NO_DATA
    if score > summarizer.alert_threshold:
        return Status.ALERT
    if summarizer.warning_threshold is not None and score > summarizer.warning_threshold:
        return Status.WARNING
    return Status.OK


def score_window(
    values: npt.ArrayLike, baseline: BaselineSummary, summarizer: Summarizer
) -> WindowScore:
    """Bin ``values`` on the baseline's edges and score them with the summarizer's metric."""
    window = finite(values)
    size = len(baseline.densities)
    if window.size == 0:
        return WindowScore(0, np.zeros(size), np.zeros(size), None, Status.NO_DATA)
    w = densities(bin_counts(window, baseline.edges, summarizer.add_outlier_edges))
    b = baseline.densities
    weights = np.asarray(summarizer.bin_weights or np.ones(size), dtype=np.float64)
    max_bin: int | None = None
    if summarizer.aggregation is Aggregation.CUMULATIVE:
        bin_scores = weights * np.abs(np.cumsum(w) - np.cumsum(b))
        score = float(bin_scores.sum())
    elif summarizer.metric is Metric.PSI:
        bin_scores = weights * psi_terms(w, b)
        score = float(bin_scores.sum())
    elif summarizer.metric is Metric.MAX_DIFF:
        bin_scores = weights * np.abs(w - b)
        max_bin = int(np.argmax(bin_scores))
        score = float(bin_scores[max_bin])
    elif summarizer.metric is Metric.SUM_DIFF:
        bin_scores = weights * np.abs(w - b)
        score = float(0.5 * bin_scores.sum())
    else:
        bin_scores = np.abs(w - b)
        score = _unbinned(summarizer.metric, window, w, baseline)
    return WindowScore(
        int(window.size), w, bin_scores, score, status_of(score, summarizer), max_bin
    )


def _unbinned(metric: Metric, window: Floats, w: Floats, baseline: BaselineSummary) -> float:
    # Imported here: scipy.stats costs every MLServe process ~0.7 s at start, and
    # only these metrics need it.
    from scipy import stats
    from scipy.spatial import distance

    if metric is Metric.KS:
        return float(stats.ks_2samp(window, baseline.values).statistic)
    if metric is Metric.WASSERSTEIN:
        return float(stats.wasserstein_distance(window, baseline.values))
    return float(distance.jensenshannon(w, baseline.densities, base=2))


def as_floats(values: Sequence[float]) -> Floats:
    """A tuple of floats (from a proto or a row) as an array."""
    return np.asarray(values, dtype=np.float64)
