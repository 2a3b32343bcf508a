"""mlserve.v1.TrainingService over the training jobs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from mlserve.api.convert import timestamp
from mlserve.core.errors import FailedPrecondition
from mlserve.training.jobs import JobRequest, TrainingJobRecord, TrainingJobs
from mlserve.training.runner import JobState
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
    request, status = record.request, record.status
    return training_pb2.TrainingJob(
        id=record.job_id,
        model=request.model,
        code_version=request.code_version,
        code_path=request.code_path,
        training_dataset=model_pb2.DatasetVersionRef(
            dataset=request.dataset, version=record.dataset_version
        ),
        parameters=dict(request.parameters),
        state=_STATES[record.state],
        reason=record.reason,
        create_time=timestamp(record.create_time),
        start_time=timestamp(None if status is None else status.start_time),
        end_time=timestamp(None if status is None else status.end_time),
        metrics=record.metrics,
        version=record.version,
        code_sha256=record.code_sha256,
        dataset_sha256=record.dataset_sha256,
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
        state = _STATE_OF.get(request.state)
        records = await self.jobs.list(request.model, state)
        return training_pb2.ListTrainingJobsResponse(jobs=[job_message(r) for r in records])

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
