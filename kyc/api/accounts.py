"""GET /v1/accounts/{id} — an account's current standing and history."""

from __future__ import annotations

from datetime import datetime, timezone

from flask import jsonify
from sqlalchemy import select

from kyc.api import runtime, v1
from kyc.errors import not_found
from kyc.inputs import rfc3339
from kyc.models import Account, Evaluation, Verification
from kyc.verification.service import verification_body

HISTORY = 20


@v1.get("/accounts/<account_id>")
def get_account(account_id: str):
    with runtime().session() as session:
        account = session.get(Account, account_id)
        if account is None:
            raise not_found("account")
        history = session.execute(
            select(Evaluation).where(Evaluation.account_id == account_id)
            .order_by(Evaluation.created_at.desc(), Evaluation.id.desc()).limit(HISTORY)
        ).scalars().all()
        verifications = session.execute(
            select(Verification).where(Verification.account_id == account_id)
            .order_by(Verification.created_at.desc()).limit(HISTORY)
        ).scalars().all()
    now = datetime.now(timezone.utc)
    body = account_body(account, history)
    body["verifications"] = [verification_body(v, now, runtime().config.code_max_attempts) for v in verifications]
    return jsonify(body)


def account_body(account: Account, history: list[Evaluation]) -> dict:
    return {
        "account_id": account.id,
        "decision": account.decision,
        "score": account.score,
        "reasons": account.reasons,
        "required_verifications": account.required_verifications,
        "verifications": [],
        "cluster": None,
        "label": account.label,
        "first_seen_at": rfc3339(account.first_seen_at),
        "last_seen_at": rfc3339(account.last_seen_at),
        "state_version": account.state_version,
        "evaluations": [
            {"evaluation_id": e.id, "subject": e.subject, "trigger": e.trigger, "decision": e.decision,
             "score": e.score, "occurred_at": rfc3339(e.occurred_at), "rules_version": e.rules_version}
            for e in history
        ],
    }
