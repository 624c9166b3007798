"""Linking: an account's identifiers attached to the graph, inside the scoring transaction.

`attach` is what scoring calls: it records the account's linking identifiers (nodes and edges),
links the account to the holders it shares enough with, merges their clusters (union by size),
turns a node held by too many accounts into a super-node and splits what it held together
(`recluster`), and returns the account's Attachment: its membership and its cluster, locked
for this transaction or created by it, with the cluster's growth read with that lock.
`settle_flags` then counts the account's traits in its cluster; a cluster whose standing rises
(a size step, a first block, a first fraud label) asks for its members' rescoring once the
transaction commits.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import datetime
from functools import lru_cache
from types import SimpleNamespace
from typing import Iterable

from sqlalchemy import Integer, bindparam, case, cast, delete, func, insert, inspect, or_, select, tuple_, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from kyc.graph.core import (LINK_KINDS, SHARED_WORK, WEAK, GROWTH_CAP, Attachment, Node, Policy, as_loaded, chunks,
                            components, growth_column, growth_window, keep_ids, linked_accounts, locked_with_growth,
                            add_cluster, may_link, one_member, rose, store)
from kyc.models import MEMBER_FLAGS, Cluster, ClusterMember, GraphEdge, GraphNode
from kyc.persist import (add_edges_statement, count_and_read_statement, count_nodes_and_edges, count_nodes_statement,
                         deferred, dialect_of, fetch, in_list, send)
from kyc.rescore.requests import after_commit


@lru_cache(maxsize=4)
def _statements(dialect: str) -> SimpleNamespace:
    """The statements of the hot path, built once: building a statement costs more than running it."""
    c = Cluster.__table__.c
    mine = select(GraphEdge.kind, GraphEdge.value_hash).where(GraphEdge.account_id == bindparam("account"))
    member_cluster = (select(ClusterMember.cluster_id).where(ClusterMember.account_id == bindparam("account"))
                      .scalar_subquery())
    return SimpleNamespace(
        # Sorted rows: concurrent transactions lock node rows in the same order (no deadlock), and
        # the row lock makes a concurrent account on the same node wait, then see this one's edge.
        count=count_nodes_statement(dialect),
        edge=add_edges_statement(dialect),
        # PostgreSQL: count, record and read in one statement (None elsewhere: the three above).
        count_and_read=count_and_read_statement(dialect),
        # The other holders of the account's nodes, each with its cluster: one read.
        members=select(GraphEdge.kind, GraphEdge.value_hash, GraphEdge.account_id, ClusterMember.cluster_id)
        .outerjoin(ClusterMember, ClusterMember.account_id == GraphEdge.account_id)
        .where(tuple_(GraphEdge.kind, GraphEdge.value_hash).in_(mine)),
        # A stored cluster absorbing a new account's cluster of one: its row updated and read in
        # one statement (the update takes the row lock a merge needs).
        # (Core, its row put in the session by as_loaded: the ORM's UPDATE ... RETURNING cost 0.5 ms more.)
        absorb=update(Cluster.__table__).where(c.id == bindparam("cluster")).values(
            size=c.size + 1,
            first_seen_at=case((c.first_seen_at > bindparam("first"), bindparam("first")), else_=c.first_seen_at),
            **{flag: c[flag] + bindparam(flag) for flag in MEMBER_FLAGS})
        .returning(*c, growth_column(c.id)),
        move_members=deferred(update(ClusterMember.__table__)
                              .where(in_list(ClusterMember.cluster_id, "moved"))
                              .values(cluster_id=bindparam("target"))),
        delete_clusters=deferred(delete(Cluster.__table__).where(in_list(c.id, "moved"))),
        lock_cluster=select(*c).where(c.id == member_cluster).with_for_update(),
        lock_cluster_growth=select(*c, growth_column(c.id)).where(c.id == member_cluster).with_for_update(),
        growth=select(growth_column(bindparam("cluster"))),
    )


@lru_cache(maxsize=64)
def _known_statement(count: int):
    """Each node the account shows: is it a super-node, does the account already hold it.

    Spelled as OR-ed key lookups, which every backend answers from the primary key (SQLite
    scans the table for a row-value IN list joined this way).
    """
    keys = or_(*((GraphNode.kind == bindparam(f"k{i}")) & (GraphNode.value_hash == bindparam(f"h{i}"))
                 for i in range(count)))
    return (select(GraphNode.kind, GraphNode.value_hash, GraphNode.super_node, GraphEdge.account_id)
            .outerjoin(GraphEdge, (GraphEdge.kind == GraphNode.kind) & (GraphEdge.value_hash == GraphNode.value_hash)
                       & (GraphEdge.account_id == bindparam("account")))
            .where(keys))


def _count_and_read(session: Session, account_id: str, nodes: list[Node], at: datetime, existing: bool
                    ) -> tuple[list[tuple[str, str, int]], list[tuple] | None]:
    """An account's new nodes counted and its edges recorded (PostgreSQL, one statement:
    kyc.persist.count_and_read_statement): the nodes counted with their counts, and the other
    holders of every node it holds with their cluster, or None when what the statement read may
    miss a concurrent signup's edge (read them again). `existing`: the account may hold nodes
    already (it is not new)."""
    params = {"account": account_id, "at": at, "kinds": [k for k, _ in nodes], "hashes": [h for _, h in nodes],
              "existing": existing}
    counted: dict[Node, int] = {}
    known: set[Node] = set()                   # super-nodes, and nodes the account held already
    holders: list[tuple] = []
    rows = fetch(session, statements(session).count_and_read, params)
    for role, kind, value_hash, accounts, other, other_cluster in rows:
        if role == "counted":
            counted[(kind, value_hash)] = accounts
        else:
            known.add((kind, value_hash))
        if other is not None:
            holders.append((kind, value_hash, other, other_cluster))
    seen = Counter((kind, value_hash) for kind, value_hash, _, _ in holders)
    # A node neither counted nor known when read turned super meanwhile (a split may have moved
    # its holders); a node counting more holders than were read gained one meanwhile.
    complete = all(node in counted or node in known for node in nodes) and all(
        seen[node] == accounts - 1 for node, accounts in counted.items())
    return sorted((k, h, a) for (k, h), a in counted.items()), holders if complete else None


def statements(session: Session) -> SimpleNamespace:
    return _statements(dialect_of(session))


def ensure_member(session: Session, account_id: str, at: datetime, *, flags: dict[str, bool] | None = None,
                  new_account: bool = False, stored: dict | None = None) -> tuple[ClusterMember, Cluster | None]:
    """The account's membership, created with a cluster of its own when it has none.

    Returns the member and, when this call created it, its new cluster (no other transaction
    can see that cluster yet, so it needs no lock). A new member starts with `flags` counted,
    which spares updating the rows just inserted. `new_account`: the account row was created
    by this transaction, so it has no membership yet (cluster_members references accounts).
    `stored`: the membership's row, read with the account's lock (scoring), so it is not read again.

    A new member and cluster are not in the session yet: most stay a cluster of one, and
    `write_new` inserts them with their final values in two plain statements, which cost less
    than the session's unit of work. What needs them in the session (a merge, a split) adds
    them first (`_attach`).

    A member that joined after `at` (a backfilled earlier event) is moved back by `attach`, once
    its cluster is locked (_backfill).
    """
    member = (None if new_account else as_loaded(session, ClusterMember, stored) if stored
              else session.get(ClusterMember, account_id))
    if member is None:
        member_values, cluster_values = one_member(account_id, at, flags)
        return ClusterMember(**member_values), Cluster(**cluster_values)
    return member, None


def locked_cluster(session: Session, member: ClusterMember) -> Cluster:
    """The member's cluster, locked for this transaction."""
    return _lock(session, member, None)[0]


