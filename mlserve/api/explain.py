"""mlserve.v1.ExplainService over the monitor's explainer."""

from __future__ import annotations

from typing import Any

from mlserve.api.convert_log import time_of
from mlserve.monitor.explain import Explainer, ExplainQuery
from mlserve_api.v1 import explain_pb2, explain_pb2_grpc

Context = Any


class ExplainService(explain_pb2_grpc.ExplainServiceServicer):
    def __init__(self, explainer: Explainer) -> None:
        self.explainer = explainer

    async def Explain(
        self, request: explain_pb2.ExplainRequest, context: Context
    ) -> explain_pb2.ExplainResponse:
        background, window = request.background_dataset, request.background_log
        query = ExplainQuery(
            model=request.model,
            rows=[list(row.values) for row in request.rows],
            output=request.output,
            output_index=request.output_index,
            background_dataset=(background.dataset, background.version)
            if request.HasField("background_dataset")
            else None,
            background_log=(
                time_of(window.start_time, window.HasField("start_time")),
                time_of(window.end_time, window.HasField("end_time")),
            )
            if request.HasField("background_log")
            else None,
            background_size=request.background_size,
            samples=request.samples,
            feature_names=list(request.feature_names),
            include_prediction=request.include_prediction,
        )
        result = await self.explainer.explain(query, context)
        return explain_pb2.ExplainResponse(
            method=result.method,
            output=result.output,
            feature_names=result.feature_names,
            base_value=result.base_value,
            explanations=[
                explain_pb2.Explanation(
                    contributions=explanation.contributions,
                    prediction=explanation.prediction or 0.0,
                )
                for explanation in result.explanations
            ],
            version=result.version,
            model_calls=result.model_calls,
        )
