"""The binned baseline an assay keeps with its row (schema 25).

An assay's baseline is binned once: when the assay is created, and again when an
update changes what the bins depend on (``spec.binned_from``: the baseline, the
path, the version, the summarizer's bin mode, num_bins, outlier edges and
provided edges). The scheduler and RunAssay by name score windows against the
kept summary: the baseline is not read and binned again at every window, and a
baseline range of the log whose hours retention has deleted since still scores
windows, with the same bins. A row stored before schema 25 keeps none; its
baseline is binned at first use and kept then.

What is kept: a JSON summary (edges, per-bin counts, count, min, max, mean,
median, std, and digests of what it was binned from); the densities are the
counts over the count, computed again to the same floats. The raw values are
kept too (float64 bytes) only while the metric scores against them (ks and
wasserstein): they grow with the baseline, and the binned metrics never read
them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlserve.assays import maths
from mlserve.assays.maths import BaselineSummary
from mlserve.assays.spec import AssaySpec, binned_from

_FLOAT64 = np.dtype("<f8")


@dataclass(frozen=True)
class KeptBaseline:
    """A baseline summary as an Assay row keeps it, and what it was binned from."""

    summary: BaselineSummary
    source: str  # digest of binned_from's "source"
    bins: str  # digest of binned_from's "bins"
    has_values: bool  # whether summary.values holds the raw values

    def serves(self, spec: AssaySpec) -> bool:
        """Whether ``spec``'s windows may be scored against this summary as it is."""
        source, bins = _digests(spec)
        needs_values = spec.summarizer.scores_raw_values
        return (source, bins) == (self.source, self.bins) and (self.has_values or not needs_values)

    def same_source(self, spec: AssaySpec) -> bool:
        """Whether ``spec`` reads its baseline's values where this summary's came from."""
        return _digests(spec)[0] == self.source


def kept_columns(spec: AssaySpec, summary: BaselineSummary) -> dict[str, Any]:
    """The Assay row's columns that keep ``summary``, binned for ``spec``."""
    source, bins = _digests(spec)
    text = json.dumps(
        {
            "source": source,
            "bins": bins,
            "edges": summary.edges.tolist(),
            "counts": summary.counts.tolist(),
            "count": summary.count,
            "min": summary.minimum,
            "max": summary.maximum,
            "mean": summary.mean,
            "median": summary.median,
            "std": summary.std,
        }
    )
    values = None
    if spec.summarizer.scores_raw_values:
        values = np.ascontiguousarray(summary.values, dtype=_FLOAT64).tobytes()
    return {"baseline_summary": text, "baseline_values": values}


def kept_of(row: Any) -> KeptBaseline | None:
    """The summary an Assay row keeps; None when it keeps none (stored before schema 25)."""
    if row.baseline_summary is None:
        return None
    data = json.loads(row.baseline_summary)
    blob = row.baseline_values
    values = np.zeros(0) if blob is None else np.frombuffer(bytes(blob), dtype=_FLOAT64)
    counts = np.asarray(data["counts"], dtype=np.int64)
    summary = BaselineSummary(
        edges=np.asarray(data["edges"], dtype=np.float64),
        counts=counts,
        densities=maths.densities(counts),
        count=data["count"],
        minimum=data["min"],
        maximum=data["max"],
        mean=data["mean"],
        median=data["median"],
        std=data["std"],
        values=values,
    )
    return KeptBaseline(summary, data["source"], data["bins"], blob is not None)


def _digests(spec: AssaySpec) -> tuple[str, str]:
    """sha256 of binned_from's two parts (an inline baseline's values are in the
    source: digests keep the row from holding them twice)."""
    parts = binned_from(spec)
    return _digest(parts["source"]), _digest(parts["bins"])


def _digest(part: Any) -> str:
    return hashlib.sha256(json.dumps(part, sort_keys=True).encode()).hexdigest()
