"""mlserve.v1.AuditService over the audit log."""

from __future__ import annotations

from typing import Any

from mlserve.access.audit import AuditLog
from mlserve.api import convert_access as convert
from mlserve_api.v1 import audit_pb2, audit_pb2_grpc

Context = Any


class AuditService(audit_pb2_grpc.AuditServiceServicer):
    def __init__(self, audit: AuditLog) -> None:
        self.audit = audit

    async def ListAuditEvents(
        self, request: audit_pb2.ListAuditEventsRequest, context: Context
    ) -> audit_pb2.ListAuditEventsResponse:
        page = await self.audit.list_events(
            request.page_size, request.page_token, request.actor, request.resource
        )
        return audit_pb2.ListAuditEventsResponse(
            events=[convert.audit_event(record) for record in page.items],
            next_page_token=page.next_page_token,
        )
