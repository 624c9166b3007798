"""GET /v1/audit — the audit trail, newest first, filtered and paged (kyc/ops/audit.py)."""

from __future__ import annotations

from flask import request

from kyc.api import documented, parse, respond, runtime, v1
from kyc.api.responses import AuditEvents
from kyc.inputs import AuditQuery
from kyc.ops.audit import list_events


@v1.get("/audit")
@documented("Audit trail", query=AuditQuery, responses={200: AuditEvents}, errors=(400,), tag="ops")
def audit_events():
    """Decision changes, rules reloads and key changes, newest first, filtered and paged."""
    query = parse(AuditQuery, request.args.to_dict())
    with runtime().session() as session:
        return respond(AuditEvents, list_events(session, **query.model_dump()))
