"""mlserve.v1.AssayService over mlserve.assays (thin: convert, await, convert back)."""

from __future__ import annotations

from typing import Any

from google.protobuf import empty_pb2

from mlserve.api import convert_assay
from mlserve.api.convert_log import time_of
from mlserve.assays.service import UPDATABLE_FIELDS, Assays
from mlserve.core.errors import InvalidArgument
from mlserve_api.v1 import assay_pb2, assay_pb2_grpc

Context = Any
SERVICE = assay_pb2.DESCRIPTOR.services_by_name["AssayService"].full_name


class AssayService(assay_pb2_grpc.AssayServiceServicer):
    def __init__(self, assays: Assays) -> None:
        self.assays = assays

    async def CreateAssay(
        self, request: assay_pb2.CreateAssayRequest, context: Context
    ) -> assay_pb2.Assay:
        record = await self.assays.create(convert_assay.spec(request.assay))
        return convert_assay.assay_message(record)

    async def GetAssay(
        self, request: assay_pb2.GetAssayRequest, context: Context
    ) -> assay_pb2.Assay:
        return convert_assay.assay_message(await self.assays.get(request.name))

    async def ListAssays(
        self, request: assay_pb2.ListAssaysRequest, context: Context
    ) -> assay_pb2.ListAssaysResponse:
        page = await self.assays.list_assays(
            request.model, request.workspace, request.page_size, request.page_token,
            request.pipeline,
        )  # fmt: skip
        return assay_pb2.ListAssaysResponse(
            assays=[convert_assay.assay_message(r) for r in page.items],
            next_page_token=page.next_page_token,
        )

    async def UpdateAssay(
        self, request: assay_pb2.UpdateAssayRequest, context: Context
    ) -> assay_pb2.Assay:
        mask = list(request.update_mask.paths)
        # Fields outside the mask keep their stored values, so only the masked part of
        # the message needs to be valid; the domain checks the mask itself.
        merged = convert_assay.assay_message(await self.assays.get(request.assay.name))
        for field in mask:
            if field in _UPDATABLE:
                _copy_field(request.assay, merged, field)
        record = await self.assays.update(request.assay.name, convert_assay.spec(merged), mask)
        return convert_assay.assay_message(record)

    async def SetAssayActive(
        self, request: assay_pb2.SetAssayActiveRequest, context: Context
    ) -> assay_pb2.Assay:
        return convert_assay.assay_message(
            await self.assays.set_active(request.name, request.active)
        )

    async def DeleteAssay(
        self, request: assay_pb2.DeleteAssayRequest, context: Context
    ) -> empty_pb2.Empty:
        await self.assays.delete(request.name)
        return empty_pb2.Empty()

    async def PreviewBaseline(
        self, request: assay_pb2.PreviewBaselineRequest, context: Context
    ) -> assay_pb2.AssayBaselineSummary:
        summary = await self.assays.preview(convert_assay.spec(request.assay))
        return convert_assay.baseline_message(summary)

    async def RunAssay(
        self, request: assay_pb2.RunAssayRequest, context: Context
    ) -> assay_pb2.RunAssayResponse:
        start = time_of(request.range.start_time, request.range.HasField("start_time"))
        end = time_of(request.range.end_time, request.range.HasField("end_time"))
        if start is None or end is None:
            raise InvalidArgument("range needs start_time and end_time")
        inline = None if request.name else convert_assay.spec(request.assay)
        baseline, results = await self.assays.run(request.name, inline, start, end)
        return assay_pb2.RunAssayResponse(
            baseline=convert_assay.baseline_message(baseline),
            results=[convert_assay.result_message(r) for r in results],
        )

    async def ListAssayResults(
        self, request: assay_pb2.ListAssayResultsRequest, context: Context
    ) -> assay_pb2.ListAssayResultsResponse:
        span = request.range
        page = await self.assays.list_results(
            request.name,
            time_of(span.start_time, span.HasField("start_time")),
            time_of(span.end_time, span.HasField("end_time")),
            request.page_size,
            request.page_token,
        )
        return assay_pb2.ListAssayResultsResponse(
            results=[convert_assay.result_message(r) for r in page.items],
            next_page_token=page.next_page_token,
        )


_UPDATABLE = frozenset(UPDATABLE_FIELDS)


def _copy_field(source: assay_pb2.Assay, target: assay_pb2.Assay, field: str) -> None:
    if assay_pb2.Assay.DESCRIPTOR.fields_by_name[field].message_type is not None:
        getattr(target, field).CopyFrom(getattr(source, field))
    else:
        setattr(target, field, getattr(source, field))
