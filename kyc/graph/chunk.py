"""A rescore chunk's view of the graph: the memberships and clusters of a chunk of accounts,
read ahead in a few queries, and the chunk's changes to them, written back at the end.

Rescoring links nothing (no new event happened): it attaches each account to the cluster it
is in (ChunkGraph.attach gives the same Attachment as kyc.graph.attach), counts its traits
there (kyc.graph.settle_flags works on the chunk's records) and reads its cluster's facts
(kyc.graph.cluster_facts asks the chunk).
"""

from __future__ import annotations

from bisect import bisect_right
from collections import defaultdict
from datetime import datetime, timedelta
from types import SimpleNamespace

from sqlalchemy import bindparam, case, insert, select, update
from sqlalchemy.orm import Session

from kyc.graph.core import GROWTH_CAP, GROWTH_SPAN, Attachment, one_member
from kyc.graph.readout import growth, newest_join, shared_kinds
from kyc.models import MEMBER_FLAGS, Cluster, ClusterMember

GROWTH_READ_AHEAD = 2_000     # members whose join times a chunk reads for a cluster's growth


class ChunkGraph:
    """The memberships and clusters of a chunk of accounts being rescored (no linking), read in
    a few queries, and the chunk's changes to them, written by `write`.

    Clusters are read without a row lock: a farm's cluster spans many chunks, and two workers
    each locking it for a whole chunk transaction would take turns. Each evaluation sees the
    counters as read plus the chunk's own changes (set_flags on the copies, which also judges a
    rise); `write` adds the changes to the rows with relative updates, so a concurrent change is
    never overwritten, and their row locks last only from there to the commit.

    Memberships and clusters are plain copies, not ORM objects, which the session never sees:
    building and flushing them cost more than scoring reads from them. An account without a
    membership gets a cluster of its own, inserted by `write`.
    """

    def __init__(self, session: Session, account_ids: list[str]):
        self.members: dict[str, SimpleNamespace] = {row["account_id"]: SimpleNamespace(**row) for row in session.execute(
            select(*ClusterMember.__table__.c).where(ClusterMember.account_id.in_(account_ids))).mappings()}
        self.read_members = {a: vars(m).copy() for a, m in self.members.items()}
        self.clusters: dict[str, SimpleNamespace] = {}
        self.read: dict[str, SimpleNamespace] = {}
        self.new: list[str] = []              # accounts given a cluster of their own
        if self.members:
            for row in session.execute(select(*Cluster.__table__.c).where(
                    Cluster.id.in_(sorted(self.read_cluster_ids)))).mappings():
                self.clusters[row["id"]] = SimpleNamespace(**row)
                self.read[row["id"]] = SimpleNamespace(**row)
        if len(self.read) < len(self.read_cluster_ids):
            raise ChunkStale("a cluster of the chunk was merged away while it was read")
        self.joined: dict[str, list[datetime]] = defaultdict(list)
        self.shared: dict[str, list[str]] | None = None     # shared_kinds of the chunk, read when first asked
        ahead = sorted(cid for cid, c in self.read.items() if 1 < c.size <= GROWTH_READ_AHEAD)
        if ahead:
            for cluster_id, joined_at in session.execute(select(ClusterMember.cluster_id, ClusterMember.joined_at)
                                                         .where(ClusterMember.cluster_id.in_(ahead))):
                self.joined[cluster_id].append(joined_at)
            for times in self.joined.values():
                times.sort()

    @property
    def read_cluster_ids(self) -> set[str]:
        return {m["cluster_id"] for m in self.read_members.values()}

    def attach(self, account_id: str, at: datetime, *, flags: dict[str, bool] | None = None) -> Attachment:
        """kyc.graph.attach without identifiers, for an account of the chunk: nothing read, nothing locked."""
        member = self.members.get(account_id)
        if member is None:
            # No membership (read with the chunk): a cluster of its own, as ensure_member makes.
            member_values, cluster_values = one_member(account_id, at, flags)
            member, cluster = SimpleNamespace(**member_values), SimpleNamespace(**cluster_values)
            self.members[account_id] = member
            self.clusters[cluster.id] = cluster
            self.new.append(account_id)
            return Attachment(member, cluster, at, chunk=self)
        cluster = self.clusters[member.cluster_id]
        if at < member.joined_at:                  # as ensure_member: a backfilled earlier event
            member.joined_at = at
            cluster.first_seen_at = min(cluster.first_seen_at, at)
        return Attachment(member, cluster, at, chunk=self)

    def growth(self, session: Session, cluster: SimpleNamespace, member: SimpleNamespace, at: datetime,
               span: timedelta = GROWTH_SPAN) -> int:
        """growth, from the join times read with the chunk when the cluster is small enough."""
        times = self.joined.get(cluster.id)
        if times is None:
            return growth(session, cluster.id, at, span, member=member, size=cluster.size)
        return min(GROWTH_CAP, bisect_right(times, at) - bisect_right(times, at - span))

    def newest_join(self, session: Session, cluster: SimpleNamespace) -> datetime | None:
        """newest_join, from the join times read with the chunk when the cluster is small enough."""
        times = self.joined.get(cluster.id)
        return times[-1] if times else newest_join(session, cluster.id)

    def shared_kinds(self, session: Session, account_id: str) -> list[str]:
        """shared_kinds, read for all the chunk's members of clusters of two or more at once."""
        if self.shared is None:
            self.shared = shared_kinds(session, [a for a, m in self.read_members.items()
                                                 if self.read[m["cluster_id"]].size > 1])
        return self.shared.get(account_id, [])

    def write(self, session: Session) -> None:
        """Add the chunk's counter changes to its clusters, then write its new and changed
        memberships and check that no membership moved since it was read.

        Clusters first, in id order, then member rows: the order merge() and recluster() lock
        in, so a rescore chunk and a live merge or super-node split never wait on each other in
        a circle (deadlock)."""
        for cluster_id, read in sorted(self.read.items()):
            cluster = self.clusters[cluster_id]
            values = {flag: getattr(Cluster, flag) + (getattr(cluster, flag) - getattr(read, flag))
                      for flag in MEMBER_FLAGS if getattr(cluster, flag) != getattr(read, flag)}
            if cluster.first_seen_at < read.first_seen_at:
                values["first_seen_at"] = case((Cluster.first_seen_at > cluster.first_seen_at, cluster.first_seen_at),
                                               else_=Cluster.first_seen_at)
            if values and not session.execute(update(Cluster).where(Cluster.id == cluster_id).values(**values)
                                               .execution_options(synchronize_session=False)).rowcount:
                raise ChunkStale("a cluster of the chunk was merged away while it was rescored")
        if self.new:
            clusters = [self.clusters[self.members[a].cluster_id] for a in self.new]
            session.execute(insert(Cluster.__table__), [vars(c) for c in clusters])
            session.execute(insert(ClusterMember.__table__), [vars(self.members[a]) for a in self.new])
            self.new = []
        changed = [vars(m) for a, m in self.members.items() if a in self.read_members and vars(m) != self.read_members[a]]
        if changed:
            # Traits and join time only: a concurrent merge may move the member (checked below).
            session.execute(_MEMBER_UPDATE, [{"member": m["account_id"], **{c: m[c] for c in _MEMBER_WRITTEN}}
                                             for m in changed])
        if self.read_members:
            now = dict(session.execute(select(ClusterMember.account_id, ClusterMember.cluster_id).where(
                ClusterMember.account_id.in_(sorted(self.read_members)))).all())
            if now != {a: m["cluster_id"] for a, m in self.read_members.items()}:
                # A merge moved a member: its evaluation saw a cluster that is gone. Rolled back,
                # the batch is retried from its cursor and reads the merged cluster.
                raise ChunkStale("a member of the chunk changed cluster while it was rescored")


_MEMBER_WRITTEN = ("joined_at", *MEMBER_FLAGS)
_MEMBER_UPDATE = (update(ClusterMember.__table__).where(ClusterMember.__table__.c.account_id == bindparam("member"))
                  .values({c: bindparam(c) for c in _MEMBER_WRITTEN}))


class ChunkStale(RuntimeError):
    """The graph changed under a rescore chunk; its transaction rolls back and is retried."""