def _lock(session: Session, member: ClusterMember, at: datetime | None) -> tuple[Cluster, int | None]:
    """The member's cluster, locked for this transaction, and its growth up to `at` when given
    (scoring: see Attachment). Read through the membership: a concurrent merge may have moved the
    member since it was read, and once that merge commits the cluster locked by id would be
    gone; the member then follows its move."""
    sql = statements(session)
    statement, params = (sql.lock_cluster, {}) if at is None else (sql.lock_cluster_growth, growth_window(at))
    for _ in range(3):
        row = session.execute(statement, {"account": member.account_id, **params}).mappings().one_or_none()
        if row is not None:
            if row["id"] != member.cluster_id:
                set_committed_value(member, "cluster_id", row["id"])
            return (as_loaded(session, Cluster, row, refresh=True), None) if at is None else locked_with_growth(session, row)
    # Only a merge committing between each read and its lock, three times over, gets here.
    raise RuntimeError(f"the cluster of {member.account_id} kept moving while it was being locked")


def _attach(session: Session, member: ClusterMember, created: Cluster | None) -> None:
    """A membership and cluster ensure_member made, put in the session (written at its flush)."""
    if inspect(member).transient:
        session.add_all([c for c in (created, member) if c is not None and inspect(c).transient])


def write_new(session: Session, member: ClusterMember, cluster: Cluster) -> None:
    """Insert a membership and its cluster of one that ensure_member made and nothing put in
    the session: call once their flags are final (scoring does, before its writes). A rescore
    chunk's records are written by the chunk (ChunkGraph.write)."""
    state = inspect(member, raiseerr=False)
    if state is None or not state.transient:
        return
    if inspect(cluster).transient:
        send(session, _CLUSTER_INSERT, [dict(inspect(cluster).dict)])
    send(session, _MEMBER_INSERT, [dict(inspect(member).dict)])


