"""GET /v1/accounts/{id} — an account's current standing and history; POST .../labels — ops feedback."""

from __future__ import annotations

from datetime import datetime, timezone

from flask import g
from sqlalchemy import select

from kyc.api import documented, parse, respond, runtime, v1
from kyc.api.responses import Account as AccountBody
from kyc.api.errors import not_found
from kyc.feedback import label_account
from kyc.inputs import LabelInput, rfc3339
from kyc.models import Account, Cluster, ClusterMember, Evaluation, Verification
from kyc.scoring import cluster_ref
from kyc.verification.service import verification_body

HISTORY = 20


@v1.get("/accounts/<account_id>")
@documented("Read an account", responses={200: AccountBody}, errors=(404,), tag="ops")
def get_account(account_id: str):
    """The account's current decision, score, reasons, verifications, cluster, label and its
    latest evaluations."""
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
        member = session.get(ClusterMember, account_id)
        cluster = session.get(Cluster, member.cluster_id) if member else None
    now = datetime.now(timezone.utc)
    body = account_body(account, history, cluster)
    body["verifications"] = [verification_body(v, now, runtime().config.code_max_attempts) for v in verifications]
    return respond(AccountBody, body)


@v1.post("/accounts/<account_id>/labels")
@documented("Label an account", body=LabelInput, responses={200: AccountBody}, errors=(404,), tag="ops")
def label(account_id: str):
    """Ops feedback: fraud or legit, kept with its history. A fraud label queues the members of
    the account's cluster for rescoring. Answers with the account."""
    inp = parse(LabelInput)
    rt = runtime()
    with rt.session() as session, session.begin():
        account = label_account(rt, session, account_id, inp.label, inp.note, g.get("api_key"))
        if account is None:
            raise not_found("account")
    # A fraud label queued the cluster's members (this account included) for rescoring.
    return get_account(account_id)


def account_body(account: Account, history: list[Evaluation], cluster: Cluster | None = None) -> dict:
    return {
        "account_id": account.id,
        "decision": account.decision,
        "score": account.score,
        "reasons": account.reasons,
        "required_verifications": account.required_verifications,
        "verifications": [],
        "cluster": cluster_ref(cluster.id, cluster.size) if cluster else None,
        "label": account.label,
        # A person's decision standing over the rules' (a review, a cluster action, a label) and
        # what they saw; or what new evidence reopened it. None: the rules decide alone.
        "override": account.override,
        "review_since": rfc3339(account.review_since),
        "first_seen_at": rfc3339(account.first_seen_at),
        "last_seen_at": rfc3339(account.last_seen_at),
        "state_version": account.state_version,
        "evaluations": [
            {"evaluation_id": e.id, "subject": e.subject, "trigger": e.trigger, "decision": e.decision,
             "score": e.score, "occurred_at": rfc3339(e.occurred_at), "rules_version": e.rules_version}
            for e in history
        ],
    }
