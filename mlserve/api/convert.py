"""Domain records to protos and back; nothing else."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TypeVar

from google.protobuf import json_format, struct_pb2
from google.protobuf.descriptor import EnumDescriptor
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from mlserve.catalog.artifacts import ArtifactRecord
from mlserve.catalog.model_metadata import (
    DriftDetection,
    Feature,
    InferenceHints,
    Metric,
    ModelFields,
    ResourceAmount,
)
from mlserve.catalog.models import ModelQuery, ModelRecord
from mlserve.catalog.pipelines import PipelineRecord, Spec, Step, Tensor
from mlserve.catalog.uploads import ArtifactHeader, Chunk, UploadHeader, UploadRecord
from mlserve.catalog.versions import MemoryNeed, VersionRecord
from mlserve.core.errors import InvalidArgument
from mlserve.core.names import check_name
from mlserve.deploy.fleet import ServerFields, ServerRecord
from mlserve.deploy.lifecycle import DeploymentRecord, Wanted
from mlserve.deploy.on_demand import EAGER, ON_DEMAND, Loading
from mlserve.deploy.placement import Capacity
from mlserve.deploy.targets import NO_MEMORY, Placement, ServerMemory, TargetRecord
from mlserve.gateway.stats import UsageRecord
from mlserve.storage.blobs import FileSpec
from mlserve.triton.serving import ServingSettings
from mlserve_api.v1 import deployment_pb2, model_pb2, pipeline_pb2, server_pb2

_NO_USAGE = UsageRecord()


def timestamp(value: dt.datetime | None) -> Timestamp | None:
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def enum_name(enum: EnumDescriptor, prefix: str, value: int) -> str:
    """A proto enum value as the domain names it: "" for the zero value, the
    lower-case name without ``prefix``, or the bare number when the value is
    unknown (the domain refuses it, naming the field)."""
    if value == 0:
        return ""
    if value not in enum.values_by_number:
        return str(value)
    return enum.values_by_number[value].name.removeprefix(prefix).lower()


def enum_value(enum: EnumDescriptor, prefix: str, name: str) -> int:
    return enum.values_by_name[prefix + name.upper()].number if name else 0


_KIND = (model_pb2.ModelKind.DESCRIPTOR, "MODEL_KIND_")
_ORDER = (model_pb2.MetricOrder.DESCRIPTOR, "METRIC_ORDER_")
_VISIBILITY = (model_pb2.Visibility.DESCRIPTOR, "VISIBILITY_")


def model(
    record: ModelRecord,
    usage: UsageRecord = _NO_USAGE,
    deployed: DeploymentRecord | None = None,
) -> model_pb2.Model:
    fields = record.fields
    hints = fields.inference
    return model_pb2.Model(
        inference_count=usage.count,
        inference_failures=usage.failures,
        last_inference_time=timestamp(usage.last_time),
        name=record.name,
        description=fields.description,
        tags=fields.tags,
        labels=fields.labels,
        create_time=timestamp(record.create_time),
        update_time=timestamp(record.update_time),
        latest_version=record.latest_version,
        version_count=record.version_count,
        kind=model_pb2.ModelKind.ValueType(enum_value(*_KIND, fields.kind)),
        hyperparameters={
            name: json_format.ParseDict(value, struct_pb2.Value())
            for name, value in fields.hyperparameters.items()
        },
        performance=[
            model_pb2.PerformanceMetric(
                metric=m.metric,
                value=m.value,
                threshold=m.threshold,
                order=model_pb2.MetricOrder.ValueType(enum_value(*_ORDER, m.order)),
            )
            for m in fields.performance
        ],
        training_resources=[_resource(r) for r in fields.training_resources],
        run_resources=[_resource(r) for r in fields.run_resources],
        features=[
            model_pb2.Feature(name=f.name, type=f.type, description=f.description)
            for f in fields.features
        ],
        inference=model_pb2.InferenceHints(
            max_batch_size=hints.max_batch_size,
            instance_count=hints.instance_count,
            accelerator=hints.accelerator,
            timeout=None if hints.timeout is None else _duration(hints.timeout),
        ),
        drift_detection=model_pb2.DriftDetection(
            enabled=fields.drift_detection.enabled, method=fields.drift_detection.method
        ),
        deployment=None
        if deployed is None
        else model_pb2.ModelDeployment(
            version=deployed.version,
            state=_DEPLOYMENT_STATES[deployed.state],
            servers=deployed.servers,
        ),
        workspace=record.workspace,
        visibility=model_pb2.Visibility.ValueType(enum_value(*_VISIBILITY, fields.visibility)),
        allow_download=fields.allow_download,
        allow_remote_inference=fields.allow_remote_inference,
    )


def _resource(resource: ResourceAmount) -> model_pb2.ResourceAmount:
    return model_pb2.ResourceAmount(resource=resource.resource, amount=resource.amount)


def _duration(value: dt.timedelta) -> Duration:
    duration = Duration()
    duration.FromTimedelta(value)
    return duration


def model_fields(message: model_pb2.Model) -> ModelFields:
    hints = message.inference
    return ModelFields(
        description=message.description,
        tags=list(message.tags),
        labels=dict(message.labels),
        kind=enum_name(*_KIND, message.kind),
        hyperparameters={
            name: _json_value(value, f"model.hyperparameters[{name!r}]")
            for name, value in message.hyperparameters.items()
        },
        performance=[
            Metric(
                metric=m.metric,
                value=m.value,
                threshold=m.threshold if m.HasField("threshold") else None,
                order=enum_name(*_ORDER, m.order),
            )
            for m in message.performance
        ],
        training_resources=[
            ResourceAmount(r.resource, r.amount) for r in message.training_resources
        ],
        run_resources=[ResourceAmount(r.resource, r.amount) for r in message.run_resources],
        features=[Feature(f.name, f.type, f.description) for f in message.features],
        inference=InferenceHints(
            max_batch_size=hints.max_batch_size,
            instance_count=hints.instance_count,
            accelerator=hints.accelerator,
            timeout=hints.timeout.ToTimedelta() if hints.HasField("timeout") else None,
        ),
        drift_detection=DriftDetection(
            enabled=message.drift_detection.enabled, method=message.drift_detection.method
        ),
        visibility=enum_name(*_VISIBILITY, message.visibility),
        allow_download=message.allow_download if message.HasField("allow_download") else None,
        allow_remote_inference=(
            message.allow_remote_inference if message.HasField("allow_remote_inference") else None
        ),
    )


def _json_value(value: struct_pb2.Value, where: str) -> Any:
    try:
        return json_format.MessageToDict(value)
    except ValueError as error:  # NaN or infinity: JSON has no such number
        raise InvalidArgument(f"{where}: {error}") from None


def model_query(request: model_pb2.ListModelsRequest) -> ModelQuery:
    tags_all = list(request.tags_all)
    if request.tag:  # the older single-tag filter is one more required tag
        tags_all.append(request.tag)
    return ModelQuery(
        name_prefix=request.name_prefix,
        kind=enum_name(*_KIND, request.kind),
        tags_all=tags_all,
        tags_any=list(request.tags_any),
        labels=list(request.labels),
        order_by=request.order_by,
        workspace=request.workspace,
    )


def file_manifest(spec: FileSpec) -> model_pb2.FileManifest:
    return model_pb2.FileManifest(path=spec.path, size=spec.size, sha256=spec.sha256)


def version(record: VersionRecord, usage: UsageRecord = _NO_USAGE) -> model_pb2.ModelVersion:
    return model_pb2.ModelVersion(
        inference_count=usage.count,
        inference_failures=usage.failures,
        last_inference_time=timestamp(usage.last_time),
        model=record.model,
        version=record.version,
        sha256=record.sha256,
        size_bytes=record.size_bytes,
        files=[file_manifest(spec) for spec in record.files],
        create_time=timestamp(record.create_time),
        config=record.config,
        upload_id=record.upload_id,
        training_dataset=None
        if record.training_dataset is None
        else model_pb2.DatasetVersionRef(
            dataset=record.training_dataset[0], version=record.training_dataset[1]
        ),
        memory=memory_need(record.memory),
    )


def memory_need(need: MemoryNeed) -> model_pb2.MemoryNeed:
    return model_pb2.MemoryNeed(
        estimated_bytes=need.estimated,
        measured_bytes=need.measured,
        measured_on=need.measured_on,
        measurement=need.measurement,
        measure_time=timestamp(need.measure_time),
        bytes=need.bytes,
    )


_Message = TypeVar("_Message")
_Part = TypeVar("_Part")


async def stream_parts(
    messages: AsyncIterator[_Message], part: Callable[[_Message], _Part]
) -> AsyncIterator[_Part]:
    """An upload stream's messages as domain parts, converted one by one as they arrive."""
    async for message in messages:
        yield part(message)


