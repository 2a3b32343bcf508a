"""Reading the log back: filtered, ordered by (time, id), one page at a time.

Hour partitions are scanned newest (or oldest) first and the scan stops as
soon as a page is full, so a page costs the hours it spans, not the whole
log. Only the metadata columns are scanned; the page's rows are then read
whole from their files.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from mlserve.monitor import parquet
from mlserve.monitor.records import Record
from mlserve.monitor.store import LogStore

_HOUR = dt.timedelta(hours=1)
_TIME = pa.timestamp("us", tz="UTC")

Key = tuple[int, str]  # (microseconds since the epoch, record id)


@dataclass(frozen=True)
class LogQuery:
    """Which records, in which order. ``models`` are the ones to look in (already
    narrowed to those the caller may see)."""

    models: tuple[str, ...]
    version: int = 0
    deployment: str = ""
    caller: str = ""
    app: str = ""
    status: str = ""
    start: dt.datetime | None = None
    end: dt.datetime | None = None
    newest_first: bool = True


# Listings of the log read again when retention removed a file listed a moment before.
_RELISTS = 3


def read_page(
    root: Path | LogStore, query: LogQuery, after: Key | None, size: int
) -> tuple[list[Record], Key | None]:
    """Up to ``size`` records after ``after``, and the key to continue from (None at the end).

    Retention may delete a file between the listing and the read: the page is then
    read again from a new listing, so it never fails for a file that is gone."""
    store = LogStore.of(root)
    for _ in range(_RELISTS - 1):
        try:
            return _read_page(store, query, after, size)
        except FileNotFoundError:
            continue
    return _read_page(store, query, after, size)


def _read_page(
    store: LogStore, query: LogQuery, after: Key | None, size: int
) -> tuple[list[Record], Key | None]:
    buckets = _hour_buckets(store, query)
    where = _filter(query, after)
    found: list[Any] = []
    count = 0
    for _, paths in buckets:
        table = ds.dataset(
            paths, schema=parquet.META, format="parquet", filesystem=store.filesystem
        ).to_table(columns=["id", "time", "__filename"], filter=where)
        if table.num_rows:
            found.append(table)
            count += table.num_rows
        if count > size:
            break
    if not found:
        return [], None
    order = "descending" if query.newest_first else "ascending"
    candidates = pa.concat_tables(found).sort_by([("time", order), ("id", order)])
    page = candidates.slice(0, size)
    records = _whole_rows(store, page)
    if candidates.num_rows <= size:
        return records, None
    last = records[-1]
    return records, (micros(last.time), last.id)


def _hour_buckets(store: LogStore, query: LogQuery) -> list[tuple[dt.datetime, list[str]]]:
    by_hour: defaultdict[dt.datetime, list[str]] = defaultdict(list)
    for model in query.models:
        for hour, path in _files_in_window(store, model, query.start, query.end):
            by_hour[hour].append(path)
    return sorted(by_hour.items(), reverse=query.newest_first)


def _files_in_window(
    store: LogStore, model: str, start: dt.datetime | None, end: dt.datetime | None
) -> Iterator[tuple[dt.datetime, str]]:
    """(hour, path) of each of ``model``'s log files whose hour meets [start, end)
    (None: open), oldest hour first."""
    for file in store.files(f"model={model}"):
        hour = parquet.partition_hour(file.path)
        if hour is None:
            continue
        if start is not None and hour + _HOUR <= start:
            continue
        if end is not None and hour >= end:
            continue
        yield hour, file.path


def logged_tables(
    root: Path | LogStore,
    model: str,
    columns: Sequence[str],
    start: dt.datetime | None,
    end: dt.datetime | None,
    where: Any = None,
) -> Iterator[pa.Table]:
    """``columns`` of ``model``'s calls logged in [start, end) (None: open) that match
    ``where`` (a ``pyarrow.compute`` expression, None: all), one table per log file,
    files oldest first, each file's calls in time order; a file lacking one of
    ``columns`` (its calls' policy did not record that tensor) is passed over, as is
    one with no such calls.

    The one place the log is read by time range for numbers (Explain's
    backgrounds, assays' windows): only the hours the range meets are opened, and
    only the named columns read.
    """
    store, conditions = LogStore.of(root), _range_filter(where, start, end)
    for _, paths in _hours(store, model, start, end):
        for path in paths:  # one file at a time
            if (table := _logged_file(store, path, columns, conditions)) is not None:
                yield table


def logged_hours(
    root: Path | LogStore,
    model: str,
    columns: Sequence[str],
    start: dt.datetime | None,
    end: dt.datetime | None,
    where: Any = None,
) -> Iterator[tuple[dt.datetime, list[pa.Table]]]:
    """``logged_tables`` grouped by hour partition: (hour, that hour's tables), oldest
    hour first, hours without such calls left out. The log files a call under its
    time's hour, so once hour h is yielded, every call before h + 1 hour is known:
    a reader may go on through a long range holding only the hours it still needs.
    """
    store, conditions = LogStore.of(root), _range_filter(where, start, end)
    for hour, paths in _hours(store, model, start, end):
        tables = [
            table
            for path in paths
            if (table := _logged_file(store, path, columns, conditions)) is not None
        ]
        if tables:
            yield hour, tables


def _hours(
    store: LogStore, model: str, start: dt.datetime | None, end: dt.datetime | None
) -> Iterator[tuple[dt.datetime, list[str]]]:
    """The paths of ``model``'s files meeting [start, end), by hour, oldest first (from
    one listing: grouping the paths reads no file ahead)."""
    files = _files_in_window(store, model, start, end)
    for hour, group in itertools.groupby(files, key=lambda item: item[0]):
        yield hour, [path for _, path in group]


def _range_filter(where: Any, start: dt.datetime | None, end: dt.datetime | None) -> list[Any]:
    """``where`` (None: none) and the time range, as conditions for ``_all_of``."""
    conditions = [] if where is None else [where]
    if start is not None:
        conditions.append(pc.field("time") >= pa.scalar(start, _TIME))
    if end is not None:
        conditions.append(pc.field("time") < pa.scalar(end, _TIME))
    return conditions


def _logged_file(
    store: LogStore, path: str, columns: Sequence[str], conditions: Sequence[Any]
) -> pa.Table | None:
    """``columns`` of one file's calls that meet ``conditions``; None when it lacks a
    column, has no such calls, or is gone."""
    try:
        names = pq.read_schema(path, filesystem=store.filesystem).names
        if not all(column in names for column in columns):
            return None
        table = pq.read_table(
            path,
            columns=list(dict.fromkeys(["time", *columns])),
            filters=_all_of(conditions),
            filesystem=store.filesystem,
        )
    except FileNotFoundError:
        return None  # deleted by retention since the listing: its calls are gone
    return table if table.num_rows else None


def _all_of(conditions: Sequence[Any]) -> Any:
    """The conjunction of ``conditions`` (None when there are none)."""
    where: Any = None
    for condition in conditions:
        where = condition if where is None else where & condition
    return where


def _filter(query: LogQuery, after: Key | None) -> Any:
    conditions: list[Any] = []
    for name in ("deployment", "caller", "app", "status"):
        value = getattr(query, name)
        if value:
            conditions.append(ds.field(name) == value)
    if query.version:
        conditions.append(ds.field("version") == query.version)
    if query.start is not None:
        conditions.append(ds.field("time") >= pa.scalar(query.start, _TIME))
    if query.end is not None:
        conditions.append(ds.field("time") < pa.scalar(query.end, _TIME))
    if after is not None:
        moment = pa.scalar(_from_micros(after[0]), _TIME)
        if query.newest_first:
            beyond = (ds.field("time") < moment) | (
                (ds.field("time") == moment) & (ds.field("id") < after[1])
            )
        else:
            beyond = (ds.field("time") > moment) | (
                (ds.field("time") == moment) & (ds.field("id") > after[1])
            )
        conditions.append(beyond)
    return _all_of(conditions)


def _whole_rows(store: LogStore, page: Any) -> list[Record]:
    ids: list[str] = page.column("id").to_pylist()
    by_file: defaultdict[str, list[str]] = defaultdict(list)
    for record_id, filename in zip(ids, page.column("__filename").to_pylist(), strict=True):
        by_file[filename].append(record_id)
    decoded: dict[str, Record] = {}
    for filename, wanted in by_file.items():
        table = pq.read_table(filename, filesystem=store.filesystem)
        table = table.filter(pc.is_in(table.column("id"), pa.array(wanted)))
        model = PurePosixPath(filename).parent.parent.parent.name.removeprefix("model=")
        for record in parquet.records_of(table, model):
            decoded[record.id] = record
    return [decoded[record_id] for record_id in ids if record_id in decoded]


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def micros(moment: dt.datetime) -> int:
    """Microseconds since the epoch (the log's time unit)."""
    return (moment - _EPOCH) // dt.timedelta(microseconds=1)


def _from_micros(value: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(microseconds=value)


@dataclass(frozen=True)
class RowsQuery:
    """Rows of ``width`` values of one input of a model, logged in [start, end)
    (None: open), at most ``limit`` of them."""

    model: str
    tensor: str
    width: int
    start: dt.datetime | None
    end: dt.datetime | None
    limit: int


def logged_rows(root: Path | LogStore, query: RowsQuery) -> Any:
    """The rows the query's input carried in its model's successful logged calls, as a
    float64 array; at most ``limit`` of them, evenly spread over the window when there
    are more.

    A call's tensor is its batch's elements end to end; one whose element count is
    not a multiple of ``width`` (another shape, or cut by the payload limit inside
    a row) is skipped, as is a call whose policy did not record inputs. A row with
    a value that is not finite (NaN, ±inf: a client may send them) is left out, as
    no background can hold it.

    Memory stays within one log file and 2·``limit`` rows however long the window:
    every ``stride``-th row is kept, and the stride doubles (every other kept row
    dropped) whenever more than 2·``limit`` are kept.
    """
    width, limit, column = query.width, query.limit, f"input.{query.tensor}"
    kept = np.zeros((0, width))
    stride, seen = 1, 0  # rows kept: those at positions seen so far that stride divides
    ok = pc.field("status") == "OK"
    for table in logged_tables(root, query.model, [column], query.start, query.end, ok):
        lists = table[column].combine_chunks()
        offsets = lists.offsets.to_numpy()
        lengths = np.diff(offsets)
        valid = np.asarray(lists.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
        whole = valid & (lengths > 0) & (lengths % width == 0)
        flat = lists.values.to_numpy(zero_copy_only=False)[offsets[0] : offsets[-1]]
        rows = np.asarray(flat[np.repeat(whole, lengths)], dtype=np.float64).reshape(-1, width)
        rows = rows[np.isfinite(rows).all(axis=1)]
        kept = np.concatenate([kept, rows[(-seen) % stride :: stride]])
        seen += len(rows)
        while len(kept) > 2 * limit:
            kept, stride = kept[::2], stride * 2
    if len(kept) > limit:
        kept = kept[np.linspace(0, len(kept) - 1, limit).round().astype(np.int64)]
    return kept
