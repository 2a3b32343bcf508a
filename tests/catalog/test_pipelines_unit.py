"""Pipelines in the domain: DAG validation against member configs, versions,
copies and the shared model namespace, on a fresh migrated store."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

import peewee as pw
import pytest
from google.protobuf import text_format

from mlserve.catalog.model_metadata import ModelFields
from mlserve.catalog.pipelines import (
    Pipelines,
    Spec,
    Step,
    check,
    ensemble_config,
    member_configs,
)
from mlserve.core.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from mlserve.core.paging import PageTokens
from mlserve.deploy.lifecycle import DeploymentUsage
from mlserve.storage import tables
from mlserve.triton.serving import ServingSettings
from tests.support.catalog import open_catalog
from tests.support.models import add_model_config, scale_model_config

T = TypeVar("T")


def run(awaitable: Awaitable[T]) -> T:
    async def wait() -> T:
        return await awaitable

    return asyncio.run(wait())


def add_version(name: str, config: Any) -> int:
    model = tables.Model.get_or_none(tables.Model.name == name) or tables.Model.create(name=name)
    number = tables.ModelVersion.select().where(tables.ModelVersion.model == model).count() + 1
    config.name = name
    tables.ModelVersion.create(
        model=model,
        version=number,
        sha256=f"{number:064d}",
        size_bytes=0,
        files="[]",
        config=text_format.MessageToString(config),
        upload_id=f"u-{name}-{number}",
    )
    return int(number)


@pytest.fixture
def pipelines(store_db: pw.Database) -> Pipelines:
    add_version("pre", scale_model_config("pre"))
    add_version("add", add_model_config("add"))
    add_version("post", scale_model_config("post"))
    return Pipelines(PageTokens(b"k" * 32), DeploymentUsage())


def three_steps(**changes: Any) -> Spec:
    """A -> pre -> P; (P, B) -> add -> S; S -> post -> OUT."""
    steps = {
        "pre": Step("pre", "pre", 0, {"INPUT": "A"}, {"OUTPUT": "P"}),
        "add": Step("add", "add", 0, {"INPUT0": "P", "INPUT1": "B"}, {"OUTPUT0": "S"}),
        "post": Step("post", "post", 0, {"INPUT": "S"}, {"OUTPUT": "OUT"}),
    }
    steps.update(changes)
    return Spec(["A", "B"], ["OUT"], list(steps.values()))


def nothing_created() -> bool:
    return tables.Pipeline.select().count() == 0 and tables.PipelineVersion.select().count() == 0


def test_a_three_step_pipeline_is_recorded_with_types_from_its_members(
    pipelines: Pipelines,
) -> None:
    record = run(pipelines.create("chain", "three steps", three_steps()))
    assert (record.name, record.version, record.version_count) == ("chain", 1, 1)
    assert [(t.name, t.datatype, t.dims) for t in record.inputs] == [
        ("A", "FP32", (-1,)),
        ("B", "FP32", (-1,)),
    ]
    assert [(t.name, t.datatype) for t in record.outputs] == [("OUT", "FP32")]
    assert [step.name for step in record.spec.steps] == ["pre", "add", "post"]


def test_the_ensemble_config_pins_each_member_version(pipelines: Pipelines) -> None:
    add_version("add", add_model_config("add"))  # add now has versions 1 and 2
    spec = three_steps()
    members = member_configs(spec)
    config = ensemble_config("chain", 3, spec, members, check(spec, members))
    assert config.platform == "ensemble"
    assert list(config.version_policy.specific.versions) == [3]
    assert [(s.model_name, s.model_version) for s in config.ensemble_scheduling.step] == [
        ("pre", 1),
        ("add", 2),
        ("post", 1),
    ]
    assert dict(config.ensemble_scheduling.step[1].input_map) == {"INPUT0": "P", "INPUT1": "B"}
    assert [i.name for i in config.input] == ["A", "B"]


@pytest.mark.parametrize("model", ["../secret", "a/b", "", ".hidden"])
def test_a_step_model_that_could_escape_the_repository_is_refused(
    pipelines: Pipelines, model: str
) -> None:
    bad = Step("pre", model, 0, {"INPUT": "A"}, {"OUTPUT": "P"})
    with pytest.raises(InvalidArgument, match=r"step 1 \('pre'\): model name"):
        run(pipelines.create("chain", "", three_steps(pre=bad)))
    assert nothing_created()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        pytest.param(
            {"pre": Step("pre", "pre", 0, {"INPUT": "OUT"}, {"OUTPUT": "P"})},
            r"steps form a cycle: .*pre.*",
            id="cycle",
        ),
        pytest.param(
            {"add": Step("add", "add", 0, {"INPUT0": "P", "INPUT1": "nowhere"}, {"OUTPUT0": "S"})},
            r"step 'add': input 'INPUT1' reads tensor 'nowhere'.*dangling",
            id="dangling",
        ),
        pytest.param(
            {"add": Step("add", "add", 0, {"INPUT0": "P"}, {"OUTPUT0": "S"})},
            r"step 'add': input 'INPUT1' of model 'add' is fed by nothing",
            id="unfed-input",
        ),
        pytest.param(
            {"add": Step("add", "add", 0, {"INPUT0": "P", "INPUT1": "B"}, {"OUTPUT0": "P"})},
            r"step 'add': tensor 'P' is already produced by step 'pre'",
            id="two-producers",
        ),
        pytest.param(
            {"post": Step("post", "post", 0, {"INPUT": "S"}, {"OUTPUT": "ELSEWHERE"})},
            r"pipeline output 'OUT' is produced by no step",
            id="output-not-produced",
        ),
        pytest.param(
            {"post": Step("post", "post", 0, {"INPUT": "S"}, {"NOPE": "OUT"})},
            r"step 'post': model 'post' has no output 'NOPE'",
            id="unknown-output",
        ),
        pytest.param(
            {"post": Step("post", "post", 0, {"INPUT": "S", "EXTRA": "A"}, {"OUTPUT": "OUT"})},
            r"step 'post': model 'post' has no input 'EXTRA'",
            id="unknown-input",
        ),
    ],
)
def test_a_broken_dag_is_refused_naming_step_and_tensor(
    pipelines: Pipelines, changes: dict[str, Step], message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        run(pipelines.create("chain", "", three_steps(**changes)))
    assert nothing_created()


def test_a_datatype_mismatch_is_refused(pipelines: Pipelines) -> None:
    add_version("ints", scale_model_config("ints", datatype="TYPE_INT32"))
    spec = three_steps(post=Step("post", "ints", 0, {"INPUT": "S"}, {"OUTPUT": "OUT"}))
    with pytest.raises(
        InvalidArgument, match=r"step 'post': input 'INPUT' is INT32 but tensor 'S'"
    ):
        run(pipelines.create("chain", "", spec))
    assert nothing_created()


def test_a_shape_mismatch_is_refused_and_batch_dimensions_count(pipelines: Pipelines) -> None:
    add_version("four", scale_model_config("four", dims=(4,)))
    add_version("three", scale_model_config("three", dims=(3,)))
    add_version("batched", scale_model_config("batched", dims=(-1,), max_batch_size=8))
    fixed = Spec(
        ["X"],
        ["Y"],
        [
            Step("a", "four", 0, {"INPUT": "X"}, {"OUTPUT": "M"}),
            Step("b", "three", 0, {"INPUT": "M"}, {"OUTPUT": "Y"}),
        ],
    )
    with pytest.raises(InvalidArgument, match=r"step 'b': input 'INPUT' has shape \[3\] but"):
        run(pipelines.create("shapes", "", fixed))
    # [-1] without batching is rank 1; a batching model's [-1] is rank 2 ([-1, -1]).
    ranks = Spec(
        ["X"],
        ["Y"],
        [
            Step("a", "four", 0, {"INPUT": "X"}, {"OUTPUT": "M"}),
            Step("b", "batched", 0, {"INPUT": "M"}, {"OUTPUT": "Y"}),
        ],
    )
    with pytest.raises(InvalidArgument, match=r"step 'b': input 'INPUT' has shape \[-1, -1\]"):
        run(pipelines.create("shapes", "", ranks))
    # A wildcard meets a fixed size.
    wildcard = Spec(
        ["X"],
        ["Y"],
        [
            Step("a", "four", 0, {"INPUT": "X"}, {"OUTPUT": "M"}),
            Step("b", "pre", 0, {"INPUT": "M"}, {"OUTPUT": "Y"}),
        ],
    )
    assert run(pipelines.create("shapes", "", wildcard)).version == 1


def test_unknown_models_and_versions_are_not_found_naming_the_step(pipelines: Pipelines) -> None:
    ghost = Step("pre", "ghost", 0, {"INPUT": "A"}, {"OUTPUT": "P"})
    with pytest.raises(NotFound, match=r"step 'pre': model 'ghost' does not exist"):
        run(pipelines.create("chain", "", three_steps(pre=ghost)))
    future = Step("pre", "pre", 7, {"INPUT": "A"}, {"OUTPUT": "P"})
    with pytest.raises(NotFound, match=r"step 'pre': model 'pre' has no version 7"):
        run(pipelines.create("chain", "", three_steps(pre=future)))
    assert nothing_created()


def test_pipelines_and_models_share_one_namespace(pipelines: Pipelines, tmp_path: Any) -> None:
    run(pipelines.create("chain", "", three_steps()))
    with pytest.raises(AlreadyExists, match="pipeline 'chain' already exists"):
        run(pipelines.create("chain", "", three_steps()))
    with pytest.raises(AlreadyExists, match="a model is named 'add'"):
        run(pipelines.create("add", "", three_steps()))
    catalog = open_catalog(tmp_path)
    with pytest.raises(AlreadyExists, match="a pipeline is named 'chain'"):
        run(catalog.models.create_model("chain", ModelFields()))
    assert tables.Pipeline.select().count() == 1
    assert not tables.Model.select().where(tables.Model.name == "chain").exists()


def test_changing_steps_makes_a_new_version_and_old_ones_stay_readable(
    pipelines: Pipelines,
) -> None:
    run(pipelines.create("chain", "first", three_steps()))
    same = run(pipelines.update("chain", "renamed", three_steps(), ["description", "steps"]))
    assert (same.version, same.description) == (1, "renamed")
    shorter = Spec(["A", "B"], ["S"], three_steps().steps[:2])
    second = run(pipelines.update("chain", "", shorter, ["outputs", "steps"]))
    assert (second.version, second.version_count) == (2, 2)
    old = run(pipelines.get("chain", 1))
    assert [s.name for s in old.spec.steps] == ["pre", "add", "post"]
    assert [s.name for s in run(pipelines.get("chain")).spec.steps] == ["pre", "add"]
    with pytest.raises(InvalidArgument, match=r"update_mask .*; cannot update name$"):
        run(pipelines.update("chain", "", shorter, ["name"]))
    with pytest.raises(InvalidArgument, match="update_mask must name some of"):
        run(pipelines.update("chain", "", shorter, []))
    with pytest.raises(NotFound, match="no version 3"):
        run(pipelines.get("chain", 3))


def test_a_copy_takes_new_serving_settings(pipelines: Pipelines) -> None:
    add_version("batched", scale_model_config("batched", max_batch_size=8))
    spec = Spec(["X"], ["Y"], [Step("b", "batched", 0, {"INPUT": "X"}, {"OUTPUT": "Y"})])
    run(pipelines.create("one", "", spec))
    settings = ServingSettings(
        max_batch_size=4, instance_count=2, dynamic_batching=True, preferred_batch_sizes=(2, 4)
    )
    copy = run(pipelines.copy("one", 0, "two", {"b": settings}))
    assert (copy.name, copy.version, copy.spec.steps[0].serving) == ("two", 1, settings)
    config = member_configs(copy.spec)["b"].config
    assert (config.max_batch_size, config.instance_group[0].count) == (4, 2)
    assert list(config.dynamic_batching.preferred_batch_size) == [2, 4]
    with pytest.raises(InvalidArgument, match="has no step 'nope'"):
        run(pipelines.copy("one", 0, "three", {"nope": settings}))
    too_big = ServingSettings(dynamic_batching=True, preferred_batch_sizes=(16,))
    with pytest.raises(InvalidArgument, match="preferred batch size 16 is above max_batch_size 8"):
        run(pipelines.copy("one", 0, "three", {"b": too_big}))
    unbatched = ServingSettings(max_batch_size=4)
    pre = Step("pre", "pre", 0, {"INPUT": "A"}, {"OUTPUT": "P"}, unbatched)
    with pytest.raises(InvalidArgument, match="max_batch_size 0"):
        run(pipelines.create("four", "", three_steps(pre=pre)))
    assert not tables.Pipeline.select().where(tables.Pipeline.name.in_(["three", "four"])).exists()


def test_list_pages_and_delete(pipelines: Pipelines) -> None:
    for name in ("c", "a", "b"):
        run(pipelines.create(name, "", three_steps()))
    first = run(pipelines.list_pipelines(2, ""))
    assert [r.name for r in first.items] == ["a", "b"]
    assert first.next_page_token
    last = run(pipelines.list_pipelines(2, first.next_page_token))
    assert [r.name for r in last.items] == ["c"]
    assert not last.next_page_token
    run(pipelines.delete("b"))
    assert [r.name for r in run(pipelines.list_pipelines(0, "")).items] == ["a", "c"]
    with pytest.raises(NotFound):
        run(pipelines.delete("b"))


def test_a_deployed_pipeline_cannot_be_deleted(pipelines: Pipelines) -> None:
    run(pipelines.create("chain", "", three_steps()))
    tables.Deployment.create(
        name="chain", pipeline=tables.Pipeline.get(tables.Pipeline.name == "chain"), version=1
    )
    with pytest.raises(FailedPrecondition, match="pipeline 'chain' is deployed"):
        run(pipelines.delete("chain"))
    assert tables.Pipeline.select().count() == 1
