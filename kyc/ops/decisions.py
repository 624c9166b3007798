"""Every change of an account's decision, recorded where it happens: an audit event and, with
KYC_DECISION_WEBHOOK_URL set, a decision webhook in the outbox, both in the transaction that
made the change (so both exist exactly when the change committed).

Callers: scoring (live and rescore, actor "rules:<version>"), a review, a label, a cluster
action (one audit event for the whole action, kyc/ops/actions.py; one webhook per member).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from kyc.models import utcnow
from kyc.ops import audit, webhooks


@dataclass
class DecisionChange:
    account_id: str
    old: str
    new: str
    reasons: list[dict[str, Any]]
    actor: str
    action: str = "decision.changed"             # the audit action
    detail: dict[str, Any] = field(default_factory=dict)
    at: datetime = field(default_factory=utcnow)


def by_rules(account, old: str, version: str, trigger: str) -> DecisionChange:
    """A change the rules made (scoring or rescoring) to `account` (its new standing is set)."""
    return DecisionChange(account.id, old, account.decision, account.reasons, audit.rules_actor(version),
                          detail={"trigger": trigger})


def record(runtime, session: Session, changes: list[DecisionChange], *, audited: bool = True) -> None:
    """Record decision changes in the caller's transaction: an audit event each (unless
    `audited` is False: a cluster action records one event for all of them) and the webhooks."""
    if not changes:
        return
    if audited:
        audit.record_many(session, [
            audit.event(c.action, c.actor, account_id=c.account_id, at=c.at,
                        detail={"old": c.old, "new": c.new, **c.detail}) for c in changes])
    webhooks.add(runtime, session, changes)
