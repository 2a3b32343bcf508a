"""Model metadata, ListModels filters, orders and keyset paging over gRPC,
against a real MLServe with its real embedded Triton; and through grpcurl."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from google.protobuf import duration_pb2, field_mask_pb2, json_format, struct_pb2

from mlserve_api.v1 import deployment_pb2, model_pb2
from mlserve_client import Client
from tests.support.checks import expect_error, wait_until
from tests.support.commands import grpcurl, mlserve_cli
from tests.support.mlserve import MLServeProcess, Stubs
from tests.support.models import upload_add

Code = grpc.StatusCode


def rich_model(name: str) -> model_pb2.Model:
    model = model_pb2.Model(
        name=name,
        description="predicts churn",
        tags=["tabular", "churn"],
        labels={"team": "growth"},
        kind=model_pb2.MODEL_KIND_CLASSIFICATION,
        performance=[
            model_pb2.PerformanceMetric(
                metric="accuracy",
                value=0.93,
                threshold=0.9,
                order=model_pb2.METRIC_ORDER_HIGHER_IS_BETTER,
            ),
            model_pb2.PerformanceMetric(
                metric="rmse", value=1.5, order=model_pb2.METRIC_ORDER_LOWER_IS_BETTER
            ),
        ],
        training_resources=[model_pb2.ResourceAmount(resource="nvidia.com/gpu", amount="1")],
        run_resources=[model_pb2.ResourceAmount(resource="memory", amount="2Gi")],
        features=[model_pb2.Feature(name="age", type="INT64", description="in years")],
        inference=model_pb2.InferenceHints(
            max_batch_size=8, accelerator="cpu", timeout=duration_pb2.Duration(seconds=2)
        ),
        drift_detection=model_pb2.DriftDetection(enabled=True, method="psi"),
    )
    json_format.ParseDict({"hyperparameters": {"lr": 0.01, "layers": [64, 32]}}, model)
    return model


def all_models(stubs: Stubs) -> list[bytes]:
    """Every model, serialized: to show that a refused call changed nothing."""
    models: list[bytes] = []
    token = ""
    while True:
        page = stubs.models.ListModels(
            model_pb2.ListModelsRequest(page_size=1000, page_token=token), metadata=stubs.auth
        )
        models += [m.SerializeToString(deterministic=True) for m in page.models]
        token = page.next_page_token
        if not token:
            return models


def refused(stubs: Stubs, code: grpc.StatusCode, call: Callable[..., Any], request: Any) -> str:
    """Make the call, which must fail with ``code`` and change no model; its details."""
    before = all_models(stubs)
    error = expect_error(code, call, request, metadata=stubs.auth)
    assert all_models(stubs) == before
    return str(error.details())


def settable(model: model_pb2.Model) -> model_pb2.Model:
    """``model`` without its output-only fields."""
    copy = model_pb2.Model()
    copy.CopyFrom(model)
    output_only = ("create_time", "update_time", "latest_version", "version_count", "deployment")
    for name in (
        *output_only,
        "workspace",
        "visibility",
        "allow_download",
        "allow_remote_inference",
    ):
        copy.ClearField(name)
    copy.ClearField("inference_count")
    copy.ClearField("last_inference_time")
    return copy


def test_metadata_round_trips_through_create_get_list_update(stubs: Stubs, model_name: str) -> None:
    sent = rich_model(model_name)
    created = stubs.models.CreateModel(
        model_pb2.CreateModelRequest(model=sent), metadata=stubs.auth
    )
    expected = model_pb2.Model()
    expected.CopyFrom(sent)
    expected.tags[:] = sorted(sent.tags)
    assert settable(created) == expected
    fetched = stubs.models.GetModel(model_pb2.GetModelRequest(name=model_name), metadata=stubs.auth)
    assert settable(fetched) == expected
    assert not fetched.HasField("deployment")
    assert fetched.performance[1].HasField("threshold") is False
    listed = stubs.models.ListModels(
        model_pb2.ListModelsRequest(name_prefix=model_name), metadata=stubs.auth
    )
    assert [settable(m) for m in listed.models] == [expected]

    change = model_pb2.Model(
        name=model_name,
        kind=model_pb2.MODEL_KIND_REGRESSION,
        drift_detection=model_pb2.DriftDetection(enabled=False),
        description="not in the mask",
    )
    json_format.ParseDict({"hyperparameters": {"lr": 0.1}}, change)
    updated = stubs.models.UpdateModel(
        model_pb2.UpdateModelRequest(
            model=change,
            update_mask=field_mask_pb2.FieldMask(
                paths=["kind", "drift_detection.enabled", "hyperparameters.lr"]
            ),
        ),
        metadata=stubs.auth,
    )
    expected.kind = model_pb2.MODEL_KIND_REGRESSION
    expected.drift_detection.enabled = False
    expected.hyperparameters["lr"].number_value = 0.1
    assert settable(updated) == expected
    assert updated.update_time.ToDatetime() >= created.update_time.ToDatetime()


def test_get_model_shows_versions_deployment_and_inferences(
    stubs: Stubs, mlserve: MLServeProcess, model_name: str
) -> None:
    upload_add(stubs, model_name)
    upload_add(stubs, model_name, offset=1.0)
    stubs.deployments.CreateDeployment(
        deployment_pb2.CreateDeploymentRequest(
            wait=True, deployment=deployment_pb2.Deployment(model=model_name, version=1)
        ),
        metadata=stubs.auth,
    )
    try:
        client = triton.InferenceServerClient(mlserve.address)
        inputs = [triton.InferInput(f"INPUT{i}", [2], "FP32") for i in (0, 1)]
        for tensor in inputs:
            tensor.set_data_from_numpy(np.ones(2, dtype=np.float32))
        client.infer(model_name, inputs, headers={"authorization": f"Bearer {mlserve.key}"})

        def get() -> model_pb2.Model:
            request = model_pb2.GetModelRequest(name=model_name)
            model: model_pb2.Model = stubs.models.GetModel(request, metadata=stubs.auth)
            return model

        model = poll(get, lambda m: m.inference_count >= 1)  # counts are flushed every few s
        assert (model.latest_version, model.version_count) == (2, 2)
        assert model.deployment == model_pb2.ModelDeployment(
            version=1, state=deployment_pb2.DEPLOYMENT_STATE_READY, servers=["local"]
        )
        assert model.HasField("last_inference_time")
    finally:
        stubs.deployments.DeleteDeployment(
            deployment_pb2.DeleteDeploymentRequest(name=model_name), metadata=stubs.auth
        )
    assert not get().HasField("deployment")


def poll(fetch: Callable[[], Any], done: Callable[[Any], bool], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


@pytest.fixture
def shelf(stubs: Stubs, model_name: str) -> Iterator[str]:
    """Five models under one prefix with kinds, tags and labels to filter on."""
    kinds = model_pb2.ModelKind
    models = [
        ("a", kinds.Value("MODEL_KIND_CLASSIFICATION"), ["vision", "small"], {"team": "x"}),
        ("b", kinds.Value("MODEL_KIND_REGRESSION"), ["tabular"], {"team": "y"}),
        ("c", kinds.Value("MODEL_KIND_CLASSIFICATION"), ["vision"], {"team": "x"}),
        ("d", kinds.Value("MODEL_KIND_CLUSTERING"), ["tabular", "small"], {}),
        ("e", kinds.Value("MODEL_KIND_UNSPECIFIED"), [], {}),
    ]
    for suffix, kind, tags, labels in models:
        model = model_pb2.Model(name=f"{model_name}-{suffix}", kind=kind, tags=tags, labels=labels)
        stubs.models.CreateModel(model_pb2.CreateModelRequest(model=model), metadata=stubs.auth)
    yield f"{model_name}-"
    for suffix, *_ in models:
        stubs.models.DeleteModel(
            model_pb2.DeleteModelRequest(name=f"{model_name}-{suffix}"), metadata=stubs.auth
        )


def names(stubs: Stubs, prefix: str, page_size: int = 2, **filters: Any) -> list[str]:
    found: list[str] = []
    token = ""
    while True:
        request = model_pb2.ListModelsRequest(
            name_prefix=prefix, page_size=page_size, page_token=token, **filters
        )
        page = stubs.models.ListModels(request, metadata=stubs.auth)
        found += [m.name.removeprefix(prefix) for m in page.models]
        token = page.next_page_token
        if not token:
            return found


def test_list_filters_and_orders(stubs: Stubs, shelf: str) -> None:
    assert names(stubs, shelf) == ["a", "b", "c", "d", "e"]
    assert names(stubs, shelf, kind=model_pb2.MODEL_KIND_CLASSIFICATION) == ["a", "c"]
    assert names(stubs, shelf, tags_all=["vision", "small"]) == ["a"]
    assert names(stubs, shelf, tags_any=["vision", "tabular"]) == ["a", "b", "c", "d"]
    assert names(stubs, shelf, tag="small") == ["a", "d"]  # the older single-tag filter
    assert names(stubs, shelf, labels=["team=x"]) == ["a", "c"]
    assert names(stubs, shelf, order_by="name desc") == ["e", "d", "c", "b", "a"]
    assert names(stubs, shelf, order_by="create_time desc") == ["e", "d", "c", "b", "a"]
    assert names(stubs, shelf, order_by="update_time") == ["a", "b", "c", "d", "e"]


def test_python_client_lists_with_filters(mlserve: MLServeProcess, shelf: str) -> None:
    with Client(mlserve.address, mlserve.key) as client:

        def listed(**filters: Any) -> list[str]:
            models = client.list_models(name_prefix=shelf, **filters)
            return [m.name.removeprefix(shelf) for m in models]

        assert listed(kind="classification", labels={"team": "x"}) == ["a", "c"]
        assert listed(tags_any=["small", "tabular"], order_by="name desc") == ["d", "b", "a"]
        assert listed(tags_all=["small", "tabular"]) == ["d"]


def test_cli_lists_with_filters(mlserve: MLServeProcess, shelf: str) -> None:
    result = mlserve_cli(
        mlserve, "models", "list", "--kind", "classification", "--label", "team=x",
        "--order-by", "name desc",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()[1:]]
    assert [(row[0], row[1]) for row in rows] == [
        (f"{shelf}c", "classification"),
        (f"{shelf}a", "classification"),
    ]
    shown = mlserve_cli(mlserve, "models", "get", f"{shelf}a")
    fields = dict(line.partition(":")[::2] for line in shown.stdout.splitlines())
    assert fields["kind"].strip() == "classification"
    assert fields["deployed"].strip() == "no"


@pytest.mark.parametrize(
    ("filters", "field"),
    [
        ({"kind": 99}, "kind"),
        ({"labels": ["team"]}, "labels[0]"),
        ({"labels": ["Team=x"]}, "labels[0]"),
        ({"tags_all": [""]}, "tags_all"),
        ({"tags_any": ["x" * 65]}, "tags_any"),
        ({"order_by": "size desc"}, "order_by"),
        ({"page_size": -1}, "page_size"),
    ],
)
def test_bad_list_filter_is_invalid_argument_naming_the_field(
    stubs: Stubs, shelf: str, filters: dict[str, Any], field: str
) -> None:
    error = expect_error(
        Code.INVALID_ARGUMENT,
        stubs.models.ListModels,
        model_pb2.ListModelsRequest(name_prefix=shelf, **filters),
        metadata=stubs.auth,
    )
    assert field in error.details()


def test_page_token_from_another_query_or_tampered(stubs: Stubs, shelf: str) -> None:
    def page(token: str = "", **filters: Any) -> Any:
        request = model_pb2.ListModelsRequest(
            name_prefix=shelf, page_size=2, page_token=token, **filters
        )
        return stubs.models.ListModels(request, metadata=stubs.auth)

    token = page(order_by="create_time desc", tags_any=["vision", "tabular"]).next_page_token
    for other in (
        {"order_by": "create_time"},
        {"order_by": "create_time desc"},
        {"order_by": "create_time desc", "tags_any": ["vision"]},
        {"order_by": "create_time desc", "tags_any": ["vision", "tabular"], "kind": 1},
        {"order_by": "create_time desc", "tags_any": ["vision", "tabular"], "labels": ["a=b"]},
    ):
        error = expect_error(Code.INVALID_ARGUMENT, page, token, **other)
        assert "page_token" in error.details()
    tampered = token[:5] + ("A" if token[5] != "A" else "B") + token[6:]
    expect_error(Code.INVALID_ARGUMENT, page, tampered, order_by="create_time desc")
    following = page(token, order_by="create_time desc", tags_any=["tabular", "vision"])
    assert [m.name.removeprefix(shelf) for m in following.models] == ["b", "a"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"kind": 99}, "model.kind"),
        ({"hyperparameters": {"lr": "NaN"}}, None),  # JSON "NaN" is a string: allowed
        ({"performance": [{"metric": "a", "value": 1, "order": 7}]}, "performance[0].order"),
        ({"run_resources": [{"resource": "cpu", "amount": "many"}]}, "run_resources[0].amount"),
        ({"features": [{"name": "x"}, {"name": "x"}]}, "model.features[1]"),
        ({"drift_detection": {"enabled": True}}, "model.drift_detection.method"),
        ({"labels": {"Bad": "x"}}, "model.labels"),
    ],
)
def test_bad_metadata_is_invalid_argument_and_writes_nothing(
    stubs: Stubs, model_name: str, change: dict[str, Any], field: str | None
) -> None:
    stubs.models.CreateModel(
        model_pb2.CreateModelRequest(model=rich_model(model_name)), metadata=stubs.auth
    )
    model = model_pb2.Model(name=f"{model_name}-new")
    json_format.ParseDict(change, model)
    if field is None:  # a control: the same path accepts good input
        stubs.models.CreateModel(model_pb2.CreateModelRequest(model=model), metadata=stubs.auth)
        return
    create = model_pb2.CreateModelRequest(model=model)
    assert field in refused(stubs, Code.INVALID_ARGUMENT, stubs.models.CreateModel, create)
    model.name = model_name
    mask = field_mask_pb2.FieldMask(paths=list(change))
    update = model_pb2.UpdateModelRequest(model=model, update_mask=mask)
    assert field in refused(stubs, Code.INVALID_ARGUMENT, stubs.models.UpdateModel, update)


def test_non_finite_hyperparameter_is_invalid_argument(stubs: Stubs, model_name: str) -> None:
    model = model_pb2.Model(name=model_name)
    model.hyperparameters["lr"].number_value = float("inf")
    create = model_pb2.CreateModelRequest(model=model)
    details = refused(stubs, Code.INVALID_ARGUMENT, stubs.models.CreateModel, create)
    assert "model.hyperparameters['lr']" in details


@pytest.mark.parametrize(
    ("paths", "message"),
    [
        (["name"], "'name' cannot be changed"),
        (["create_time"], "'create_time' cannot be changed"),
        (["deployment"], "'deployment' cannot be changed"),
        (["colour"], "no field 'colour'"),
        (["inference.colour"], "inference has no field 'colour'"),
        ([], "update_mask is empty"),
    ],
    ids=["name", "create_time", "deployment", "unknown", "unknown-sub-field", "empty"],
)
def test_bad_update_mask_is_invalid_argument_and_changes_nothing(
    stubs: Stubs, model_name: str, paths: list[str], message: str
) -> None:
    stubs.models.CreateModel(
        model_pb2.CreateModelRequest(model=rich_model(model_name)), metadata=stubs.auth
    )
    update = model_pb2.UpdateModelRequest(
        model=model_pb2.Model(name=model_name, description="x"),
        update_mask=field_mask_pb2.FieldMask(paths=paths),
    )
    assert message in refused(stubs, Code.INVALID_ARGUMENT, stubs.models.UpdateModel, update)


def test_duplicate_name_is_already_exists_and_changes_nothing(
    stubs: Stubs, model_name: str
) -> None:
    stubs.models.CreateModel(
        model_pb2.CreateModelRequest(model=rich_model(model_name)), metadata=stubs.auth
    )
    again = model_pb2.Model(name=model_name, description="other", tags=["other"])
    create = model_pb2.CreateModelRequest(model=again)
    assert model_name in refused(stubs, Code.ALREADY_EXISTS, stubs.models.CreateModel, create)


def test_keyset_paging_while_another_client_inserts(
    stubs: Stubs, mlserve: MLServeProcess, model_name: str
) -> None:
    """500 models listed in pages of 25, newest first, while a second client
    creates more under the same prefix: each of the 500 appears exactly once."""
    prefix = f"{model_name}-"
    present = {f"{prefix}{i:04d}" for i in range(500)}
    for name in sorted(present):
        stubs.models.CreateModel(
            model_pb2.CreateModelRequest(model=model_pb2.Model(name=name, tags=["bulk"])),
            metadata=stubs.auth,
        )
    stop = threading.Event()
    inserted: list[str] = []

    def insert_meanwhile() -> None:
        other = mlserve.stubs()  # a second client, on its own channel
        try:
            while not stop.is_set():
                name = f"{prefix}{len(inserted):04d}-late"
                model = model_pb2.Model(name=name, tags=["bulk"])
                other.models.CreateModel(
                    model_pb2.CreateModelRequest(model=model), metadata=other.auth
                )
                inserted.append(name)
        finally:
            other.channel.close()

    writer = threading.Thread(target=insert_meanwhile)
    writer.start()
    try:
        # The 20 pages take a fraction of a second; a writer still opening its channel
        # on a loaded machine would insert nothing meanwhile. List once it writes.
        wait_until(lambda: bool(inserted) or not writer.is_alive())
        seen = names(stubs, "", page_size=25, tags_all=["bulk"], order_by="create_time desc")
    finally:
        stop.set()
        writer.join()
    seen = [name for name in seen if name.startswith(prefix)]
    assert len(seen) == len(set(seen)), "a model was listed twice"
    assert present <= set(seen), f"{len(present - set(seen))} models were skipped"
    assert inserted


def test_grpcurl_creates_with_metadata_and_lists_by_kind_and_tag(
    mlserve: MLServeProcess, model_name: str
) -> None:
    model = {
        "name": model_name,
        "kind": "MODEL_KIND_REGRESSION",
        "tags": ["grpcurl", "tabular"],
        "labels": {"team": "shell"},
        "hyperparameters": {"alpha": 0.5, "solver": "lbfgs", "layers": [8, 4]},
        "performance": [{"metric": "rmse", "value": 1.25, "order": "METRIC_ORDER_LOWER_IS_BETTER"}],
        "runResources": [{"resource": "cpu", "amount": "500m"}],
        "features": [{"name": "x1", "type": "FP32"}],
        "inference": {"maxBatchSize": 4, "timeout": "1.500s"},
        "driftDetection": {"enabled": True, "method": "ks"},
    }
    created = grpcurl(
        mlserve, "-d", json.dumps({"model": model}), mlserve.address,
        "mlserve.v1.ModelService/CreateModel",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    body = json.loads(created.stdout)
    for key, value in model.items():
        assert body[key] == (sorted(value) if key == "tags" else value), key
    query = {
        "kind": "MODEL_KIND_REGRESSION",
        "tagsAll": ["grpcurl"],
        "labels": ["team=shell"],
        "orderBy": "create_time desc",
    }
    listed = grpcurl(
        mlserve, "-d", json.dumps(query), mlserve.address, "mlserve.v1.ModelService/ListModels"
    )
    assert listed.returncode == 0, listed.stderr
    assert [m["name"] for m in json.loads(listed.stdout)["models"]] == [model_name]
    bad = grpcurl(
        mlserve, "-d", json.dumps({"labels": ["no-equals-sign"]}), mlserve.address,
        "mlserve.v1.ModelService/ListModels",
    )  # fmt: skip
    assert "Code: InvalidArgument" in bad.stderr
    assert "labels[0]" in bad.stderr


def test_value_hyperparameters_keep_their_type(stubs: Stubs, model_name: str) -> None:
    model = model_pb2.Model(name=model_name)
    model.hyperparameters["flag"].bool_value = True
    model.hyperparameters["nested"].struct_value.update({"a": "b"})
    model.hyperparameters["nothing"].null_value = struct_pb2.NULL_VALUE
    created = stubs.models.CreateModel(
        model_pb2.CreateModelRequest(model=model), metadata=stubs.auth
    )
    assert dict(created.hyperparameters) == dict(model.hyperparameters)