MERGE_ATTEMPTS = 5       # rounds of following clusters concurrent merges removed (each round: one that committed)
_CLUSTER_INSERT = insert(Cluster.__table__)
_MEMBER_INSERT = insert(ClusterMember.__table__)


def set_flags(session: Session, policy: Policy, account_id: str, flags: dict[str, bool], *,
              member: ClusterMember | None = None, cluster: Cluster | None = None,
              being_scored: bool = False) -> None:
    """Update an account's traits and its cluster's counters; a cluster whose standing moves
    queues a rescore: a first block or fraud label, and as much the last one lifted (a label
    changed to legit, a member released by a person: the others' linked_to_* reasons go with it).

    The scoring path passes the member it holds and its cluster, already locked (or created) in
    this transaction, so this reads nothing. (Holding them matters: the session keeps clean
    objects only weakly, so a second `get` would read the row again.) It also says the account
    is `being_scored`: its own rescore is excluded, so a cluster of one queues nobody, which
    spares reading its members after the commit.
    """
    member = member or session.get(ClusterMember, account_id)
    if member is None:
        return
    changes = {f: bool(v) for f, v in flags.items() if bool(v) != getattr(member, f)}
    if not changes:
        return
    if cluster is None or cluster.id != member.cluster_id:
        cluster = locked_cluster(session, member)
    before = policy.bucket(cluster)
    store(session, member, changes)
    store(session, cluster, {flag: getattr(cluster, flag) + (1 if value else -1) for flag, value in changes.items()})
    if before != policy.bucket(cluster) and not (being_scored and cluster.size == 1):
        after_commit(session).ask_rescore(clusters=[cluster.id])


def settle_flags(session: Session, policy: Policy, attachment: Attachment, flags: dict[str, bool]) -> None:
    """The traits of the account being scored counted in its attached cluster (set_flags, reading
    nothing); its own rescore is never asked for."""
    set_flags(session, policy, attachment.member.account_id, flags, member=attachment.member,
              cluster=attachment.cluster, being_scored=True)