def upload_part(message: model_pb2.UploadModelVersionRequest) -> UploadHeader | Chunk:
    if message.HasField("header"):
        header = message.header
        return UploadHeader(
            model=header.model,
            upload_id=upload_id(header.upload_id, chosen=True),
            files=[FileSpec(f.path, f.size, f.sha256) for f in header.files],
            config=header.config,
            training_dataset=(header.training_dataset.dataset, header.training_dataset.version)
            if header.HasField("training_dataset")
            else None,
        )
    return file_chunk(message.chunk)


def file_chunk(chunk: model_pb2.FileChunk) -> Chunk:
    return Chunk(path=chunk.path, offset=chunk.offset, data=chunk.data, sha256=chunk.sha256)


_ARTIFACT_KINDS: dict[int, str] = {
    model_pb2.ARTIFACT_KIND_MODEL: "model",
    model_pb2.ARTIFACT_KIND_DATA: "data",
    model_pb2.ARTIFACT_KIND_CODE: "code",
    model_pb2.ARTIFACT_KIND_ENV: "env",
}
_ARTIFACT_KIND_VALUES = {
    name: model_pb2.ArtifactKind.ValueType(value) for value, name in _ARTIFACT_KINDS.items()
}


def artifact_kind(value: int) -> str:
    """The domain's name of a proto ArtifactKind: "" when unspecified, the number if unknown."""
    if value == model_pb2.ARTIFACT_KIND_UNSPECIFIED:
        return ""
    return _ARTIFACT_KINDS.get(value, str(value))


