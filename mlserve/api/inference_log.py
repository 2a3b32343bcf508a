"""mlserve.v1.InferenceLogService over the inference log (mlserve.monitor)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from mlserve.access import current_principal
from mlserve.api import convert_log
from mlserve.core.errors import InvalidArgument
from mlserve.core.names import check_name
from mlserve.monitor import InferenceLog
from mlserve.monitor.reader import LogQuery
from mlserve.monitor.records import RECORDED, Record, caller_of
from mlserve_api.v1 import inference_log_pb2, inference_log_pb2_grpc

Context = Any
SERVICE = inference_log_pb2.DESCRIPTOR.services_by_name["InferenceLogService"].full_name


class InferenceLogService(inference_log_pb2_grpc.InferenceLogServiceServicer):
    def __init__(self, inference_log: InferenceLog) -> None:
        self.log = inference_log

    async def ListInferenceLogs(
        self, request: inference_log_pb2.ListInferenceLogsRequest, context: Context
    ) -> inference_log_pb2.ListInferenceLogsResponse:
        query = LogQuery(
            models=(check_name(request.model, "model"),) if request.model else (),
            version=request.version,
            deployment=request.deployment,
            caller=request.caller,
            app=request.app,
            status=request.status.upper(),
            start=convert_log.time_of(request.start_time, request.HasField("start_time")),
            end=convert_log.time_of(request.end_time, request.HasField("end_time")),
            newest_first=request.order != inference_log_pb2.LIST_ORDER_OLDEST_FIRST,
        )
        page = await self.log.list(query, request.page_size, request.page_token)
        return inference_log_pb2.ListInferenceLogsResponse(
            records=[convert_log.record_message(r) for r in page.items],
            next_page_token=page.next_page_token,
        )

    async def RecordInference(
        self, request: inference_log_pb2.RecordInferenceRequest, context: Context
    ) -> inference_log_pb2.RecordInferenceResponse:
        check_name(request.model, "model")
        for name in ("input_json", "output_json"):
            _check_json(getattr(request, name), name)
        caller, kind, app = caller_of(current_principal.get())
        record = Record(
            time=convert_log.time_of(request.time, request.HasField("time"))
            or dt.datetime.now(dt.timezone.utc),
            model=request.model,
            version=request.version,
            deployment=request.deployment or request.model,
            caller=request.owner or caller,
            caller_kind=kind if not request.owner else "user",
            app=app,
            latency_ms=request.latency_ms,
            request_id=request.request_id,
            source=RECORDED,
            inputs=[convert_log.tensor(t, f"inputs[{i}]") for i, t in enumerate(request.inputs)],
            outputs=[convert_log.tensor(t, f"outputs[{i}]") for i, t in enumerate(request.outputs)],
            input_json=request.input_json,
            output_json=request.output_json,
        )
        written = await self.log.record_outside(record)
        return inference_log_pb2.RecordInferenceResponse(id=written.id)

    async def GetLoggingPolicy(
        self, request: inference_log_pb2.GetLoggingPolicyRequest, context: Context
    ) -> inference_log_pb2.LoggingPolicy:
        policy = await self.log.policy_of(request.deployment)
        return convert_log.logging_policy_message(
            request.deployment, policy, self.log.dropped(request.deployment)
        )

    async def UpdateLoggingPolicy(
        self, request: inference_log_pb2.UpdateLoggingPolicyRequest, context: Context
    ) -> inference_log_pb2.LoggingPolicy:
        deployment = request.policy.deployment
        policy = await self.log.set_policy(deployment, convert_log.logging_policy(request.policy))
        return convert_log.logging_policy_message(deployment, policy, self.log.dropped(deployment))


def _check_json(text: str, field: str) -> None:
    if not text:
        return
    try:
        json.loads(text)
    except ValueError as error:
        raise InvalidArgument(f"{field} is not JSON: {error}") from None