def attach(session: Session, policy: Policy, account_id: str, at: datetime, *,
           identifiers: Iterable[Node] | None = None, flags: dict[str, bool] | None = None,
           new_account: bool = False, stored: dict | None = None) -> Attachment:
    """The account's place in the graph for an evaluation at `at`: its membership and its
    cluster, locked for this transaction or created by it, and the cluster's growth read with
    the lock. With `identifiers` (a new event) the account's linking identifiers are recorded
    and it is linked first, which may merge or split clusters; without (a rescore) nothing is
    linked. `flags`: the traits a new membership starts with. `new_account`: the account row
    was created by this transaction. `stored`: see ensure_member."""
    member, created = ensure_member(session, account_id, at, flags=flags, new_account=new_account, stored=stored)
    backfilled = created is None and at < member.joined_at
    if identifiers is None:
        if created is not None:
            return Attachment(member, created, at)
        cluster, grown = _lock(session, member, at)
        attachment = Attachment(member, cluster, at, grown)
    else:
        nodes = sorted({n for n in identifiers if n[0] in LINK_KINDS})
        sql = statements(session)
        # A new member and cluster stay out of the session while the reads and writes below run
        # (none of them reads this account's membership), so write_new inserts them with their last
        # values instead of inserting now and updating later; joining one stored cluster keeps them
        # out too (_absorb). A merge of several clusters puts them in the session, and a super-node
        # split, which reads memberships, flushes them first.
        with session.no_autoflush:
            attachment = _link(session, policy, account_id, member, created, nodes, sql, at, new_account)
    return _backfill(session, attachment) if backfilled else attachment


def _backfill(session: Session, attachment: Attachment) -> Attachment:
    """A backfilled earlier event: the account joined its cluster at its first event time, and the
    cluster was first seen no later. Written once the cluster is locked, after the nodes: the order
    in which every transaction takes them. Why: written before the nodes were counted, the
    membership and cluster rows were locked first, and a concurrent signup holding one of those
    nodes and waiting for that cluster met it in a circle (a deadlock, a 503); and the cluster,
    read by the id the membership held, could be one a concurrent merge had deleted (a 500).
    The member now counts in the growth read with the lock, as it did written first: it joined
    at the evaluation's time, inside the window."""
    member, cluster, at = attachment.member, attachment.cluster, attachment.at
    store(session, member, {"joined_at": at})
    store(session, cluster, {"first_seen_at": min(cluster.first_seen_at, at)})
    grown = None if attachment.growth is None else min(GROWTH_CAP, attachment.growth + 1)
    return Attachment(member, cluster, at, grown, attachment.chunk)


def link(session: Session, policy: Policy, account_id: str, identifiers: Iterable[Node], at: datetime, *,
         flags: dict[str, bool] | None = None, new_account: bool = False, stored: dict | None = None
         ) -> tuple[ClusterMember, Cluster]:
    """attach with identifiers, for what needs only the membership and the cluster (tools, benches)."""
    attached = attach(session, policy, account_id, at, identifiers=identifiers, flags=flags,
                      new_account=new_account, stored=stored)
    return attached.member, attached.cluster


def _link(session: Session, policy: Policy, account_id: str, member: ClusterMember, created: Cluster | None,
          nodes: list[Node], sql: SimpleNamespace, at: datetime, new_account: bool) -> Attachment:
    counted: list = []
    read: list[tuple] | None = None            # the other holders and their clusters, when read
    if nodes:
        fresh: list[Node] = []
        if sql.count_and_read is not None:
            counted, read = _count_and_read(session, account_id, nodes, at, existing=not new_account)
        elif new_account:
            fresh = nodes                      # it holds nothing yet; the upsert skips super-nodes
        else:
            params = {"account": account_id}
            for i, (kind, value_hash) in enumerate(nodes):
                params[f"k{i}"], params[f"h{i}"] = kind, value_hash
            held = {(k, h) for k, h, is_super, holder in session.execute(_known_statement(len(nodes)), params)
                    if is_super or holder is not None}
            fresh = [n for n in nodes if n not in held]
        if fresh:                              # new to this account: count it, unless a super-node
            counted = session.execute(sql.count, [
                {"kind": k, "value_hash": h, "accounts": 1, "super_node": False, "first_seen_at": at}
                for k, h in fresh]).all()
            if counted:
                session.execute(sql.edge, [{"kind": k, "value_hash": h, "account_id": account_id}
                                           for k, h, _ in sorted(counted)])
        turned_super = sorted((k, h) for k, h, accounts in counted if policy.is_super(k, accounts))
        if turned_super:
            _attach(session, member, created)
            session.flush()
            _make_super(session, policy, turned_super)
            session.refresh(member)            # a split may have moved this account
            read = None                        # and others: read them after it
    if new_account and not _may_link(counted):
        return Attachment(member, created, at)  # the only holder of all its nodes: a cluster of one
    # Link through every node the account holds (earlier signups of the same account included).
    members: dict[Node, list[str]] = defaultdict(list)
    cluster_of: dict[str, str | None] = {}
    if read is None:
        read = session.execute(sql.members, {"account": account_id}).all()
    for kind, value_hash, other, other_cluster in read:
        members[(kind, value_hash)].append(other)
        cluster_of[other] = other_cluster
    linked = linked_accounts(account_id, members)
    if linked:
        cluster_ids = {cluster_of[a] for a in linked if cluster_of[a]}
        cluster_ids.add(member.cluster_id)
        if len(cluster_ids) > 1:
            if created is not None and inspect(created).transient:     # not written: see ensure_member
                cluster, grown = merge(session, policy, cluster_ids, at, exclude=member, joining=created,
                                       linked=linked)
            else:
                session.flush()
                cluster, grown = merge(session, policy, cluster_ids, at, exclude=member, linked=linked)
            return Attachment(member, cluster, at, grown)
    if created is not None and created.id == member.cluster_id:
        return Attachment(member, created, at)
    cluster, grown = _lock(session, member, at)
    return Attachment(member, cluster, at, grown)