def artifact_upload_part(message: model_pb2.UploadArtifactRequest) -> ArtifactHeader | Chunk:
    if message.HasField("header"):
        header = message.header
        return ArtifactHeader(
            model=header.model,
            version=header.version,
            upload_id=upload_id(header.upload_id, chosen=True),
            kind=artifact_kind(header.kind),
            file=FileSpec(header.file.path, header.file.size, header.file.sha256),
        )
    return file_chunk(message.chunk)


def artifact(record: ArtifactRecord) -> model_pb2.Artifact:
    return model_pb2.Artifact(
        model=record.model,
        version=record.version,
        path=record.path,
        kind=_ARTIFACT_KIND_VALUES[record.kind],
        size_bytes=record.size_bytes,
        sha256=record.sha256,
        create_time=timestamp(record.create_time),
        upload_id=record.upload_id,
    )


def upload(record: UploadRecord) -> model_pb2.Upload:
    return model_pb2.Upload(
        upload_id=record.upload_id,
        model=record.model,
        state=(
            model_pb2.UPLOAD_STATE_COMMITTED
            if record.committed_version
            else model_pb2.UPLOAD_STATE_RECEIVING
        ),
        files=[
            model_pb2.UploadFileStatus(
                path=p.spec.path, size=p.spec.size, sha256=p.spec.sha256, received_bytes=p.received
            )
            for p in record.files
        ],
        received_bytes=record.received_bytes,
        size_bytes=record.size_bytes,
        version=record.committed_version,
        create_time=timestamp(record.create_time),
        update_time=timestamp(record.update_time),
        owner=record.owner,
        expire_time=timestamp(record.expire_time),
    )


def upload_id(text: str, *, chosen: bool = False) -> str:
    """A checked upload id; with ``chosen`` (a header's), empty means "derive one"."""
    return text if chosen and not text else check_name(text, "upload_id")


_SERVER_STATES = {
    "READY": server_pb2.SERVER_STATE_READY,
    "NOT_READY": server_pb2.SERVER_STATE_NOT_READY,
    "UNREACHABLE": server_pb2.SERVER_STATE_UNREACHABLE,
}


