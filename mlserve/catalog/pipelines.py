"""Pipelines: DAGs of model steps, checked against the member models' configs
and served as one Triton ensemble named after the pipeline.

A pipeline shares the model namespace (the ensemble is a Triton model).
Changing its inputs, outputs or steps records a new, immutable version.
"""

from __future__ import annotations

import datetime as dt
import graphlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import peewee as pw
from tritonclient.grpc import model_config_pb2

from mlserve.access import forget_decisions, rules
from mlserve.access.workspaces import workspace_id_query
from mlserve.catalog.models import Usage
from mlserve.catalog.namespace import refuse_model_name
from mlserve.catalog.versions import find_version
from mlserve.core.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from mlserve.core.names import check_name, check_update_mask
from mlserve.core.paging import Listing, Page, PageTokens
from mlserve.storage import db, tables
from mlserve.storage.db import in_thread
from mlserve.triton import modelconfig, serving
from mlserve.triton.modelconfig import ModelConfig
from mlserve.triton.serving import ServingSettings

MAX_STEPS = 64
MAX_TENSOR_NAME = 256
UPDATABLE_PIPELINE_FIELDS = frozenset({"description", "inputs", "outputs", "steps"})
_SPEC_FIELDS = frozenset({"inputs", "outputs", "steps"})


@dataclass(frozen=True)
class Step:
    name: str
    model: str
    model_version: int = 0  # 0: the deployed version when deploying, else the latest
    input_map: Mapping[str, str] = field(default_factory=dict)
    output_map: Mapping[str, str] = field(default_factory=dict)
    serving: ServingSettings = serving.NO_SETTINGS