def _may_link(counted: list[tuple[str, str, int]]) -> bool:
    """Whether a new account, holding exactly the nodes just counted, can link to anyone: a node
    counted once is held by it alone (each holder of a node that is not a super-node has an
    edge and was counted once). Most new accounts share nothing and skip reading the other holders."""
    return may_link(kind for kind, _, accounts in counted if accounts > 1)


@lru_cache(maxsize=8)
def _shared_weak_kinds(known: str):
    """Per account, the weak kinds other than `known` of the nodes it holds that someone else
    holds too. Not `known`'s own nodes: the account shares that kind already, and they are most
    of what an account of the gateway holds and grows (a template a node, for good): 1,000
    accounts of 100 shared templates and 30 networks-a-day each, 713-984 -> 245-494 ms
    (EXPLAIN ANALYZE, four runs, 1,000,000 accounts stored, load ~4)."""
    return (select(GraphEdge.account_id, GraphEdge.kind).distinct()
            .join(GraphNode, (GraphNode.kind == GraphEdge.kind) & (GraphNode.value_hash == GraphEdge.value_hash))
            .where(in_list(GraphEdge.account_id, "ids"), GraphEdge.kind.in_(sorted(WEAK - {known})),
                   GraphNode.accounts > 1, GraphNode.super_node.is_(False)))
_CLUSTERS_OF = (select(ClusterMember.account_id, ClusterMember.cluster_id, Cluster.size)
                .join(Cluster, Cluster.id == ClusterMember.cluster_id)
                .where(in_list(ClusterMember.account_id, "ids")))