def server(
    record: ServerRecord,
    serving: Sequence[tuple[str, int]] = (),
    memory: ServerMemory = NO_MEMORY,
) -> server_pb2.Server:
    """``serving``: deployments loaded there that Triton's index may not list (push);
    ``memory``: used and free bytes on the host and each GPU (free None: not stated)."""
    status = record.status
    listed = {(entry.name, entry.version) for entry in status.loaded}
    pushed = [
        server_pb2.LoadedModel(name=name, version=version, state="READY")
        for name, version in serving
        if (name, version) not in listed
    ]
    return server_pb2.Server(
        name=record.name,
        address=record.address,
        state=_SERVER_STATES.get(status.state, server_pb2.SERVER_STATE_UNSPECIFIED),
        loaded_models=[
            server_pb2.LoadedModel(
                name=entry.name, version=entry.version, state=entry.state, reason=entry.reason
            )
            for entry in status.loaded
        ]
        + pushed,
        last_health_time=timestamp(status.last_health_time),
        labels=record.labels,
        description=record.description,
        create_time=timestamp(record.create_time),
        embedded=record.embedded,
        status_message=status.message,
        shares_repository=record.shares_repository,
        workspaces=record.workspaces,
        capacity=server_pb2.Capacity(
            gpu_count=record.capacity.gpu_count,
            gpu_memory_bytes=record.capacity.gpu_memory_bytes,
            host_memory_bytes=record.capacity.host_memory_bytes,
        ),
        used_memory_bytes=memory.used,
        free_memory_bytes=memory.free or 0,
        gpus=[
            server_pb2.GpuMemory(
                index=gpu.index, used_memory_bytes=gpu.used, free_memory_bytes=gpu.free or 0
            )
            for gpu in memory.gpus
        ],
    )


def server_fields(message: server_pb2.Server) -> ServerFields:
    return ServerFields(
        address=message.address,
        description=message.description,
        labels=dict(message.labels),
        shares_repository=message.shares_repository,
        workspaces=list(message.workspaces),
        capacity=Capacity(
            message.capacity.gpu_count,
            message.capacity.gpu_memory_bytes,
            message.capacity.host_memory_bytes,
        ),
    )


_DEPLOYMENT_STATES = {
    "PENDING": deployment_pb2.DEPLOYMENT_STATE_PENDING,
    "READY": deployment_pb2.DEPLOYMENT_STATE_READY,
    "FAILED": deployment_pb2.DEPLOYMENT_STATE_FAILED,
    "UNREACHABLE": deployment_pb2.DEPLOYMENT_STATE_UNREACHABLE,
    "LOADING": deployment_pb2.DEPLOYMENT_STATE_LOADING,
    "COLD": deployment_pb2.DEPLOYMENT_STATE_COLD,
}


def deployment(record: DeploymentRecord) -> deployment_pb2.Deployment:
    """A model's or a pipeline's deployment; serving settings are a model's only."""
    message = deployment_pb2.Deployment(
        name=record.name,
        model=record.model,
        pipeline=record.pipeline,
        version=record.version,
        servers=record.servers,
        targets=[_target(target) for target in record.targets],
        state=_DEPLOYMENT_STATES[record.state],
        create_time=timestamp(record.create_time),
        update_time=timestamp(record.update_time),
        load_timeout_seconds=record.load_timeout,
        loading=_LOADING_MODES[record.loading.mode],
        min_copies=record.loading.min_copies,
        max_copies=record.loading.max_copies,
        idle_unload_after_seconds=record.loading.idle_unload_after,
        pinned=record.loading.pinned,
    )
    if record.model:
        message.serving.CopyFrom(serving_message(record.serving))
    return message


def _target(target: TargetRecord) -> deployment_pb2.DeploymentTarget:
    return deployment_pb2.DeploymentTarget(
        server=target.server,
        state=_DEPLOYMENT_STATES[target.state],
        message=target.message,
        update_time=timestamp(target.update_time),
        members=[
            deployment_pb2.MemberTarget(
                model=member.model,
                version=member.version,
                state=_DEPLOYMENT_STATES[member.state],
                message=member.message,
            )
            for member in target.members
        ],
    )


