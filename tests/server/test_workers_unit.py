"""The parent of ``--workers``: its restart schedule and its run's metrics directory."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

from prometheus_client import CollectorRegistry, values

from mlserve.workers import (
    CRASH_LOOP_EXITS,
    MAX_DELAY,
    MULTIPROCESS_VARIABLE,
    MergedWorkers,
    RunMetrics,
    Slot,
    sweep_dead_runs,
)


def test_a_lone_exit_restarts_at_once_and_exits_in_a_row_wait_longer() -> None:
    delays = [Slot(1, early_exits=exits).delay() for exits in range(1, CRASH_LOOP_EXITS)]
    assert delays[0] == 0.0
    assert all(later > earlier for earlier, later in itertools.pairwise(delays))
    assert Slot(1, early_exits=100).delay() == MAX_DELAY


def test_a_run_has_its_own_directory_that_a_live_run_keeps(tmp_path: Path) -> None:
    with RunMetrics(tmp_path) as first, RunMetrics(tmp_path) as second:
        assert first.directory != second.directory
        assert os.environ[MULTIPROCESS_VARIABLE] == str(second.directory)
        (first.directory / "counter_1.db").write_bytes(b"")
        assert sweep_dead_runs(tmp_path) == []  # both parents hold their locks
        assert (first.directory / "counter_1.db").exists()
    assert MULTIPROCESS_VARIABLE not in os.environ
    assert list(tmp_path.iterdir()) == []


def test_the_directory_of_a_run_whose_parent_died_is_swept(tmp_path: Path) -> None:
    dead = tmp_path / "host-1-0000"
    dead.mkdir()
    (dead / "counter_7.db").write_bytes(b"")
    (tmp_path / "host-1-0000.lock").write_bytes(b"")  # nobody holds it
    (tmp_path / "counter_3.db").write_bytes(b"")  # the layout before runs had directories
    with RunMetrics(tmp_path) as run:
        assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
            [run.directory.name, f"{run.directory.name}.lock"]
        )


def test_a_dead_workers_live_gauges_go_and_its_counters_stay(tmp_path: Path) -> None:
    with RunMetrics(tmp_path) as run:
        for name in ("gauge_livemostrecent_42.db", "gauge_liveall_42.db", "counter_42.db",
                     "gauge_livemostrecent_43.db"):  # fmt: skip
            (run.directory / name).write_bytes(b"")
        run.process_dead(42)
        assert sorted(path.name for path in run.directory.iterdir()) == [
            "counter_42.db",
            "gauge_livemostrecent_43.db",
        ]


def test_the_merge_leaves_out_a_file_created_but_not_yet_sized(tmp_path: Path) -> None:
    # prometheus_client/client_python#1199: one such file used to fail every scrape.
    with RunMetrics(tmp_path) as run:
        value_class = values.MultiProcessValue(lambda: 7)  # type: ignore[no-untyped-call]
        value = value_class("counter", "calls", "calls_total", (), (), "help")
        value.inc(3)
        (run.directory / "counter_8.db").write_bytes(b"")  # a worker killed in that moment
        merged = CollectorRegistry()
        MergedWorkers(merged)  # type: ignore[no-untyped-call]
        assert merged.get_sample_value("calls_total") == 3
