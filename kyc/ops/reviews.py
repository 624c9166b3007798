"""The review queue and a person's decisions on one account (a review, a label).

An account enters the queue when its decision becomes `review` (the rules, a cluster action's
review, or new evidence reopening a person's allow) and leaves it when a person decides or the
rules move it off review. A person's decision is kept on the account and laid over every later
automatic standing (kyc/ops/standing.py).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from kyc import graph
from kyc.db import write_lock
from kyc.inputs import rfc3339
from kyc.models import Account, Cluster, ClusterMember, utcnow
from kyc.ops import audit, webhooks
from kyc.ops.decisions import DecisionChange
from kyc.errors import AccountChanged, NotFound
from kyc.ops.standing import decided, evidence, overlay
from kyc.rescore.requests import after_commit
from kyc.scoring.decide import combine

OUTCOMES = ("allow", "block")


def review_queue(session: Session, limit: int = 50) -> list[dict[str, Any]]:
    """Accounts held at review that no person has decided since, oldest first: the contract's
    entries, plus `changed` (what reopened a person's earlier allow, if that is why it is here)."""
    rows = session.execute(
        select(Account.id, Account.score, Account.reasons, Account.review_since, Account.override, Cluster.id,
               Cluster.size, Account.state_version)
        .outerjoin(ClusterMember, ClusterMember.account_id == Account.id)
        .outerjoin(Cluster, Cluster.id == ClusterMember.cluster_id)
        .where(Account.review_since.is_not(None))
        .order_by(Account.review_since, Account.id).limit(limit)).all()
    return [{
        "account_id": account_id, "score": score, "reasons": [r for r in reasons if not r.get("shadow")],
        "cluster": {"id": cluster_id, "size": size} if cluster_id else None, "since": rfc3339(since),
        "changed": ((override or {}).get("reopened") or {}).get("changed", []), "state_version": version,
    } for account_id, score, reasons, since, override, cluster_id, size, version in rows]


def _locked(session: Session, account_id: str) -> Account:
    write_lock(session)
    account = session.execute(select(Account).where(Account.id == account_id).with_for_update()
                              .execution_options(populate_existing=True)).scalar_one_or_none()
    if account is None:
        raise NotFound("account", account_id)
    return account


def cluster_of(session: Session, account_id: str) -> Cluster | None:
    member = session.get(ClusterMember, account_id)
    return session.get(Cluster, member.cluster_id) if member else None


def restand(account, cluster, steps: tuple[int, ...], now: datetime) -> None:
    """Recompute the account's standing from its latest evaluations and its override, as
    scoring does (kyc.scoring.combine, then overlay); bump its state version if it changed."""
    decision, score, reasons, required = combine(account.subjects or {})
    standing = overlay(account.override, account.review_since, decision, reasons, required, cluster, steps, now)
    new = (standing.decision, score, standing.reasons, standing.required_verifications)
    if new != (account.decision, account.score, account.reasons, account.required_verifications):
        account.state_version = (account.state_version or 0) + 1
    account.decision, account.score, account.reasons, account.required_verifications = new
    account.override, account.review_since = standing.override, standing.review_since


def person_decides(runtime, session: Session, account: Account, decision: str, source: str, actor: str,
                   note: str | None, *, action: str, detail: dict[str, Any]) -> str:
    """Record a person's `decision` on a locked account and apply it at once (entitlements
    follow with the next check); returns the old decision. One audit event (`action`, with
    old and new) and, when the decision changed, a decision webhook."""
    now = utcnow()
    cluster = cluster_of(session, account.id)
    _, _, seen, _ = combine(account.subjects or {})
    account.override = decided(decision, source, actor, now, note, evidence(seen, cluster))
    old = account.decision
    restand(account, cluster, runtime.config.graph_rescore_sizes, now)
    graph.set_flags(session, graph.Policy.from_config(runtime.config), account.id,
                    {"blocked": account.decision == "block"})
    audit.record(session, action, actor, account_id=account.id, cluster_id=cluster.id if cluster else None,
                 detail={**detail, "note": note, "old": old, "new": account.decision}, at=now)
    if account.decision != old:
        webhooks.add(runtime, session, [DecisionChange(account.id, old, account.decision, account.reasons, actor,
                                                       action, at=now)])
    return old


def review_account(runtime, session: Session, account_id: str, outcome: str, note: str | None,
                   actor: str, *, seen_version: int | None = None) -> Account:
    """A person's review: the account's decision becomes `outcome` (allow | block), recorded
    with `actor` (the API key) and the time, and the account leaves the queue. Raises
    NotFound, and AccountChanged when `seen_version` (the state the person decided on) is not
    the account's now: its evidence recorded as seen would be evidence they never saw."""
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {OUTCOMES}")
    account = _locked(session, account_id)
    if seen_version is not None and seen_version != account.state_version:
        raise AccountChanged(account_id, seen_version, account.state_version)
    person_decides(runtime, session, account, outcome, "review", actor, note, action="account.reviewed",
                   detail={"outcome": outcome})
    # A block that is its cluster's first raises the cluster's standing: its members are rescored
    # once this commits, as after any other block.
    after_commit(session).hand_over(runtime, exclude=account.id)
    return account
