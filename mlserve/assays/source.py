"""Reading one number per call out of the inference log, vectorised.

Reads only the ``time`` and one tensor column of each hour partition the
range touches (``mlserve.monitor.reader.logged_tables``), and takes element
``index`` of every row's list with numpy (no loop over rows). Windows of a
long range are read hour by hour (``window_values``), so a RunAssay over
thousands of windows holds a window's hours of the log, not the range's.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path as FilePath
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from mlserve.assays.spec import Path
from mlserve.monitor.reader import logged_hours, logged_tables, micros
from mlserve.monitor.store import LogStore

_HOUR = dt.timedelta(hours=1)


def logged_values(
    root: FilePath | LogStore,
    model: str,
    version: int,
    path: Path,
    start: dt.datetime,
    end: dt.datetime,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """(times in µs, values) of ``path`` in ``model``'s log in [start, end), by time."""
    column = path.column()
    tables = logged_tables(root, model, [column], start, end, _version_filter(version))
    return _by_time(tables, column, path.index)


def window_values(
    root: FilePath | LogStore,
    model: str,
    version: int,
    path: Path,
    spans: Sequence[tuple[dt.datetime, dt.datetime]],
) -> Iterator[npt.NDArray[np.float64]]:
    """The values of ``path`` in ``model``'s log in each of ``spans`` ((start, end),
    by start and of one width, as ``spec.windows`` gives them), in that order: each
    what ``logged_values`` gives for that span, in one pass over the log.

    The log is read hour partition by hour partition (one listing, each file once,
    however much the windows overlap); a window is cut out as soon as the hours it
    meets are read, and what no later window needs is dropped. So memory holds the
    calls of the hours the current window meets and of the hour being read, however
    many windows the range holds.
    """
    if not spans:
        return
    starts = np.asarray([micros(begin) for begin, _ in spans], dtype=np.int64)
    ends = np.asarray([micros(finish) for _, finish in spans], dtype=np.int64)
    column = path.column()
    hours = logged_hours(
        root, model, [column], spans[0][0], max(finish for _, finish in spans),
        _version_filter(version),
    )  # fmt: skip
    times, values = np.zeros(0, np.int64), np.zeros(0, np.float64)
    done = 0
    for hour, tables in hours:
        hour_times, hour_values = _by_time(tables, column, path.index)
        # Hours come in order and hold only their own calls: appending keeps the order.
        times, values = np.concatenate([times, hour_times]), np.concatenate([values, hour_values])
        del hour_times, hour_values
        read_until = micros(hour + _HOUR)  # every call before it has been read
        while done < len(spans) and ends[done] <= read_until:
            yield _between(times, values, starts[done], ends[done])
            done += 1
        if done == len(spans):
            return
        kept = int(np.searchsorted(times, starts[done]))  # later windows start later
        times, values = times[kept:], values[kept:]
    for k in range(done, len(spans)):
        yield _between(times, values, starts[k], ends[k])


def _between(
    times: npt.NDArray[np.int64], values: npt.NDArray[np.float64], start: int, end: int
) -> npt.NDArray[np.float64]:
    """The values whose (sorted) times lie in [start, end)."""
    low, high = np.searchsorted(times, [start, end])
    return values[low:high]


def _version_filter(version: int) -> Any:
    return None if not version else pc.field("version") == version


def _by_time(
    tables: Iterable[pa.Table], column: str, index: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """(times in µs, values) of element ``index`` of ``column`` in ``tables``, by time
    (a stable sort: calls of one time keep the tables' order)."""
    times: list[npt.NDArray[np.int64]] = []
    values: list[npt.NDArray[np.float64]] = []
    for table in tables:
        found, element = _element(table[column].combine_chunks(), index)
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