def link_many(session: Session, policy: Policy, fresh: dict[str, dict[Node, datetime]]) -> list[str]:
    """Link a batch of accounts' nodes, each new to its account (account -> node -> first time;
    none a super-node as read), in the caller's transaction, the accounts locked by it: the
    accounts whose cluster changed, or that a new node links by more than shared work.

    Every node is counted and its edges added in one statement for the whole batch (its node
    rows locked in sorted order, as attach locks them: no deadlock), and a node that crossed its
    threshold turns super once for the batch. An account is then linked one by one (attach) only
    when it can be linked to anyone: it shares a strong node, or weak nodes of enough kinds,
    counting the nodes it held before (read after the count, which waited for any concurrent
    transaction on the same nodes: what it committed is seen). An account that shares nothing,
    or only one weak kind (a popular template, its office network), is counted and done: most of
    a gateway's batch.
    """
    rows = sorted((node, account_id, at) for account_id, nodes in fresh.items() for node, at in nodes.items())
    if not rows:
        return []
    counted = count_nodes_and_edges(session, rows)
    counts = {(k, h): accounts for k, h, accounts in counted}
    turned = sorted(node for node, accounts in counts.items() if policy.is_super(node[0], accounts))
    changed: set[str] = set()
    if turned:
        # Once per node ever: a split may move any of the batch's accounts.
        ids = sorted(fresh)
        before = _clusters_of(session, ids)
        _make_super(session, policy, turned)
        after = _clusters_of(session, ids)
        changed = {a for a in ids if before.get(a) != after.get(a)}
        for node in turned:
            del counts[node]
    shared = {a: {node[0] for node in nodes if counts.get(node, 0) > 1} for a, nodes in fresh.items()}
    # Each shares one weak kind (no strong one, fewer weak kinds than may link): it links if it
    # holds a node of another weak kind that someone else holds too.
    one_weak: dict[str, list[str]] = defaultdict(list)
    for a, kinds in sorted(shared.items()):
        if kinds and not may_link(kinds):
            (kind,) = kinds
            one_weak[kind].append(a)
    for known, accounts in sorted(one_weak.items()):
        for part in chunks(accounts, 5000):
            for account_id, kind in session.execute(_shared_weak_kinds(known), {"ids": part}):
                shared[account_id].add(kind)
    linking = sorted(a for a, kinds in shared.items() if may_link(kinds))
    if not linking:
        return sorted(changed)
    before = _clusters_of(session, linking)
    for account_id in linking:
        # Its new nodes are held now: attach links it through every node it holds.
        attached = attach(session, policy, account_id, min(fresh[account_id].values()), identifiers=())
        # Its cluster changed; or a new node of its own links it by more than shared work (an API
        # key it shares), which may change what links it to a cluster it was in already
        # (linked_by_work_only). Not the kinds it held before: those linked it already.
        if ((attached.cluster.id, attached.cluster.size) != before.get(account_id)
                or may_link({node[0] for node in fresh[account_id] if counts.get(node, 0) > 1} - SHARED_WORK)):
            changed.add(account_id)
    return sorted(changed)


def _clusters_of(session: Session, ids: list[str]) -> dict[str, tuple[str, int]]:
    return {a: (c, n) for part in chunks(ids, 5000) for a, c, n in session.execute(_CLUSTERS_OF, {"ids": part})}


def merge(session: Session, policy: Policy, cluster_ids: Iterable[str], at: datetime,
          exclude: ClusterMember | None = None, *, joining: Cluster | None = None,
          linked: Iterable[str] = ()) -> tuple[Cluster, int]:
    """Merge clusters into the largest one (union by size); members whose cluster rose are queued.
    Returns the merged cluster and its growth up to `at` (the evaluation's time), read with the
    clusters' locks (see Attachment).

    `exclude`: the membership of the account being scored, which is not queued (a cluster of one
    holding only it queues nobody, without reading its members). `joining`: that account's new
    cluster of one, when neither is written yet. When another cluster absorbs it, the member is
    written straight into that cluster and the new cluster never is (no insert, move and delete
    of a row that lives a few milliseconds). `linked`: the accounts whose clusters `cluster_ids`
    are, as read before their locks: a cluster a concurrent merge removed meanwhile is followed
    to where those accounts are now (before, they were silently left out: a lost link).
    """
    new_cluster = joining
    new_member = exclude if joining is not None else None
    stored = sorted(set(cluster_ids) - ({new_cluster.id} if new_cluster else set()))
    if new_cluster is not None and len(stored) == 1:
        absorbed = _absorb(session, policy, stored[0], new_member, new_cluster, at)
        if absorbed is not None:
            return absorbed
    if new_member is not None:
        _attach(session, new_member, new_cluster)
    c = Cluster.__table__.c
    followed = sorted(set(linked) | ({exclude.account_id} if exclude is not None and new_cluster is None else set()))
    for _ in range(MERGE_ATTEMPTS):
        locked = [locked_with_growth(session, row) for row in session.execute(
            select(*c, growth_column(c.id)).where(c.id.in_(stored)).order_by(c.id).with_for_update(),
            growth_window(at)).mappings()]
        if len(locked) == len(stored) or not followed:
            break
        # A merge that committed after the clusters were read moved their members and deleted
        # them: read (after the locks, so what it committed is seen) where the accounts are now.
        now = {a: cluster_id for a, (cluster_id, _) in _clusters_of(session, followed).items()}
        if exclude is not None and exclude.account_id in now:
            set_committed_value(exclude, "cluster_id", now[exclude.account_id])    # moved with its cluster
        stored = sorted(set(now.values()) - ({new_cluster.id} if new_cluster else set()))
    clusters = [cluster for cluster, _ in locked]
    # The merged cluster grew by what each of them did (a member not written yet: see cluster_facts).
    grown = min(GROWTH_CAP, sum(g for _, g in locked))
    if new_cluster is not None:
        clusters.append(new_cluster)
    # The largest absorbs the others (union by size: an account moves O(log n) times); ties: the oldest.
    target = min(clusters, key=lambda c: (-c.size, c.first_seen_at, c.id))
    before = {c.id: policy.bucket(c) for c in clusters}
    others = [c for c in clusters if c is not target]
    store(session, target, {"size": sum(c.size for c in clusters),
                             "first_seen_at": min(c.first_seen_at for c in clusters),
                             **{flag: sum(getattr(c, flag) for c in clusters) for flag in MEMBER_FLAGS}})
    after = policy.bucket(target)
    excluded = exclude.account_id if exclude is not None else ""
    for other in others:
        # A cluster of one holding the excluded account (the new one, say): nobody to queue.
        alone = other.size == 1 and exclude is not None and other.id == exclude.cluster_id
        if not alone and rose(before[other.id], after):
            moved = session.execute(select(ClusterMember.account_id).where(
                ClusterMember.cluster_id == other.id, ClusterMember.account_id != excluded)).scalars()
            after_commit(session).ask_rescore(accounts=moved)
    if rose(before[target.id], after):
        after_commit(session).ask_rescore(clusters=[target.id])
    moved_ids = [c.id for c in others if c is not new_cluster]
    # Membership rows only (an account's cluster is its membership): a merge never waits on the
    # row lock of a member being scored at the same time (deadlock).
    if moved_ids:
        # Written without waiting for answers (see store), and the members the session holds
        # told where they are now: the account being scored updates its traits in the target
        # without locking it again (locked_cluster).
        sql = statements(session)
        session.execute(sql.move_members, {"target": target.id, "moved": moved_ids})
        session.execute(sql.delete_clusters, {"moved": moved_ids})
        moved = set(moved_ids)
        for held in list(session.identity_map.values()):
            if isinstance(held, ClusterMember) and inspect(held).dict.get("cluster_id") in moved:
                set_committed_value(held, "cluster_id", target.id)
    for other in others:
        if other is new_cluster:
            new_member.cluster_id = target.id
        session.expunge(other)
    return target, grown


