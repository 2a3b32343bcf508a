"""Reading one number per call out of the inference log, vectorised.

Reads only the ``time`` and one tensor column of each hour partition the
range touches (``mlserve.monitor.reader.logged_tables``), and takes element
``index`` of every row's list with numpy (no loop over rows).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path as FilePath

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from mlserve.assays.spec import Path
from mlserve.monitor.reader import logged_tables
from mlserve.monitor.store import LogStore


def logged_values(
    root: FilePath | LogStore,
    model: str,
    version: int,
    path: Path,
    start: dt.datetime,
    end: dt.datetime,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """(times in µs, values) of ``path`` in ``model``'s log in [start, end), by time."""
    times: list[npt.NDArray[np.int64]] = []
    values: list[npt.NDArray[np.float64]] = []
    column = path.column()
    where = None if not version else pc.field("version") == version
    for table in logged_tables(root, model, [column], start, end, where):
        found, element = _element(table[column].combine_chunks(), path.index)
        stamps = table["time"].combine_chunks().cast(pa.int64()).to_numpy()
        times.append(stamps[found])
        values.append(element)
    if not times:
        return np.zeros(0, np.int64), np.zeros(0, np.float64)
    all_times, all_values = np.concatenate(times), np.concatenate(values)
    del times, values
    # Files hold calls in time order and are listed oldest first, so usually nothing
    # needs sorting; checking costs one pass, a sort three copies.
    if all_times.size > 1 and not np.all(all_times[1:] >= all_times[:-1]):
        order = np.argsort(all_times, kind="stable")
        all_times, all_values = all_times[order], all_values[order]
    return all_times, all_values


def _element(
    lists: pa.ListArray, index: int
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.float64]]:
    """Which rows have element ``index``, and those elements as float64."""
    offsets = lists.offsets.to_numpy()
    lengths = np.diff(offsets)
    valid = np.asarray(lists.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    found = valid & (lengths > index)
    positions = offsets[:-1][found] + index
    flat = lists.values.to_numpy(zero_copy_only=False)
    return found, np.asarray(flat[positions], dtype=np.float64)