def wanted_deployment(message: deployment_pb2.Deployment) -> Wanted:
    """CreateDeployment's deployment as the domain takes it."""
    return Wanted(
        model=message.model,
        pipeline=message.pipeline,
        name=message.name,
        version=message.version,
        placement=Placement(list(message.servers), message.replicas, dict(message.server_selector)),
        serving=serving_settings(message.serving) if message.HasField("serving") else None,
        load_timeout=message.load_timeout_seconds,
        loading=loading(message),
    )


def loading(message: deployment_pb2.Deployment) -> Loading:
    """A deployment's loading fields as the domain takes them (unchecked)."""
    return Loading(
        _LOADING_NAMES.get(message.loading, str(message.loading)),
        message.min_copies,
        message.max_copies,
        message.idle_unload_after_seconds,
        message.pinned,
    )


_LOADING_MODES = {
    EAGER: deployment_pb2.LOADING_MODE_EAGER,
    ON_DEMAND: deployment_pb2.LOADING_MODE_ON_DEMAND,
}
_LOADING_NAMES = {
    deployment_pb2.LOADING_MODE_UNSPECIFIED: EAGER,
    deployment_pb2.LOADING_MODE_EAGER: EAGER,
    deployment_pb2.LOADING_MODE_ON_DEMAND: ON_DEMAND,
}


def serving_settings(message: pipeline_pb2.ServingSettings) -> ServingSettings:
    batching = message.dynamic_batching
    return ServingSettings(
        max_batch_size=message.max_batch_size,
        instance_count=message.instance_count,
        dynamic_batching=message.HasField("dynamic_batching"),
        preferred_batch_sizes=tuple(batching.preferred_batch_sizes),
        max_queue_delay_microseconds=batching.max_queue_delay_microseconds,
    )


def serving_message(settings: ServingSettings) -> pipeline_pb2.ServingSettings:
    message = pipeline_pb2.ServingSettings(
        max_batch_size=settings.max_batch_size, instance_count=settings.instance_count
    )
    if settings.dynamic_batching:
        message.dynamic_batching.CopyFrom(
            pipeline_pb2.DynamicBatching(
                preferred_batch_sizes=settings.preferred_batch_sizes,
                max_queue_delay_microseconds=settings.max_queue_delay_microseconds,
            )
        )
    return message


def pipeline_spec(message: pipeline_pb2.Pipeline) -> Spec:
    return Spec(
        inputs=[tensor.name for tensor in message.inputs],
        outputs=[tensor.name for tensor in message.outputs],
        steps=[
            Step(
                name=step.name,
                model=step.model,
                model_version=step.model_version,
                input_map=dict(step.input_map),
                output_map=dict(step.output_map),
                serving=serving_settings(step.serving),
            )
            for step in message.steps
        ],
    )


def pipeline(record: PipelineRecord, address: str) -> pipeline_pb2.Pipeline:
    def tensors(items: Sequence[Tensor]) -> list[pipeline_pb2.PipelineTensor]:
        return [
            pipeline_pb2.PipelineTensor(name=t.name, datatype=t.datatype, dims=t.dims)
            for t in items
        ]

    return pipeline_pb2.Pipeline(
        name=record.name,
        description=record.description,
        version=record.version,
        inputs=tensors(record.inputs),
        outputs=tensors(record.outputs),
        steps=[
            pipeline_pb2.PipelineStep(
                name=step.name,
                model=step.model,
                model_version=step.model_version,
                input_map=step.input_map,
                output_map=step.output_map,
                serving=serving_message(step.serving),
            )
            for step in record.spec.steps
        ],
        version_count=record.version_count,
        state=(
            pipeline_pb2.PIPELINE_STATE_DEPLOYED
            if record.deployed_version
            else pipeline_pb2.PIPELINE_STATE_REGISTERED
        ),
        deployed_version=record.deployed_version,
        inference_address=address,
        inference_model=record.name,
        create_time=timestamp(record.create_time),
        update_time=timestamp(record.update_time),
        workspace=record.workspace,
    )