def _absorb(session: Session, policy: Policy, cluster_id: str, new_member: ClusterMember,
            new_cluster: Cluster, at: datetime) -> tuple[Cluster, int] | None:
    """A new account joining one stored cluster (the common merge): the stored cluster keeps its
    id whatever its size, its counters rise by the new member's in one statement, and the new
    cluster of one is never written. None: a concurrent merge removed that cluster meanwhile."""
    added = {flag: getattr(new_cluster, flag) for flag in MEMBER_FLAGS}
    row = session.execute(statements(session).absorb, {"cluster": cluster_id, "first": new_cluster.first_seen_at,
                                                  **growth_window(at), **added}).mappings().one_or_none()
    if row is None:
        return None
    target, grown = locked_with_growth(session, row)
    before = SimpleNamespace(size=target.size - 1, blocked=target.blocked - added["blocked"],
                             labeled_fraud=target.labeled_fraud - added["labeled_fraud"])
    if rose(policy.bucket(before), policy.bucket(target)):
        after_commit(session).ask_rescore(clusters=[target.id])
    new_member.cluster_id = target.id          # written by write_new, as for a cluster of one
    if new_cluster in session:
        session.expunge(new_cluster)
    return target, grown


def _make_super(session: Session, policy: Policy, nodes: list[Node]) -> None:
    """Nodes that crossed their threshold stop linking: drop their edges, split what they held."""
    condition = tuple_(GraphEdge.kind, GraphEdge.value_hash).in_(nodes)
    # A cluster of one cannot split: only larger ones are computed again. (A popular template
    # turns super held by dozens of accounts that it never linked, each alone in its cluster.)
    holders = sorted(set(session.scalars(select(GraphEdge.account_id).where(condition))))
    affected = {cluster_id for cluster_id, size in _clusters_of(session, holders).values() if size > 1}
    session.execute(update(GraphNode).where(tuple_(GraphNode.kind, GraphNode.value_hash).in_(nodes))
                    .values(super_node=True))
    session.execute(delete(GraphEdge).where(condition))
    session.flush()
    recluster(session, policy, affected, holders=holders)


