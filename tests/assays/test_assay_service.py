"""AssayService with a real MLServe (and its Triton): assays stored and read back,
baselines previewed and windows run over a log written through RecordInference,
and every bad input answered with its exact code, nothing stored."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp

from mlserve_api.v1 import assay_pb2, assay_pb2_grpc, inference_log_pb2
from mlserve_client import Client
from tests.support.checks import delete_model_quietly, expect_error, wait_until
from tests.support.commands import grpcurl, mlserve_cli
from tests.support.mlserve import MLServeProcess, Stubs
from tests.support.models import scale_model_files
from tests.support.pipelines import upload
from tests.support.users import PID, make_user

T0 = dt.datetime(2026, 1, 1, 10, 0, tzinfo=dt.timezone.utc)
ROWS = 50
# Where a run may keep the chart it drew, to look at (unset: nowhere).
ARTIFACTS = Path(os.environ.get("MLSERVE_TEST_ARTIFACTS", "/nonexistent"))


def _stamp(moment: dt.datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _record(stubs: Stubs, model: str, moment: dt.datetime, first: float) -> None:
    tensor = inference_log_pb2.Tensor(
        name="INPUT", datatype="FP32", shape=[4], fp_contents=[first, 0.0, 0.0, 0.0]
    )
    stubs.logs.RecordInference(
        inference_log_pb2.RecordInferenceRequest(
            model=model, version=1, time=_stamp(moment), inputs=[tensor]
        ),
        metadata=stubs.auth,
    )


def _logged(stubs: Stubs, model: str) -> int:
    answer = stubs.logs.ListInferenceLogs(
        inference_log_pb2.ListInferenceLogsRequest(model=model, page_size=1000),
        metadata=stubs.auth,
    )
    return len(answer.records)


@pytest.fixture(scope="module")
def assays(stubs: Stubs) -> assay_pb2_grpc.AssayServiceStub:
    return assay_pb2_grpc.AssayServiceStub(stubs.channel)


@pytest.fixture(scope="module")
def model(stubs: Stubs) -> Iterator[str]:
    """A model with a 4-element FP32 input whose log holds a baseline minute
    (INPUT[0] = 0, 0.02, …, 0.98), the same values a minute later, then shifted by 5."""
    name = f"t-assay-{PID}"
    upload(stubs, scale_model_files(name, dims=(4,)), name)
    for i in range(ROWS):
        _record(stubs, name, T0 + dt.timedelta(seconds=i), i / ROWS)
        _record(stubs, name, T0 + dt.timedelta(seconds=60 + i), i / ROWS)
        _record(stubs, name, T0 + dt.timedelta(seconds=120 + i), 5 + i / ROWS)
    wait_until(lambda: _logged(stubs, name) == 3 * ROWS)
    yield name
    delete_model_quietly(stubs, name)


def _assay(model: str, name: str, **summarizer: object) -> assay_pb2.Assay:
    return assay_pb2.Assay(
        name=name,
        model=model,
        path=assay_pb2.AssayPath(role="input", tensor="INPUT", index=0),
        baseline=assay_pb2.AssayBaseline(
            range=assay_pb2.AssayTimeRange(
                start_time=_stamp(T0), end_time=_stamp(T0 + dt.timedelta(seconds=60))
            )
        ),
        window=assay_pb2.AssayWindow(width_seconds=60),
        summarizer=assay_pb2.AssaySummarizer(num_bins=5, warning_threshold=0.1, **summarizer),  # type: ignore[arg-type]
    )


def _names(assays: assay_pb2_grpc.AssayServiceStub, stubs: Stubs, model: str) -> list[str]:
    answer = assays.ListAssays(assay_pb2.ListAssaysRequest(model=model), metadata=stubs.auth)
    return [a.name for a in answer.assays]


def test_an_assay_is_stored_listed_updated_and_deleted(
    assays: assay_pb2_grpc.AssayServiceStub, stubs: Stubs, model: str
) -> None:
    name = f"{model}-crud"
    created = assays.CreateAssay(
        assay_pb2.CreateAssayRequest(assay=_assay(model, name)), metadata=stubs.auth
    )
    try:
        assert created.active
        assert created.workspace
        assert created.summarizer.alert_threshold == 0.25
        assert created.window.interval_seconds == 60  # the width
        got = assays.GetAssay(assay_pb2.GetAssayRequest(name=name), metadata=stubs.auth)
        assert got == created
        assert name in _names(assays, stubs, model)
        changed = _assay(model, name)
        changed.summarizer.metric = assay_pb2.ASSAY_METRIC_MAX_DIFF
        changed.window.width_seconds = 0  # outside the mask: ignored
        updated = assays.UpdateAssay(
            assay_pb2.UpdateAssayRequest(
                assay=changed, update_mask=FieldMask(paths=["summarizer"])
            ),
            metadata=stubs.auth,
        )
        assert updated.summarizer.metric == assay_pb2.ASSAY_METRIC_MAX_DIFF
        assert updated.window.width_seconds == 60
        stopped = assays.SetAssayActive(
            assay_pb2.SetAssayActiveRequest(name=name, active=False), metadata=stubs.auth
        )
        assert not stopped.active
    finally:
        assays.DeleteAssay(assay_pb2.DeleteAssayRequest(name=name), metadata=stubs.auth)
    assert name not in _names(assays, stubs, model)
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        assays.GetAssay,
        assay_pb2.GetAssayRequest(name=name),
        metadata=stubs.auth,
    )


def test_the_tensor_may_be_named_by_position_in_wallaroos_form(
    assays: assay_pb2_grpc.AssayServiceStub, stubs: Stubs, model: str
) -> None:
    assay = _assay(model, f"{model}-wallaroo")
    assay.path.CopyFrom(assay_pb2.AssayPath(tensor="input 0 0"))
    summary = assays.PreviewBaseline(
        assay_pb2.PreviewBaselineRequest(assay=assay), metadata=stubs.auth
    )
    assert summary.count == ROWS


def test_preview_bins_the_baseline_minute(
    assays: assay_pb2_grpc.AssayServiceStub, stubs: Stubs, model: str
) -> None:
    summary = assays.PreviewBaseline(
        assay_pb2.PreviewBaselineRequest(assay=_assay(model, "preview")), metadata=stubs.auth
    )
    # 0, 0.02, …, 0.98 (stored as FP32): quintile edges at positions 49·k/5 of the sorted values.
    assert summary.count == ROWS
    assert summary.min == 0.0
    assert summary.max == pytest.approx(0.98)
    assert list(summary.edges) == pytest.approx([0.0, 0.196, 0.392, 0.588, 0.784, 0.98], abs=1e-6)
    assert list(summary.counts) == [0, 10, 10, 10, 10, 10, 0]
    assert summary.mean == pytest.approx(0.49, abs=1e-6)


def test_run_scores_each_window_ok_then_alert_then_no_data(
    assays: assay_pb2_grpc.AssayServiceStub, stubs: Stubs, model: str
) -> None:
    answer = assays.RunAssay(
        assay_pb2.RunAssayRequest(
            assay=_assay(model, ""),
            range=assay_pb2.AssayTimeRange(
                start_time=_stamp(T0 + dt.timedelta(seconds=60)),
                end_time=_stamp(T0 + dt.timedelta(seconds=240)),
            ),
        ),
        metadata=stubs.auth,
    )
    same, shifted, empty = answer.results
    assert same.window_start.ToDatetime(tzinfo=dt.timezone.utc) == T0 + dt.timedelta(seconds=60)
    assert (same.count, same.score, same.status) == (ROWS, 0.0, assay_pb2.ASSAY_STATUS_OK)
    # All 50 values in the right outlier bin (the left one is empty on both sides):
    # 5·(0.005 - 0.2)·ln(0.005/0.2) + (1 - 0.005)·ln(1/0.005).
    assert shifted.status == assay_pb2.ASSAY_STATUS_ALERT
    assert list(shifted.window_densities) == [0, 0, 0, 0, 0, 0, 1]
    assert shifted.score == pytest.approx(
        5 * 0.195 * 3.6888794541139363 + 0.995 * 5.298317366548036
    )
    assert (empty.count, empty.HasField("score"), empty.status) == (
        0,
        False,
        assay_pb2.ASSAY_STATUS_NO_DATA,
    )
    nothing = assays.ListAssays(assay_pb2.ListAssaysRequest(model=model), metadata=stubs.auth)
    assert all(a.name for a in nothing.assays)  # the inline run stored no assay


def _bad(model: str, field: str, value: object) -> assay_pb2.Assay:
    assay = _assay(model, f"{model}-bad")
    target: object = assay
    *parents, leaf = field.split(".")
    for parent in parents:
        target = getattr(target, parent)
    if isinstance(value, list):
        getattr(target, leaf).extend(value)
    elif isinstance(value, assay_pb2.AssayBaseline):
        getattr(target, leaf).CopyFrom(value)
    else:
        setattr(target, leaf, value)
    return assay


_EMPTY_RANGE = assay_pb2.AssayBaseline(
    range=assay_pb2.AssayTimeRange(
        start_time=_stamp(T0 - dt.timedelta(days=1)),
        end_time=_stamp(T0 - dt.timedelta(days=1) + dt.timedelta(seconds=60)),
    )
)


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("summarizer.metric", 99, "summarizer.metric"),
        ("summarizer.bin_mode", 99, "summarizer.bin_mode"),
        ("summarizer.aggregation", 99, "summarizer.aggregation"),
        ("summarizer.num_bins", 1, "summarizer.num_bins"),
        ("summarizer.num_bins", 101, "summarizer.num_bins"),
        ("summarizer.bin_weights", [1.0, 2.0], "summarizer.bin_weights"),
        ("summarizer.provided_edges", [1.0, 2.0], "summarizer.provided_edges"),
        ("window.width_seconds", 0, "window.width_seconds"),
        ("path.tensor", "NOPE", "path.tensor"),
        ("path.index", 4, "path.index"),
        ("path.role", "inside", "path.role"),
        ("baseline", _EMPTY_RANGE, "baseline.range"),
    ],
)
def test_a_bad_assay_is_invalid_and_stores_nothing(
    assays: assay_pb2_grpc.AssayServiceStub,
    stubs: Stubs,
    model: str,
    field: str,
    value: object,
    named: str,
) -> None:
    error = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        assays.CreateAssay,
        assay_pb2.CreateAssayRequest(assay=_bad(model, field, value)),
        metadata=stubs.auth,
    )
    assert named in (error.details() or "")
    assert f"{model}-bad" not in _names(assays, stubs, model)


def test_non_monotonic_provided_edges_are_invalid(
    assays: assay_pb2_grpc.AssayServiceStub, stubs: Stubs, model: str
) -> None:
    assay = _assay(model, f"{model}-edges", bin_mode=assay_pb2.ASSAY_BIN_MODE_PROVIDED)
    assay.summarizer.num_bins = 2
    assay.summarizer.provided_edges.extend([0.0, 0.6, 0.3])
    error = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        assays.CreateAssay,
        assay_pb2.CreateAssayRequest(assay=assay),
        metadata=stubs.auth,
    )
    assert "increase strictly" in (error.details() or "")


def test_a_bytes_tensor_is_invalid(assays: assay_pb2_grpc.AssayServiceStub, stubs: Stubs) -> None:
    name = f"t-assay-bytes-{PID}"
    upload(stubs, scale_model_files(name, datatype="TYPE_STRING", dims=(1,)), name)
    try:
        error = expect_error(
            grpc.StatusCode.INVALID_ARGUMENT,
            assays.CreateAssay,
            assay_pb2.CreateAssayRequest(assay=_assay(name, f"{name}-a")),
            metadata=stubs.auth,
        )
        assert "BYTES" in (error.details() or "")
        assert _names(assays, stubs, name) == []
    finally:
        delete_model_quietly(stubs, name)


def test_assays_of_a_model_the_caller_may_not_see_answer_like_missing_ones(
    assays: assay_pb2_grpc.AssayServiceStub, stubs: Stubs, model: str
) -> None:
    name = f"{model}-private"
    assays.CreateAssay(assay_pb2.CreateAssayRequest(assay=_assay(model, name)), metadata=stubs.auth)
    try:
        outsider = make_user(stubs, f"t-assay-outsider-{PID}", "editor")
        theirs = assay_pb2_grpc.AssayServiceStub(outsider.channel)
        hidden = expect_error(
            grpc.StatusCode.NOT_FOUND,
            theirs.GetAssay,
            assay_pb2.GetAssayRequest(name=name),
            metadata=outsider.auth,
        )
        missing = expect_error(
            grpc.StatusCode.NOT_FOUND,
            theirs.GetAssay,
            assay_pb2.GetAssayRequest(name=f"{name}-nope"),
            metadata=outsider.auth,
        )
        assert hidden.details() == (missing.details() or "").replace(f"{name}-nope", name)
        for call, request in (
            (theirs.CreateAssay, assay_pb2.CreateAssayRequest(assay=_assay(model, f"{name}-2"))),
            (theirs.PreviewBaseline, assay_pb2.PreviewBaselineRequest(assay=_assay(model, ""))),
            (theirs.DeleteAssay, assay_pb2.DeleteAssayRequest(name=name)),
            (theirs.ListAssays, assay_pb2.ListAssaysRequest(model=model)),
            (theirs.ListAssayResults, assay_pb2.ListAssayResultsRequest(name=name)),
        ):
            expect_error(grpc.StatusCode.NOT_FOUND, call, request, metadata=outsider.auth)
        listed = theirs.ListAssays(assay_pb2.ListAssaysRequest(), metadata=outsider.auth)
        assert all(a.name != name for a in listed.assays)
        assert name in _names(assays, stubs, model)  # nothing deleted
    finally:
        assays.DeleteAssay(assay_pb2.DeleteAssayRequest(name=name), metadata=stubs.auth)


def _run_by_name(
    assays: assay_pb2_grpc.AssayServiceStub, stubs: Stubs, name: str
) -> assay_pb2.RunAssayResponse:
    answer: assay_pb2.RunAssayResponse = assays.RunAssay(
        assay_pb2.RunAssayRequest(
            name=name,
            range=assay_pb2.AssayTimeRange(
                start_time=_stamp(T0), end_time=_stamp(T0 + dt.timedelta(seconds=180))
            ),
        ),
        metadata=stubs.auth,
    )
    return answer


def test_a_stored_assay_keeps_its_baseline_after_retention_deleted_its_hour(
    mlserve: MLServeProcess, assays: assay_pb2_grpc.AssayServiceStub, stubs: Stubs
) -> None:
    """Baseline minute in hour 9, windows in hour 10; hour 9's files deleted (as
    retention does): RunAssay by name scores with the baseline kept at creation, and
    an UpdateAssay that would re-bin it is FAILED_PRECONDITION, nothing changed."""
    model = f"t-assay-kept-{PID}"
    upload(stubs, scale_model_files(model, dims=(4,)), model)
    baseline_start = T0 - dt.timedelta(hours=1)
    name = f"{model}-a"
    try:
        for i in range(ROWS):
            _record(stubs, model, baseline_start + dt.timedelta(seconds=i), i / ROWS)
            _record(stubs, model, T0 + dt.timedelta(seconds=i), i / ROWS)
            _record(stubs, model, T0 + dt.timedelta(seconds=60 + i), 5 + i / ROWS)
        wait_until(lambda: _logged(stubs, model) == 3 * ROWS, timeout=120)
        assay = _assay(model, name)
        assay.baseline.range.start_time.CopyFrom(_stamp(baseline_start))
        assay.baseline.range.end_time.CopyFrom(_stamp(baseline_start + dt.timedelta(seconds=60)))
        assay.window.start_time.CopyFrom(_stamp(T0))
        created = assays.CreateAssay(assay_pb2.CreateAssayRequest(assay=assay), metadata=stubs.auth)
        before = _run_by_name(assays, stubs, name)
        hour = mlserve.home / "logs" / f"model={model}" / "date=2026-01-01" / "hour=09"
        assert list(hour.glob("*.parquet"))
        shutil.rmtree(hour)
        expect_error(
            grpc.StatusCode.INVALID_ARGUMENT,
            assays.PreviewBaseline,
            assay_pb2.PreviewBaselineRequest(assay=assay),
            metadata=stubs.auth,
        )  # binned on the fly: the data is gone

        after = _run_by_name(assays, stubs, name)
        assert after == before
        assert [r.status for r in after.results] == [
            assay_pb2.ASSAY_STATUS_OK,
            assay_pb2.ASSAY_STATUS_ALERT,
            assay_pb2.ASSAY_STATUS_NO_DATA,
        ]
        assert after.baseline.count == ROWS
        rebinned = _assay(model, name)
        rebinned.summarizer.num_bins = 7
        error = expect_error(
            grpc.StatusCode.FAILED_PRECONDITION,
            assays.UpdateAssay,
            assay_pb2.UpdateAssayRequest(
                assay=rebinned, update_mask=FieldMask(paths=["summarizer"])
            ),
            metadata=stubs.auth,
        )
        assert "holds 0 of the 50 values" in (error.details() or "")
        got = assays.GetAssay(assay_pb2.GetAssayRequest(name=name), metadata=stubs.auth)
        assert got == created
        assert _run_by_name(assays, stubs, name) == before  # nothing re-binned
        # A threshold is not in the bins: it changes, the kept baseline stays.
        calmer = _assay(model, name)
        calmer.summarizer.warning_threshold = 0.2
        updated = assays.UpdateAssay(
            assay_pb2.UpdateAssayRequest(assay=calmer, update_mask=FieldMask(paths=["summarizer"])),
            metadata=stubs.auth,
        )
        assert updated.summarizer.warning_threshold == pytest.approx(0.2)
        assert _run_by_name(assays, stubs, name).baseline == before.baseline
    finally:
        with contextlib.suppress(grpc.RpcError):
            assays.DeleteAssay(assay_pb2.DeleteAssayRequest(name=name), metadata=stubs.auth)
        delete_model_quietly(stubs, model)


def test_the_cli_and_client_create_run_and_chart_an_assay(
    mlserve: MLServeProcess, stubs: Stubs, model: str, tmp_path: Path
) -> None:
    name = f"{model}-cli"
    spec = tmp_path / "drift.yaml"
    end = (T0 + dt.timedelta(minutes=1)).isoformat()
    spec.write_text(
        f"name: {name}\n"
        f"model: {model}\n"
        "path: input INPUT 0\n"
        f"baseline: {{start: '{T0.isoformat()}', end: '{end}'}}\n"
        f"window: {{width: 1m, run_until: '{(T0 + dt.timedelta(minutes=4)).isoformat()}'}}\n"
        "summarizer: {metric: psi, num_bins: 5, warning_threshold: 0.1}\n"
    )
    created = mlserve_cli(mlserve, "assays", "create", str(spec))
    assert created.returncode == 0, created.stderr
    try:
        listed = mlserve_cli(mlserve, "assays", "list", "--model", model)
        assert name in listed.stdout
        shown = mlserve_cli(mlserve, "assays", "get", name)
        assert "metric psi" in shown.stdout
        ran = mlserve_cli(mlserve, "assays", "run", name, "--since", "1000d")
        assert ran.returncode == 0, ran.stderr
        assert [line.split()[-1] for line in ran.stdout.splitlines()[2:]] == [
            "ok",
            "alert",
            "no_data",
        ]
        with Client(address=mlserve.address, key=stubs.key) as client:
            # The scheduler inside MLServe catches up on the three past windows.
            wait_until(lambda: len(list(client.assay_results(name))) == 3)
            statuses = [r.status for r in client.assay_results(name)]
            assert statuses == [
                assay_pb2.ASSAY_STATUS_OK,
                assay_pb2.ASSAY_STATUS_ALERT,
                assay_pb2.ASSAY_STATUS_NO_DATA,
            ]
        results = mlserve_cli(mlserve, "assays", "results", name)
        assert "alert" in results.stdout
        chart = tmp_path / "drift.png"
        plotted = mlserve_cli(mlserve, "assays", "plot", name, "--out", str(chart))
        assert plotted.returncode == 0, plotted.stderr
        assert chart.read_bytes().startswith(b"\x89PNG")
        if ARTIFACTS.is_dir():
            shutil.copy(chart, ARTIFACTS / "drift-cli.png")
        bad = mlserve_cli(mlserve, "assays", "create", str(spec))
        assert bad.returncode != 0
        assert "exists already" in bad.stderr
    finally:
        assays = assay_pb2_grpc.AssayServiceStub(stubs.channel)
        assays.DeleteAssay(assay_pb2.DeleteAssayRequest(name=name), metadata=stubs.auth)


def test_grpcurl_runs_an_inline_assay_and_previews_its_baseline(
    mlserve: MLServeProcess, model: str
) -> None:
    assay = {
        "model": model,
        "path": {"tensor": "input INPUT 0"},
        "baseline": {"values": {"values": [i / ROWS for i in range(ROWS)]}},
        "window": {"widthSeconds": 60, "startTime": (T0 + dt.timedelta(minutes=1)).isoformat()},
        "summarizer": {"metric": "ASSAY_METRIC_SUM_DIFF"},
    }
    span = {
        "startTime": (T0 + dt.timedelta(minutes=1)).isoformat(),
        "endTime": (T0 + dt.timedelta(minutes=3)).isoformat(),
    }
    ran = grpcurl(
        mlserve, "-d", json.dumps({"assay": assay, "range": span}), mlserve.address,
        "mlserve.v1.AssayService/RunAssay",
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    same, shifted = json.loads(ran.stdout)["results"]
    assert same["status"] == "ASSAY_STATUS_OK"
    # Sum-diff of all values moved to the right outlier bin: ½·(5·0.2 + 1) = 1.
    assert shifted["status"] == "ASSAY_STATUS_ALERT"
    assert shifted["score"] == pytest.approx(1.0)
    preview = grpcurl(
        mlserve, "-d", json.dumps({"assay": assay}), mlserve.address,
        "mlserve.v1.AssayService/PreviewBaseline",
    )  # fmt: skip
    assert preview.returncode == 0, preview.stderr
    assert json.loads(preview.stdout)["count"] == str(ROWS)  # int64 is a JSON string
    bad = grpcurl(
        mlserve, "-d", json.dumps({"assay": {**assay, "window": {"widthSeconds": 0}}}),
        mlserve.address, "mlserve.v1.AssayService/CreateAssay",
    )  # fmt: skip
    assert "InvalidArgument" in bad.stderr
    assert "window.width_seconds" in bad.stderr
