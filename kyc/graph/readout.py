"""Reading the graph: a cluster's facts for an evaluation, and what ops see of a cluster.

`cluster_facts` is what scoring reads about the cluster an account is attached to (its counters,
its growth, read at the right time, and what links the account to it: shared_kinds, which a
rescore chunk reads for all its accounts at once); `cluster_summary`, `link_reasons` and
`shared_kinds` are also the ops views (the API's cluster page, the console), which count in the
database and read only the edges of the members they show.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from typing import Iterable

from sqlalchemy import func, inspect, literal, select
from sqlalchemy.orm import Session, aliased

from kyc.graph.core import (GROWTH_CAP, GROWTH_SPAN, STRONG, Attachment, ClusterFacts, chunks,
                            linked_by_work_only)
from kyc.graph.link import statements
from kyc.inputs import rfc3339
from kyc.persist import in_list
from kyc.models import Account, Cluster, ClusterMember, GraphEdge


def cluster_facts(session: Session, attachment: Attachment, at: datetime, *, as_of_newest: bool = False
                  ) -> ClusterFacts:
    """The facts of the attached cluster for an evaluation at `at`: its counters as they stand
    (the account's traits counted: call after settle_flags) and its growth over GROWTH_SPAN.

    `as_of_newest` (a rescore): the growth up to the newest member's first event (the cluster's
    "now" in event time), not up to this member's own event, so the first members of a farm
    see the burst that followed them, which is why they are rescored. A rescore chunk's
    attachment is answered from what the chunk read ahead.
    """
    member, cluster, chunk = attachment.member, attachment.cluster, attachment.chunk
    growth_at = at
    if as_of_newest and cluster.size > 1:
        newest = chunk.newest_join(session, cluster) if chunk is not None else newest_join(session, cluster.id)
        growth_at = max(at, newest or at)
    if chunk is not None:
        grown = chunk.growth(session, cluster, member, growth_at)
    else:
        grown = growth(session, cluster.id, growth_at, member=member, size=cluster.size,
                       locked=attachment.growth if growth_at == attachment.at else None)
    # What links it: read for a stored member of a cluster of two or more. A member not written
    # yet (a new account's signup) holds no SHARED_WORK kinds: they come from activity reports,
    # of accounts kyc knows.
    work_only = False
    state = inspect(member, raiseerr=False)
    if cluster.size > 1 and (state is None or state.persistent):
        kinds = (chunk.shared_kinds(session, member.account_id) if chunk is not None
                 else shared_kinds(session, [member.account_id]).get(member.account_id, ()))
        work_only = linked_by_work_only(kinds)
    return ClusterFacts.of(cluster, grown, work_only)


def growth(session: Session, cluster_id: str, at: datetime, span: timedelta = GROWTH_SPAN, *,
           member: ClusterMember | None = None, size: int | None = None, locked: int | None = None) -> int:
    """Members whose first event time lies in (at - span, at], capped at GROWTH_CAP.

    Given a cluster's size and the member being scored, a cluster of one (most accounts) is
    answered without a read: its one member is that account. So is a cluster locked for this
    evaluation (attach), whose growth up to `at` was read with its lock (`locked`). A member not
    written yet (a new account that joined a stored cluster: write_new inserts it) is counted
    here.
    """
    mine = member is not None and member.cluster_id == cluster_id
    joined = int(mine and at - span < member.joined_at <= at)
    if size == 1 and mine:
        return joined
    if locked is not None and span == GROWTH_SPAN:
        stored = locked
    else:
        stored = session.scalar(statements(session).growth, {"cluster": cluster_id, "since": at - span, "at": at})
    # A rescore chunk's member (a plain record, see ChunkGraph) is a stored row: counted by the read.
    state = inspect(member, raiseerr=False) if mine else None
    return min(stored + joined, GROWTH_CAP) if state is not None and not state.persistent else stored


def newest_join(session: Session, cluster_id: str) -> datetime | None:
    """The latest first-event time of the cluster's members: the cluster's "now" in event time."""
    return session.scalar(select(func.max(ClusterMember.joined_at)).where(ClusterMember.cluster_id == cluster_id))


def link_reasons(session: Session, cluster_id: str, members: Iterable[str] = ()) -> tuple[dict[str, list[str]], list[dict]]:
    """Why members are linked: the shared identifiers (hashed, with their kind and how many
    members hold each), counted in the database; and, for each of `members`, the identifier
    kinds it shares with another member. A farm of 25,000 members holds some 75,000 edges: only
    the shared identifiers and the edges of the members asked about are read."""
    e, m = GraphEdge, ClusterMember
    counted = session.execute(
        select(e.kind, e.value_hash, func.count()).join(m, m.account_id == e.account_id)
        .where(m.cluster_id == cluster_id).group_by(e.kind, e.value_hash).having(func.count() > 1)).all()
    shared = {(kind, value_hash) for kind, value_hash, _ in counted}
    reasons: dict[str, set[str]] = defaultdict(set)
    members = list(members)
    for chunk in chunks(members, 5_000) if shared else ():
        for account, kind, value_hash in session.execute(
                select(e.account_id, e.kind, e.value_hash).where(e.account_id.in_(chunk))):
            if (kind, value_hash) in shared:
                reasons[account].add(kind)
    identifiers = [
        {"kind": kind, "hash": value_hash, "strength": "strong" if kind in STRONG else "weak", "accounts": accounts}
        for kind, value_hash, accounts in sorted(counted, key=lambda row: (-row[2], row[0], row[1]))
    ]
    return {a: sorted(k) for a, k in reasons.items()}, identifiers


# Each account's edges held by another member of its cluster, stopping at the first other holder:
# built once, its ids bound as one list (kyc.persist.in_list). Its plan must hold under generic
# plans, which guess 100 ids: joined to the account's membership in the outer query, the plan
# hashed a scan of every membership (3.5 ms a member of a cluster of 20,000, growing with the
# table); the EXISTS flattened into a semi-join hashed every edge (30 ms). The member's cluster as
# a correlated scalar and the EXISTS kept a subplan (OFFSET 0 keeps the planner from flattening
# it) probe indexes only: 0.23 ms (EXPLAIN ANALYZE of the prepared statement, PostgreSQL 15,
# bench/rescore.py --cluster-size 20000). Built per call with an expanding IN, one account's
# read cost 1.56 ms median in process, most of it building and compiling the statement.
_MINE, _THEIRS, _OTHER = aliased(ClusterMember), aliased(ClusterMember), aliased(GraphEdge)
_SHARED_KINDS = (
    select(GraphEdge.account_id, GraphEdge.kind)
    .where(in_list(GraphEdge.account_id, "ids"),
           select(literal(1)).select_from(_OTHER).join(_THEIRS, _THEIRS.account_id == _OTHER.account_id)
           .where(_OTHER.kind == GraphEdge.kind, _OTHER.value_hash == GraphEdge.value_hash,
                  _OTHER.account_id != GraphEdge.account_id,
                  _THEIRS.cluster_id == select(_MINE.cluster_id).where(_MINE.account_id == GraphEdge.account_id)
                  .correlate(GraphEdge).scalar_subquery()).offset(0).exists()))


def shared_kinds(session: Session, account_ids: Iterable[str]) -> dict[str, list[str]]:
    """Per account, the identifier kinds it shares with another member of its cluster: its entry
    of link_reasons, answered by stopping at the first other holder of each of its identifiers,
    where link_reasons counts every holder (a farm member's page must not count 25,000 of them).
    One statement for many accounts (a rescore chunk's), one for one (the console's page)."""
    kinds: dict[str, set[str]] = defaultdict(set)
    for part in chunks(sorted(set(account_ids)), 5_000):
        for account, kind in session.execute(_SHARED_KINDS, {"ids": part}):
            kinds[account].add(kind)
    return {account: sorted(k) for account, k in kinds.items()}


def cluster_summary(session: Session, cluster: Cluster, *, members: int = 0) -> dict:
    """What ops see of a cluster: size, growth, member decisions, the identifiers that link it
    (hashed, with their kind) and, when `members` > 0, up to that many members with the kinds
    that link each one."""
    newest = session.scalar(select(func.max(ClusterMember.joined_at)).where(ClusterMember.cluster_id == cluster.id))
    decisions = dict(session.execute(
        select(Account.decision, func.count()).join(ClusterMember, ClusterMember.account_id == Account.id)
        .where(ClusterMember.cluster_id == cluster.id).group_by(Account.decision)).all())
    body = {
        "id": cluster.id,
        "size": cluster.size,
        # Growth up to the newest member's event time, so a backfilled history reads as it happened.
        "growth_24h": growth(session, cluster.id, newest) if newest else 0,
        "first_seen_at": rfc3339(cluster.first_seen_at),
        "last_joined_at": rfc3339(newest),
        "decisions": {d: decisions.get(d, 0) for d in ("allow", "verify", "review", "block")},
        "blocked": cluster.blocked,
        "labeled_fraud": cluster.labeled_fraud,
        "shares": {flag: round(getattr(cluster, flag) / max(cluster.size, 1), 4)
                   for flag in ("disposable", "voip", "hosting", "headless")},
    }
    rows = []
    if members:
        rows = session.execute(
            select(Account.id, Account.decision, Account.score, Account.label, ClusterMember.joined_at)
            .join(ClusterMember, ClusterMember.account_id == Account.id)
            .where(ClusterMember.cluster_id == cluster.id)
            .order_by(ClusterMember.joined_at, Account.id).limit(members)).all()
    reasons, identifiers = link_reasons(session, cluster.id, [row[0] for row in rows])
    body["identifiers"] = identifiers[:50]
    if members:
        body["members"] = [
            {"account_id": a, "decision": d, "score": s, "label": label, "joined_at": rfc3339(j),
             "linked_by": reasons.get(a, [])}
            for a, d, s, label, j in rows
        ]
    return body