def recluster(session: Session, policy: Policy, cluster_ids: Iterable[str], *, holders: Iterable[str] = ()) -> None:
    """Recompute the components of some clusters from their members' edges (a cluster can only split).
    `holders`: accounts whose clusters these are, as read before the locks: a merge that committed
    meanwhile may have moved them into another cluster, which is then split too."""
    wanted, locked, holders = set(cluster_ids), set(), sorted(set(holders))
    for _ in range(MERGE_ATTEMPTS):
        more = sorted(wanted - locked)
        if not more:
            break
        # The clusters before their members, in id order, as merge() and rescore chunks lock them:
        # transactions never wait on each other in a circle.
        session.execute(select(Cluster.id).where(Cluster.id.in_(more)).order_by(Cluster.id).with_for_update())
        locked.update(more)
        wanted |= {cluster_id for cluster_id, size in _clusters_of(session, holders).values() if size > 1}
    if not locked:
        return
    cluster_ids = sorted(locked)
    in_clusters = ClusterMember.cluster_id.in_(cluster_ids)
    current = dict(session.execute(select(ClusterMember.account_id, ClusterMember.cluster_id).where(in_clusters)).all())
    edges = session.execute(
        select(GraphEdge.kind, GraphEdge.value_hash, GraphEdge.account_id)
        .join(ClusterMember, ClusterMember.account_id == GraphEdge.account_id).where(in_clusters))
    uf = components((((kind, h), a) for kind, h, a in edges), current)
    if _assign(session, uf.groups().values(), current):
        # A split: every member's cluster facts changed (its size, who is blocked or labelled in
        # it), those who stayed as much as those who moved.
        after_commit(session).ask_rescore(accounts=sorted(current))


def _assign(session: Session, groups: Iterable[list[str]], current: dict[str, str]) -> dict[str, str]:
    """Give each group of accounts a cluster, keeping ids where a group keeps most of a cluster,
    and recompute counters from the members' flags; the accounts moved, to their new cluster."""
    claimed: set[str] = set()
    changed: dict[str, str] = {}
    touched: set[str] = set(current.values())
    for group, cluster_id in keep_ids(groups, current, claimed):
        if cluster_id is None:
            first = session.execute(select(func.min(ClusterMember.joined_at))
                                    .where(ClusterMember.account_id.in_(group[:1]))).scalar()
            cluster_id = add_cluster(session, first).id
        touched.add(cluster_id)
        for account in group:
            if current.get(account) != cluster_id:
                changed[account] = cluster_id
    session.flush()
    by_target: dict[str, list[str]] = defaultdict(list)
    for account, cluster_id in changed.items():
        by_target[cluster_id].append(account)
    for cluster_id, accounts in by_target.items():
        for chunk in chunks(accounts, 5000):
            session.execute(update(ClusterMember).where(ClusterMember.account_id.in_(chunk)).values(cluster_id=cluster_id))
    _recount(session, touched)
    return changed


def _recount(session: Session, cluster_ids: set[str]) -> None:
    for chunk in chunks(sorted(cluster_ids), 5000):
        stats = {row[0]: row[1:] for row in session.execute(
            select(ClusterMember.cluster_id, func.count(), func.min(ClusterMember.joined_at),
                   *(func.sum(cast(getattr(ClusterMember, f), Integer)) for f in MEMBER_FLAGS))
            .where(ClusterMember.cluster_id.in_(chunk)).group_by(ClusterMember.cluster_id))}
        for cluster in session.execute(select(Cluster).where(Cluster.id.in_(chunk))
                                       .execution_options(populate_existing=True)).scalars():
            row = stats.get(cluster.id)
            if row is None:
                session.delete(cluster)
                continue
            cluster.size, cluster.first_seen_at = row[0], row[1]
            for flag, value in zip(MEMBER_FLAGS, row[2:]):
                setattr(cluster, flag, int(value or 0))
    session.flush()


