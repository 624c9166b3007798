"""GET /v1/audit — the audit trail, newest first, filtered and paged (kyc/ops/audit.py)."""

from __future__ import annotations

from flask import jsonify, request

from kyc.api import parse, runtime, v1
from kyc.inputs import AuditQuery
from kyc.ops.audit import list_events


@v1.get("/audit")
def audit_events():
    query = parse(AuditQuery, request.args.to_dict())
    with runtime().session() as session:
        return jsonify(list_events(session, **query.model_dump()))
