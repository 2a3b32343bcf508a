"""The audit trail: every management write, who made it, when, and how it ended."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from mlserve.access.rules import Principal
from mlserve.core.paging import Listing, Page, PageTokens
from mlserve.storage import tables
from mlserve.storage.db import in_thread

MAX_RESOURCE_LENGTH = 300


@dataclass(frozen=True)
class AuditRecord:
    id: int
    time: dt.datetime
    actor: str
    key_id: str
    method: str
    resource: str
    outcome: str


class AuditLog:
    def __init__(self, tokens: PageTokens) -> None:
        self.tokens = tokens

    @in_thread
    def record(self, principal: Principal, method: str, resource: str, outcome: str) -> None:
        """Append one event: who (``principal``) called ``method`` on ``resource`` and how it
        ended (the call guard awaits it after each audited call). A resource longer than
        ``MAX_RESOURCE_LENGTH`` characters is cut."""
        tables.AuditEvent.create(
            actor=principal.name,
            key_prefix=principal.key_prefix,
            method=method,
            resource=resource[:MAX_RESOURCE_LENGTH],
            outcome=outcome,
        )

    @in_thread
    def list_events(
        self, requested: int, token: str, actor: str = "", resource: str = ""
    ) -> Page[AuditRecord]:
        """Audit events newest first, only those of ``actor`` and of ``resource`` when given."""
        query = tables.AuditEvent.select()
        if actor:
            query = query.where(tables.AuditEvent.actor == actor)
        if resource:
            query = query.where(tables.AuditEvent.resource == resource)
        listing = Listing(
            query, tables.AuditEvent.id, _audit_record, lambda row: row.id,
            {"list": "audit", "actor": actor, "resource": resource}, descending=True,
        )  # fmt: skip
        return self.tokens.page(listing, requested, token)


def _audit_record(row: Any) -> AuditRecord:
    return AuditRecord(
        row.id, row.time, row.actor, row.key_prefix, row.method, row.resource, row.outcome
    )
