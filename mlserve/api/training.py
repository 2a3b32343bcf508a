"""mlserve.v1.TrainingService over the training jobs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from mlserve.api.convert import timestamp
from mlserve.core.errors import FailedPrecondition, InvalidArgument
from mlserve.training.jobs import JobRequest, TrainingJobs
from mlserve.training.runner import JobState
from mlserve.training.store import TrainingJobRecord
from mlserve_api.v1 import model_pb2, training_pb2, training_pb2_grpc

Context = Any
_STATES = {
    JobState.QUEUED: training_pb2.TRAINING_JOB_STATE_QUEUED,
    JobState.RUNNING: training_pb2.TRAINING_JOB_STATE_RUNNING,
    JobState.SUCCEEDED: training_pb2.TRAINING_JOB_STATE_SUCCEEDED,
    JobState.FAILED: training_pb2.TRAINING_JOB_STATE_FAILED,
    JobState.CANCELLED: training_pb2.TRAINING_JOB_STATE_CANCELLED,
}
_STATE_OF = {value: state for state, value in _STATES.items()}


def job_message(record: TrainingJobRecord) -> training_pb2.TrainingJob:
    return training_pb2.TrainingJob(
        id=record.job_id,
        model=record.model,
        code_version=record.code_version,
        code_path=record.code_path,
        training_dataset=model_pb2.DatasetVersionRef(
            dataset=record.dataset, version=record.dataset_version
        ),
        parameters=dict(record.parameters),
        state=_STATES[record.state],
        reason=record.reason,
        create_time=timestamp(record.create_time),
        start_time=timestamp(record.start_time),
        end_time=timestamp(record.end_time),
        metrics=dict(record.metrics),
        version=record.version,
        code_sha256=record.code_sha256,
        dataset_sha256=record.dataset_sha256,
        env_path=record.env_path,
        env_requirements=list(record.env_requirements),
        env_sha256=record.env_sha256,
        runner_labels=list(record.runner_labels),
        network=record.network,
        instance=record.instance,
        code_dataset=model_pb2.DatasetVersionRef(
            dataset=record.code_dataset, version=record.code_dataset_version
        )
        if record.code_dataset
        else None,
    )


class TrainingService(training_pb2_grpc.TrainingServiceServicer):
    def __init__(self, jobs: TrainingJobs | None) -> None:
        self._jobs = jobs

    @property
    def jobs(self) -> TrainingJobs:
        if self._jobs is None:
            raise FailedPrecondition(
                "this MLServe runs no training jobs: it has no sandbox (install bubblewrap, "
                "scripts/ensure_bubblewrap.sh)"
            )
        return self._jobs

    async def CreateTrainingJob(
        self, request: training_pb2.CreateTrainingJobRequest, context: Context
    ) -> training_pb2.TrainingJob:
        job = request.job
        record = await self.jobs.create(
            JobRequest(
                model=job.model,
                code_version=job.code_version,
                code_path=job.code_path,
                dataset=job.training_dataset.dataset,
                dataset_version=job.training_dataset.version,
                parameters=dict(job.parameters),
                env_path=job.env_path,
                runner_labels=list(job.runner_labels),
                network=job.network,
                code_dataset=job.code_dataset.dataset,
                code_dataset_version=job.code_dataset.version,
            )
        )
        return job_message(record)

    async def GetTrainingJob(
        self, request: training_pb2.GetTrainingJobRequest, context: Context
    ) -> training_pb2.TrainingJob:
        return job_message(await self.jobs.get(request.id))

    async def ListTrainingJobs(
        self, request: training_pb2.ListTrainingJobsRequest, context: Context
    ) -> training_pb2.ListTrainingJobsResponse:
        if request.state and request.state not in _STATE_OF:
            raise InvalidArgument(
                f"state {request.state} is not a TrainingJobState: give one of "
                + ", ".join(training_pb2.TrainingJobState.Name(v) for v in _STATE_OF)
            )
        state = _STATE_OF.get(request.state)
        page = await self.jobs.list(request.model, state, request.page_size, request.page_token)
        return training_pb2.ListTrainingJobsResponse(
            jobs=[job_message(r) for r in page.items], next_page_token=page.next_page_token
        )

    async def CancelTrainingJob(
        self, request: training_pb2.CancelTrainingJobRequest, context: Context
    ) -> training_pb2.TrainingJob:
        return job_message(await self.jobs.cancel(request.id))

    async def WatchTrainingJob(
        self, request: training_pb2.WatchTrainingJobRequest, context: Context
    ) -> AsyncIterator[training_pb2.TrainingJobEvent]:
        async for item in self.jobs.watch(request.id):
            if isinstance(item, str):
                yield training_pb2.TrainingJobEvent(log_line=item)
            else:
                yield training_pb2.TrainingJobEvent(job=job_message(item))
