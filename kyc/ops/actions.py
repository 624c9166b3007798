"""Farm actions: one decision for every current member of a cluster, in one transaction.

    block    a person's block on every member
    review   hold every member at review (or block, where the rules say block): they join the queue
    release  a person's allow on every member, which stands until evidence they did not see
             (kyc/ops/standing.py)

A member a person blocked on its own (a review's block, a fraud label) is kept as it is: the
action is about the farm, and says nothing that overrules what was decided about that one
account (a release would otherwise allow a fraud-labelled account and tell the gateway so).

The action is one audit event (`cluster.action`: action, note, members, changed, old -> new
counts) and each member's override points at it; each member whose decision changed gets a
decision webhook. Everything is written with a few set-based statements, so a farm of 25,000
accounts is acted on in seconds (bench/cluster_action.py).

Locks are taken in the order scoring and rescoring take them (the members' account rows in id
order, then the cluster's row), so an action and a live signup or a rescore chunk never wait on
each other in a circle; a new member that joins meanwhile waits for the action to commit.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from kyc.db import write_lock
from kyc.models import Account, AuditEvent, Cluster, ClusterMember, utcnow
from kyc.ops import audit, webhooks
from kyc.ops.decisions import DecisionChange
from kyc.errors import NotFound
from kyc.ops.standing import Standing, decided, evidence, overlay
from kyc.scoring.decide import combine

log = logging.getLogger("kyc.ops")

DECISIONS = {"block": "block", "review": "review", "release": "allow"}
RETRIES = 3                     # a deadlock with a concurrent merge is retried

# What the action reads of each member: its standing is recomputed from its latest evaluations.
# (The person's reason and the override change on every member, so every member's state version
# moves: gateways revalidate what they cached.)
_COLUMNS = (Account.id, Account.decision, Account.subjects, Account.override, Account.label)
IN_LIST = 5_000                 # ids per UPDATE (PostgreSQL takes at most 65,535 parameters)


@dataclass(frozen=True)
class ClusterAction:
    cluster_id: str
    members: int
    changed: int
    event_id: int | None = None         # the audit event
    kept: int = 0                       # members a person blocked on their own, left as they are


def act_on_cluster(runtime, cluster_id: str, action: str, note: str | None, actor: str) -> ClusterAction:
    """Apply `action` to every current member of the cluster, in one transaction of its own.
    Raises NotFound."""
    if action not in DECISIONS:
        raise ValueError(f"action must be one of {', '.join(DECISIONS)}")
    for attempt in range(RETRIES):
        try:
            with runtime.session() as session, session.begin():
                return _act(runtime, session, cluster_id, action, note, actor)
        except OperationalError as exc:        # deadlock detected: rolled back, nothing written
            if attempt == RETRIES - 1 or "deadlock" not in str(exc).lower():
                raise
            log.warning("cluster action on %s retried after a deadlock", cluster_id)
    raise AssertionError("unreachable")


def _member_ids(session: Session, cluster_id: str) -> list[str]:
    return list(session.scalars(select(ClusterMember.account_id).where(ClusterMember.cluster_id == cluster_id)
                                .order_by(ClusterMember.account_id)))


def _lock_members(session: Session, cluster_id: str) -> tuple[dict[str, Any], Cluster]:
    """The members' rows and the cluster's, locked as every writer locks: accounts in id order,
    then clusters. A member that joined between the first read and the cluster's lock (its
    joining committed) is not locked after higher ids, which a bulk report holding it and
    waiting for another member would meet in a circle (a deadlock, its call cancelled): the
    locks are given back (ROLLBACK TO SAVEPOINT releases them) and all taken again in order."""
    ids = set(_member_ids(session, cluster_id))
    while True:
        attempt = session.begin_nested()
        rows = {r.id: r for r in session.execute(select(*_COLUMNS).where(Account.id.in_(sorted(ids)))
                                                 .order_by(Account.id).with_for_update())} if ids else {}
        cluster = session.execute(select(Cluster).where(Cluster.id == cluster_id).with_for_update()
                                  .execution_options(populate_existing=True)).scalar_one_or_none()
        if cluster is None:
            raise NotFound("cluster", cluster_id)
        late = set(_member_ids(session, cluster_id)) - set(rows)
        if not late:
            attempt.commit()                    # RELEASE SAVEPOINT: the locks stay the transaction's
            return rows, cluster
        attempt.rollback()
        ids |= late


def _act(runtime, session: Session, cluster_id: str, action: str, note: str | None, actor: str) -> ClusterAction:
    write_lock(session)
    rows, cluster = _lock_members(session, cluster_id)
    now = utcnow()
    decision = DECISIONS[action]
    steps = runtime.config.graph_rescore_sizes
    changes, transitions = [], Counter()
    event_id = audit.record(session, "cluster.action", actor, cluster_id=cluster_id, returning=True,
                            detail={"action": action, "note": note, "members": len(rows)}, at=now)
    # Members whose latest evaluations give the same standing get the same new standing: a farm's
    # members mostly hit the same rules, so a few UPDATEs write them all.
    groups: dict[str, tuple[Standing, list[str]]] = {}
    kept = 0
    for row in rows.values():
        if _blocked_on_its_own(row):
            kept += 1
            continue
        automatic, _, reasons, required = combine(row.subjects or {})
        key = json.dumps([automatic, reasons, required], separators=(",", ":"))
        group = groups.get(key)
        if group is None:
            override = decided(decision, "cluster_action", actor, now, note, evidence(reasons, cluster),
                               cluster_id=cluster_id, event=event_id)
            group = groups[key] = (overlay(override, None, automatic, reasons, required, cluster, steps, now), [])
        standing = group[0]
        group[1].append(row.id)
        transitions[f"{row.decision}>{standing.decision}"] += 1
        if standing.decision != row.decision:
            changes.append(DecisionChange(row.id, row.decision, standing.decision, standing.reasons, actor,
                                          "cluster.action", at=now))
    members = select(ClusterMember.account_id).where(ClusterMember.cluster_id == cluster_id)
    for standing, ids in groups.values():
        # Members already held at review keep the time they arrived in the queue.
        since = func.coalesce(Account.review_since, now) if standing.decision == "review" else None
        # One standing for the whole farm (the usual case): its members, as the locked cluster
        # holds them; otherwise each group's ids.
        where = ([Account.id.in_(members)] if len(groups) == 1 and not kept
                 else [Account.id.in_(ids[start:start + IN_LIST]) for start in range(0, len(ids), IN_LIST)])
        for condition in where:
            session.execute(update(Account).where(condition).values(
                decision=standing.decision, reasons=standing.reasons,
                required_verifications=standing.required_verifications, override=standing.override,
                review_since=since, state_version=Account.state_version + 1)
                .execution_options(synchronize_session=False))
    if groups:
        # The members' blocked trait and the cluster's count follow their decisions.
        blocked = select(Account.decision == "block").where(Account.id == ClusterMember.account_id).scalar_subquery()
        session.execute(update(ClusterMember).where(ClusterMember.cluster_id == cluster_id).values(blocked=blocked)
                        .execution_options(synchronize_session=False))
        cluster.blocked = session.scalar(select(func.count()).select_from(ClusterMember).where(
            ClusterMember.cluster_id == cluster_id, ClusterMember.blocked.is_(True)))
    webhooks.add(runtime, session, changes)
    session.execute(update(AuditEvent).where(AuditEvent.id == event_id).values(
        detail={"action": action, "note": note, "members": len(rows), "changed": len(changes), "kept": kept,
                "transitions": dict(sorted(transitions.items()))}))
    log.info("cluster %s: %s by %s, %d member(s), %d changed, %d kept", cluster_id, action, actor, len(rows),
             len(changes), kept)
    return ClusterAction(cluster_id, len(rows), len(changes), event_id, kept)


def _blocked_on_its_own(row) -> bool:
    """A fraud label, or a block a person gave this account itself (not an earlier cluster action)."""
    override = row.override or {}
    return row.label == "fraud" or (override.get("decision") == "block" and override.get("source") != "cluster_action")