@dataclass(frozen=True)
class Spec:
    """What a pipeline version is: its input and output names and its steps."""

    inputs: Sequence[str]
    outputs: Sequence[str]
    steps: Sequence[Step]

    def to_json(self) -> str:
        """The spec as stored in a pipeline version row (compact JSON)."""
        return json.dumps(
            {
                "inputs": list(self.inputs),
                "outputs": list(self.outputs),
                "steps": [asdict(step) for step in self.steps],
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> Spec:
        """The spec a pipeline version row stores (the inverse of ``to_json``)."""
        data = json.loads(text)
        steps = [
            Step(**{**step, "serving": ServingSettings.from_dict(step["serving"])})
            for step in data["steps"]
        ]
        return cls(data["inputs"], data["outputs"], steps)


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str  # Triton's name without TYPE_, e.g. "FP32"
    dims: tuple[int, ...]  # without the batch dimension


@dataclass(frozen=True)
class Checked:
    """A spec that passed validation, with what the member configs tell about it."""

    inputs: list[Tensor]
    outputs: list[Tensor]
    max_batch_size: int
    versions: dict[str, int]  # step name -> the member version checked against


@dataclass(frozen=True)
class PipelineRecord:
    name: str
    description: str
    version: int
    version_count: int
    spec: Spec
    inputs: list[Tensor]
    outputs: list[Tensor]
    deployed_version: int
    create_time: dt.datetime
    update_time: dt.datetime
    workspace: str = ""


@dataclass(frozen=True)
class Member:
    """A member model version with the config Triton gets for it."""

    model: str
    version: int
    config: ModelConfig


class Pipelines:
    def __init__(self, tokens: PageTokens, usage: Usage) -> None:
        self.tokens = tokens
        self.usage = usage

    def _pipeline_record(self, row: Any, version: int) -> PipelineRecord:
        return _pipeline_record(row, version, self.usage.deployed_version(row.name))

    @in_thread
    def create(
        self, name: str, description: str, spec: Spec, workspace: str = ""
    ) -> PipelineRecord:
        """A new pipeline in ``workspace`` (empty: the caller's default).

        Its members must be models the caller may see.
        """
        check_name(name, "pipeline name")
        home = rules.workspace_for_new_model(workspace)
        spec = normalise(spec)
        check(spec, member_configs(spec))
        try:
            with db.database.atomic():
                _refuse_taken_name(name)
                row = tables.Pipeline.create(name=name, description=description, workspace=home)
                tables.PipelineVersion.create(pipeline=row, version=1, spec=spec.to_json())
        except pw.IntegrityError:
            raise AlreadyExists(f"pipeline {name!r} already exists") from None
        forget_decisions()
        return self._pipeline_record(row, 0)

    @in_thread
    def get(self, name: str, version: int = 0) -> PipelineRecord:
        """Pipeline ``name`` with its ``version`` (0: the latest); NotFound alike when absent
        or hidden.
        """
        return self._pipeline_record(_pipeline_row(name), version)

    @in_thread
    def list_pipelines(self, requested_size: int, token: str) -> Page[PipelineRecord]:
        """The pipelines the caller may see, by name, each with its latest version."""
        query = tables.Pipeline.select()
        visible = rules.visible_models(tables.Pipeline)
        if visible is not None:
            query = query.where(visible)
        listing = Listing(
            query,
            tables.Pipeline.name,
            lambda row: self._pipeline_record(row, 0),
            lambda row: row.name,
            {"list": "pipelines"},
        )
        return self.tokens.page(listing, requested_size, token)

    @in_thread
    def update(
        self, name: str, description: str, spec: Spec, mask: Sequence[str]
    ) -> PipelineRecord:
        """Change the description and/or the spec fields ``mask`` names. A changed spec is
        checked against its members' configs again and becomes a new version; the deployed
        version is not touched.

        Raises:
            InvalidArgument: an empty or unknown mask entry, or a spec that no longer checks.
            PermissionDenied: the caller may see the pipeline but not change it.
        """
        check_update_mask(mask, UPDATABLE_PIPELINE_FIELDS)
        row = rules.check_model_write(_pipeline_row(name))
        current = _latest_version_row(row)
        old = Spec.from_json(current.spec)
        new = normalise(
            Spec(
                spec.inputs if "inputs" in mask else old.inputs,
                spec.outputs if "outputs" in mask else old.outputs,
                spec.steps if "steps" in mask else old.steps,
            )
        )
        spec_changed = new != old
        if spec_changed:
            check(new, member_configs(new))
        with db.database.atomic():
            if "description" in mask:
                row.description = description
                row.save()
            if spec_changed:
                tables.PipelineVersion.create(
                    pipeline=row, version=current.version + 1, spec=new.to_json()
                )
        return self._pipeline_record(row, 0)

    @in_thread
    def delete(self, name: str) -> None:
        """Delete the pipeline and its versions; FailedPrecondition while it is deployed."""
        with db.database.atomic():
            row = rules.check_model_write(_pipeline_row(name))
            deployed = self.usage.deployed_version(row.name)
            if deployed:
                raise FailedPrecondition(
                    f"pipeline {name!r} is deployed (version {deployed}); "
                    "undeploy it first (DeleteDeployment)"
                )
            # delete_nullable: rows that may name a pipeline or something else (its
            # assays) go with it rather than being left pointing at nothing.
            row.delete_instance(recursive=True, delete_nullable=True)
        forget_decisions()

    async def copy(
        self,
        name: str,
        version: int,
        new_name: str,
        settings: Mapping[str, ServingSettings],
    ) -> PipelineRecord:
        """A new pipeline ``new_name`` with ``name``'s spec at ``version`` and the serving
        ``settings`` given per step name (the others kept). InvalidArgument for a step the
        pipeline lacks.
        """
        source = await self.get(name, version)
        steps = {step.name: step for step in source.spec.steps}
        unknown = sorted(set(settings) - steps.keys())
        if unknown:
            raise InvalidArgument(
                f"pipeline {name!r} has no step {unknown[0]!r}; its steps are: {', '.join(steps)}"
            )
        spec = replace(
            source.spec,
            steps=[replace(s, serving=settings.get(s.name, s.serving)) for s in steps.values()],
        )
        return await self.create(new_name, source.description, spec)


# --- validation ----------------------------------------------------------------


def normalise(spec: Spec) -> Spec:
    """Check the spec's shape and names (no store access); default step names.

    Step model names are checked here, before any config is read or written:
    Triton checks only top-level model names, not the models ensemble steps
    name.
    """
    if not spec.steps:
        raise InvalidArgument("a pipeline needs at least one step")
    if len(spec.steps) > MAX_STEPS:
        raise InvalidArgument(f"a pipeline may have at most {MAX_STEPS} steps")
    steps: list[Step] = []
    seen: set[str] = set()
    for position, step in enumerate(spec.steps, 1):
        label = f"step {position}" + (f" ({step.name!r})" if step.name else "")
        check_name(step.model, f"{label}: model name")
        name = step.name or step.model
        check_name(name, f"{label}: step name")
        if name in seen:
            raise InvalidArgument(
                f"step {position}: the name {name!r} is used twice; give each step a distinct name"
            )
        seen.add(name)
        if step.model_version < 0:
            raise InvalidArgument(f"step {name!r}: model_version must not be negative")
        for kind, mapping in (("input_map", step.input_map), ("output_map", step.output_map)):
            for key, value in mapping.items():
                _check_tensor_name(key, f"step {name!r}: {kind} key")
                _check_tensor_name(value, f"step {name!r}: {kind}[{key!r}]")
        if not step.output_map:
            raise InvalidArgument(f"step {name!r}: output_map is empty; map at least one output")
        serving.check(step.serving, f"step {name!r}")
        steps.append(replace(step, name=name, input_map=dict(step.input_map)))
    for kind, names in (("input", spec.inputs), ("output", spec.outputs)):
        if not names:
            raise InvalidArgument(f"a pipeline needs at least one {kind}")
        for tensor in names:
            _check_tensor_name(tensor, f"pipeline {kind}")
        if len(set(names)) != len(names):
            raise InvalidArgument(f"a pipeline {kind} is named twice")
    return Spec(list(spec.inputs), list(spec.outputs), steps)


def member_configs(spec: Spec, deployed: Mapping[str, int] | None = None) -> dict[str, Member]:
    """Per step, its member version and config with the step's settings (blocking).

    ``deployed`` gives, per model, the version to use for steps that name
    none; absent models fall back to their latest version.
    """
    members: dict[str, Member] = {}
    for step in spec.steps:
        wanted = step.model_version or (deployed or {}).get(step.model, 0)
        try:
            record = find_version(step.model, wanted)
        except NotFound as error:
            raise NotFound(f"step {step.name!r}: {error.message}") from None
        config = modelconfig.for_version(
            modelconfig.parse(record.config, step.model), record.version
        )
        config = serving.apply(config, step.serving, f"step {step.name!r}")
        members[step.name] = Member(step.model, record.version, config)
    return members


def check(spec: Spec, members: Mapping[str, Member]) -> Checked:
    """Check the DAG against the member configs; INVALID_ARGUMENT names step and tensor."""
    by_model: dict[str, tuple[str, Member]] = {}
    for step in spec.steps:
        member = members[step.name]
        other = by_model.setdefault(step.model, (step.name, member))
        if other[1] != member:
            raise InvalidArgument(
                f"steps {other[0]!r} and {step.name!r} run model {step.model!r} with a different "
                "version or serving settings; Triton loads one config per model"
            )
    # tensor -> (producing step or "" for a pipeline input, its full shape, datatype)
    produced: dict[str, tuple[str, list[int], int]] = {}
    for step in spec.steps:
        config = members[step.name].config
        outputs = {tensor.name: tensor for tensor in config.output}
        for model_output, tensor in step.output_map.items():
            if model_output not in outputs:
                raise InvalidArgument(
                    f"step {step.name!r}: model {step.model!r} has no output {model_output!r} "
                    f"(its outputs: {', '.join(outputs)})"
                )
            if tensor in produced or tensor in spec.inputs:
                first = produced[tensor][0] if tensor in produced else ""
                source = f"step {first!r}" if first else "a pipeline input"
                raise InvalidArgument(
                    f"step {step.name!r}: tensor {tensor!r} is already produced by {source}; "
                    "every tensor needs exactly one producer"
                )
            spec_tensor = outputs[model_output]
            produced[tensor] = (step.name, _full_shape(config, spec_tensor), spec_tensor.data_type)
    inputs: dict[str, tuple[list[int], int]] = {}
    graph: dict[str, set[str]] = {step.name: set() for step in spec.steps}
    for step in spec.steps:
        config = members[step.name].config
        model_inputs = {tensor.name: tensor for tensor in config.input}
        for model_input in model_inputs:
            if model_input not in step.input_map:
                raise InvalidArgument(
                    f"step {step.name!r}: input {model_input!r} of model {step.model!r} is fed "
                    "by nothing; map it in input_map to a pipeline input or a step output"
                )
        for model_input, tensor in step.input_map.items():
            if model_input not in model_inputs:
                raise InvalidArgument(
                    f"step {step.name!r}: model {step.model!r} has no input {model_input!r} "
                    f"(its inputs: {', '.join(model_inputs)})"
                )
            wanted = model_inputs[model_input]
            shape, datatype = _full_shape(config, wanted), wanted.data_type
            if tensor in produced:
                producer, have_shape, have_type = produced[tensor]
                graph[step.name].add(producer)
                source = f"step {producer!r}"
            elif tensor in spec.inputs:
                have_shape, have_type = inputs.setdefault(tensor, (shape, datatype))
                source = "pipeline input"
            else:
                raise InvalidArgument(
                    f"step {step.name!r}: input {model_input!r} reads tensor {tensor!r}, which "
                    "is neither a pipeline input nor produced by any step (dangling input)"
                )
            if have_type != datatype:
                raise InvalidArgument(
                    f"step {step.name!r}: input {model_input!r} is {_type_name(datatype)} but "
                    f"tensor {tensor!r} from {source} is {_type_name(have_type)}"
                )
            merged = _merge_shapes(have_shape, shape)
            if merged is None:
                raise InvalidArgument(
                    f"step {step.name!r}: input {model_input!r} has shape {shape} but tensor "
                    f"{tensor!r} from {source} has shape {have_shape} "
                    "(-1 is any size; a batching model adds a leading batch dimension)"
                )
            if tensor in inputs:
                inputs[tensor] = (merged, datatype)
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as error:
        cycle = " -> ".join(error.args[1])
        raise InvalidArgument(f"the steps form a cycle: {cycle}") from None
    for tensor in spec.inputs:
        if tensor not in inputs:
            raise InvalidArgument(f"pipeline input {tensor!r} is read by no step")
    for tensor in spec.outputs:
        if tensor not in produced:
            raise InvalidArgument(
                f"pipeline output {tensor!r} is produced by no step: name it in a step's output_map"
            )
    batch_sizes = [member.config.max_batch_size for member in members.values()]
    max_batch = min(batch_sizes) if all(batch_sizes) else 0

    def tensor_of(name: str, shape: list[int], datatype: int) -> Tensor:
        dims = tuple(shape[1:] if max_batch else shape)
        return Tensor(name, _type_name(datatype), dims)

    return Checked(
        inputs=[tensor_of(name, *inputs[name]) for name in spec.inputs],
        outputs=[tensor_of(name, *produced[name][1:]) for name in spec.outputs],
        max_batch_size=max_batch,
        versions={name: member.version for name, member in members.items()},
    )


def ensemble_config(
    name: str, version: int, spec: Spec, members: Mapping[str, Member], checked: Checked
) -> ModelConfig:
    """The Triton ensemble config of ``spec`` with each member's version pinned."""
    config = model_config_pb2.ModelConfig(
        name=name, platform="ensemble", max_batch_size=checked.max_batch_size
    )
    config.version_policy.specific.versions.append(version)
    for tensors, target in ((checked.inputs, config.input), (checked.outputs, config.output)):
        for tensor in tensors:
            target.add(
                name=tensor.name,
                data_type=model_config_pb2.DataType.Value("TYPE_" + tensor.datatype),
                dims=list(tensor.dims),
            )
    for step in spec.steps:
        entry = config.ensemble_scheduling.step.add(
            model_name=step.model, model_version=members[step.name].version
        )
        entry.input_map.update(step.input_map)
        entry.output_map.update(step.output_map)
    modelconfig.check_ensemble_steps(config)
    return config


def _check_tensor_name(value: str, what: str) -> None:
    if not value or len(value) > MAX_TENSOR_NAME or "\x00" in value:
        raise InvalidArgument(f"{what}: a tensor name must be 1 to {MAX_TENSOR_NAME} characters")


def _full_shape(config: ModelConfig, tensor: Any) -> list[int]:
    dims = [int(d) for d in tensor.dims]
    return [-1, *dims] if config.max_batch_size > 0 else dims


def _merge_shapes(a: Sequence[int], b: Sequence[int]) -> list[int] | None:
    """The more specific of two compatible shapes (-1 matches any size), else None."""
    if len(a) != len(b):
        return None
    merged = []
    for x, y in zip(a, b, strict=True):
        if x != y and -1 not in (x, y):
            return None
        merged.append(y if x == -1 else x)
    return merged


def _type_name(datatype: int) -> str:
    return str(model_config_pb2.DataType.Name(datatype)).removeprefix("TYPE_")


# --- store -----------------------------------------------------------------------


def _refuse_taken_name(name: str) -> None:
    refuse_model_name(name)
    if tables.Pipeline.select().where(tables.Pipeline.name == name).exists():
        raise AlreadyExists(f"pipeline {name!r} already exists")


def _pipeline_row(name: str) -> Any:
    """The pipeline's row if the caller may see it; NotFound alike when absent or hidden."""
    check_name(name, "pipeline name")
    row = tables.Pipeline.get_or_none(tables.Pipeline.name == name)
    if row is None:
        raise rules.not_found(name, "pipeline")
    return rules.check_model_read(row)


def writable_pipeline(name: str) -> Any:
    """The row of pipeline ``name`` if the caller may change (or deploy) it (blocking)."""
    return rules.check_model_write(_pipeline_row(name))


def readable_pipeline(name: str) -> Any:
    """The row of pipeline ``name`` if the caller may see it; NotFound alike when absent
    or hidden (blocking)."""
    return _pipeline_row(name)


def visible_pipeline_ids(workspace: str = "") -> Any:
    """A query of the ids of the pipelines the caller may see, of ``workspace`` when
    given, to filter other tables by (blocking)."""
    query = tables.Pipeline.select(tables.Pipeline._meta.primary_key)
    if workspace:
        query = query.where(tables.Pipeline.workspace.in_(workspace_id_query(workspace)))
    visible = rules.visible_models(tables.Pipeline)
    return query if visible is None else query.where(visible)


def pipeline_tensors(name: str, version: int) -> tuple[list[Tensor], list[Tensor]]:
    """The inputs and outputs of pipeline ``name`` at ``version`` (0: the latest),
    typed by its members' configs (blocking).

    Raises:
        NotFound: no such pipeline (or hidden), or no such version.
        InvalidArgument: a member version it names is gone.
    """
    spec = Spec.from_json(version_row(name, version).spec)
    checked = check(spec, member_configs(spec))
    return checked.inputs, checked.outputs


def _latest_version_row(row: Any) -> Any:
    return (
        tables.PipelineVersion.select()
        .where(tables.PipelineVersion.pipeline == row)
        .order_by(tables.PipelineVersion.version.desc())
        .first()
    )


def version_row(name: str, version: int) -> Any:
    """The store row of pipeline ``name`` at ``version`` (0: the latest), or NotFound."""
    row = _pipeline_row(name)
    if version < 0:
        raise InvalidArgument(f"version must not be negative, got {version}")
    if version == 0:
        return _latest_version_row(row)
    found = tables.PipelineVersion.get_or_none(
        (tables.PipelineVersion.pipeline == row) & (tables.PipelineVersion.version == version)
    )
    if found is None:
        raise NotFound(f"pipeline {name!r} has no version {version}")
    return found


def _pipeline_record(row: Any, version: int, deployed_version: int) -> PipelineRecord:
    chosen = version_row(row.name, version)
    spec = Spec.from_json(chosen.spec)
    count = tables.PipelineVersion.select().where(tables.PipelineVersion.pipeline == row).count()
    try:
        checked = check(spec, member_configs(spec))
        inputs, outputs = checked.inputs, checked.outputs
    except (InvalidArgument, NotFound):
        # A member version was deleted since; show the names without types.
        inputs = [Tensor(name, "", ()) for name in spec.inputs]
        outputs = [Tensor(name, "", ()) for name in spec.outputs]
    return PipelineRecord(
        name=row.name,
        description=row.description,
        version=chosen.version,
        version_count=count,
        spec=spec,
        inputs=inputs,
        outputs=outputs,
        deployed_version=deployed_version,
        create_time=row.create_time,
        update_time=chosen.create_time,
        workspace=row.workspace.name if row.workspace_id is not None else "",
    )
