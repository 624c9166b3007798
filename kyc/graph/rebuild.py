"""Rebuilding the graph from the recorded sightings (`kyc clusters rebuild`): the same nodes,
edges and clusters incremental linking gives, computed set-based in the database.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone

from sqlalchemy import (Boolean, Column, Integer, MetaData, Select, String, Table, and_, case, cast, exists, func,
                        literal, or_, select)
from sqlalchemy.orm import Session

from kyc.db import write_lock
from kyc.graph.core import LINK_KINDS, STRONG, WEAK, WEAK_KINDS_NEEDED, Policy, UnionFind, keep_ids
from kyc.ids import new_ids
from kyc.models import MEMBER_FLAGS, Cluster, ClusterMember, GraphEdge, GraphNode, Sighting, UTCDateTime
from kyc.persist import (analyze, bulk_settings, create_temporary, group_list, indexes_built_after, load_rows,
                         lock_against_writes, postgres, sorted_aggregates)

log = logging.getLogger("kyc.graph")


def rebuild(session: Session, policy: Policy) -> dict[str, int]:
    """Recompute nodes, edges and clusters from the sightings; gives what incremental linking gives.

    Set-based: the database computes nodes, edges and the groups of accounts that link (the
    holders of a shared strong node; of shared weak nodes of enough kinds); Python holds only a
    union-find of the linked accounts and streams the memberships once; what changes is
    written back in bulk (on a built graph, little). Runs in the caller's transaction, so a
    rebuild that dies leaves nothing half-written. On PostgreSQL the graph tables are locked
    against writes, which makes signups linking meanwhile wait for the commit instead of
    racing the rebuild.
    """
    # SQLite: take the write lock before the first read. A read transaction that later writes
    # while another connection writes (the in-process rescoring thread) gets "database is
    # locked" at once, without the busy wait.
    write_lock(session)
    session.flush()
    bulk_settings(session)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name], clock = round(now - clock, 2), now

    _rebuild_nodes_and_edges(session, policy)
    lap("nodes_edges")
    uf = _link_pairs(session)
    lap("pairs")
    moves, added = _rebuild_assignment(session, uf)
    del uf
    lap("assign")
    if _first_clustering(session):
        _load_memberships(session, moves)      # the clusters counted with them
        lap("write")
    else:
        _write_memberships(session, moves)
        lap("write")
        _recount_all(session)
        lap("recount")
    log.info("graph rebuilt: %s", ", ".join(f"{k} {v}s" for k, v in timings.items()))
    return {"nodes": session.scalar(select(func.count()).select_from(GraphNode)),
            "edges": session.scalar(select(func.count()).select_from(GraphEdge)),
            "super_nodes": session.scalar(select(func.count()).select_from(GraphNode).where(GraphNode.super_node)),
            "clusters": session.scalar(select(func.count()).select_from(Cluster)),
            "members_added": added, "members_moved": len(moves) - added}


_HELD = Table("rebuild_held", MetaData(), Column("kind", String(32)), Column("value_hash", String(32)),
              Column("account_id", String(128)), Column("first", UTCDateTime), prefixes=["TEMPORARY"])


def _rebuild_nodes_and_edges(session: Session, policy: Policy) -> None:
    """Who holds each linking identifier, first seen when, computed once from the sightings into
    a temporary table (one scan of the sightings and one aggregate); nodes are its groups
    (distinct holders by construction: no count(distinct) sort), edges its rows minus the
    super-nodes'. Each table is then made to hold exactly those rows (`_replace`)."""
    s, n, e, held = Sighting.__table__, GraphNode.__table__, GraphEdge.__table__, _HELD
    connection = session.connection()
    lock_against_writes(connection, n, e)
    keys = (s.c.kind, s.c.value_hash, s.c.account_id)
    holding = (select(*keys, func.min(s.c.occurred_at).label("first")).where(s.c.kind.in_(sorted(LINK_KINDS)))
               .group_by(*keys).order_by(*keys))
    # Sorted rather than hashed: the holders come out in the order of the edges' primary key,
    # so the nodes are counted from them without another sort, and both tables are loaded in
    # the order of their primary keys, whose builds then find their input sorted.
    with sorted_aggregates(connection):
        create_temporary(connection, held, holding)
        analyze(connection, held)
        holders = func.count()
        threshold = case((held.c.kind.in_(sorted(STRONG)), policy.super_strong), else_=policy.super_weak)
        _replace(session, n, select(held.c.kind, held.c.value_hash, holders.label("accounts"),
                                    (holders > threshold).label("super_node"),
                                    func.min(held.c.first).label("first_seen_at"))
                 .group_by(held.c.kind, held.c.value_hash).order_by(held.c.kind, held.c.value_hash))
    # The held rows in their order: the anti join hashes the few super-nodes and keeps it.
    _replace(session, e, select(held.c.kind, held.c.value_hash, held.c.account_id).where(~exists().where(
        n.c.super_node, n.c.kind == held.c.kind, n.c.value_hash == held.c.value_hash)))
    held.drop(connection)


def _replace(session: Session, table: Table, wanted: Select) -> None:
    """Make `table` hold exactly the rows `wanted` selects (its columns named as the table's).

    An empty table is loaded (on PostgreSQL without its indexes, built afterwards). On a built
    graph PostgreSQL writes only the rows that differ: one hash full join of the wanted rows
    with the stored ones finds them, which costs a fraction of rewriting millions of rows and
    rebuilding their indexes (string sorts). SQLite rewrites the table.
    """
    connection = session.connection()
    columns = list(wanted.selected_columns.keys())
    empty = connection.scalar(select(literal(1)).select_from(table).limit(1)) is None
    if empty or not postgres(connection):
        if not empty:
            connection.execute(table.delete())
        with indexes_built_after(connection, table):
            connection.execute(table.insert().from_select(columns, wanted))
        analyze(connection, table)
        return
    w = wanted.subquery("wanted")
    keys = [c.name for c in table.primary_key.columns]
    values = [name for name in columns if name not in keys]
    changes = Table(f"rebuild_{table.name}_changes", MetaData(), *(Column(name, table.c[name].type) for name in columns),
                    Column("stored", Boolean), Column("gone", Boolean), prefixes=["TEMPORARY"])
    changes.create(connection)
    wanted_key, stored_key = w.c[keys[0]], table.c[keys[0]]
    connection.execute(changes.insert().from_select(
        [*columns, "stored", "gone"],
        select(*(func.coalesce(w.c[k], table.c[k]) for k in keys), *(w.c[v] for v in values),
               stored_key.is_not(None), wanted_key.is_(None))
        .select_from(w.outerjoin(table, and_(*(table.c[k] == w.c[k] for k in keys)), full=True))
        .where(or_(wanted_key.is_(None), stored_key.is_(None), *(w.c[v].is_distinct_from(table.c[v]) for v in values)))))
    same_key = and_(*(table.c[k] == changes.c[k] for k in keys))
    connection.execute(table.delete().where(exists().where(same_key, changes.c.gone)))
    if values:
        connection.execute(table.update().where(same_key, changes.c.stored, ~changes.c.gone)
                           .values({v: changes.c[v] for v in values}))
    connection.execute(table.insert().from_select(columns, select(*(changes.c[c] for c in columns))
                                                  .where(~changes.c.stored)))
    changes.drop(connection)


_SHARED = Table("rebuild_shared", MetaData(), Column("kind", String(32)), Column("value_hash", String(32)),
                Column("account_id", String(128)), prefixes=["TEMPORARY"])


def _link_pairs(session: Session) -> UnionFind:
    """Union-find of the accounts that link to another one, from groups the database finds.

    The edges of shared nodes (held by more than one account, not super) are copied once. A
    strong node's holders are one group. Two accounts that share weak nodes of
    WEAK_KINDS_NEEDED kinds both hold the same combination of that many weak nodes of distinct
    kinds, so each combination held by more than one account is a group too: the database
    groups each account's combinations (a few per account) and never forms pairs of accounts.
    Fetched whole rather than through a server-side cursor, which PostgreSQL plans for its
    first rows and never runs in parallel.
    """
    n, e, shared = GraphNode.__table__, GraphEdge.__table__, _SHARED
    connection = session.connection()
    shared.create(connection)
    connection.execute(shared.insert().from_select(
        ["kind", "value_hash", "account_id"],
        select(e.c.kind, e.c.value_hash, e.c.account_id)
        .join(n, (n.c.kind == e.c.kind) & (n.c.value_hash == e.c.value_hash))
        .where(n.c.accounts > 1, n.c.super_node.is_(False))))
    analyze(connection, shared)
    holders, as_list = group_list(connection)           # each group's accounts, in one row
    weak = [shared.alias(f"w{i}") for i in range(WEAK_KINDS_NEEDED)]
    combinations = select(holders(weak[0].c.account_id)).where(*(w.c.kind.in_(sorted(WEAK)) for w in weak))
    for before, after in zip(weak, weak[1:]):
        combinations = combinations.join(after, (after.c.account_id == before.c.account_id)
                                         & (after.c.kind > before.c.kind))
    groups = [select(holders(shared.c.account_id)).where(shared.c.kind.in_(sorted(STRONG)))
              .group_by(shared.c.kind, shared.c.value_hash),
              combinations.group_by(*(c for w in weak for c in (w.c.kind, w.c.value_hash))).having(func.count() > 1)]
    uf = UnionFind()
    for group in groups:
        for (accounts,) in connection.execute(group):
            accounts = as_list(accounts)
            first = accounts[0]
            uf.add(first)
            for other in accounts[1:]:
                uf.add(other)
                uf.union(first, other)
    shared.drop(connection)
    return uf


def _rebuild_assignment(session: Session, uf: UnionFind) -> tuple[list[tuple[str, str, datetime | None]], int]:
    """(account, cluster, joined_at) for every membership that changes (joined_at None) or is
    new (an account sighted before the graph existed: joined at its first sighting), and how
    many are new. One pass over the memberships: linked accounts' clusters go to `keep_ids`;
    a lone account keeps its cluster unless a group claimed it or another lone account of the
    same old cluster kept it first."""
    fresh = _cluster_ids()
    current: dict[str, str] = {}
    lone: dict[str, str] = {}                  # old cluster -> the lone account keeping it
    moves: list[tuple[str, str, datetime | None]] = []
    m, s = ClusterMember.__table__, Sighting.__table__
    for account, cluster_id in session.execute(select(m.c.account_id, m.c.cluster_id)
                                               .order_by(m.c.account_id).execution_options(yield_per=20_000)):
        if account in uf.parent:
            current[account] = cluster_id
        elif cluster_id not in lone:
            lone[cluster_id] = account
        else:
            moves.append((account, next(fresh), None))
    joined: dict[str, datetime] = {}
    for account, first in session.execute(
            select(s.c.account_id, func.min(s.c.occurred_at)).where(~exists().where(m.c.account_id == s.c.account_id))
            .group_by(s.c.account_id).execution_options(yield_per=20_000)):
        if account in uf.parent:
            joined[account] = first
        else:
            moves.append((account, next(fresh), first))
    added = len(joined) + sum(1 for move in moves if move[2] is not None)
    claimed: set[str] = set()
    for group, cluster_id in keep_ids(uf.groups().values(), current, claimed):
        cluster_id = cluster_id or next(fresh)
        moves.extend((account, cluster_id, joined.get(account)) for account in group
                     if current.get(account) != cluster_id)
    moves.extend((lone[cid], next(fresh), None) for cid in claimed if cid in lone)
    return moves, added


def _cluster_ids():
    """New cluster ids without end, made by the thousand (a first rebuild makes one per lone account)."""
    while True:
        yield from new_ids("cl", 10_000)


_MOVES = Table("rebuild_moves", MetaData(), Column("account_id", String(128), primary_key=True),
               Column("cluster_id", String(40)), Column("joined_at", UTCDateTime, nullable=True),
               prefixes=["TEMPORARY"])


def _write_memberships(session: Session, moves: list[tuple[str, str, datetime | None]]) -> None:
    """Memberships moved and added in bulk, through a temporary table (kyc.persist.load_rows)."""
    if not moves:
        return
    connection = session.connection()
    _MOVES.create(connection)
    load_rows(connection, _MOVES, ("account_id", "cluster_id", "joined_at"), moves)
    analyze(connection, _MOVES)
    m = ClusterMember.__table__
    connection.execute(m.update().where(m.c.account_id == _MOVES.c.account_id, _MOVES.c.joined_at.is_(None))
                       .values(cluster_id=_MOVES.c.cluster_id))
    connection.execute(m.insert().from_select(
        ["account_id", "cluster_id", "joined_at", *MEMBER_FLAGS],
        select(_MOVES.c.account_id, _MOVES.c.cluster_id, _MOVES.c.joined_at, *(literal(False) for _ in MEMBER_FLAGS))
        .where(_MOVES.c.joined_at.is_not(None))))
    _MOVES.drop(connection)
    analyze(connection, m)


_COUNTERS = Table("rebuild_counters", MetaData(), Column("id", String(40), primary_key=True), Column("size", Integer),
                  Column("first", UTCDateTime), *(Column(flag, Integer) for flag in MEMBER_FLAGS),
                  Column("known", Boolean), prefixes=["TEMPORARY"])


def _recount_all(session: Session) -> None:
    """Every cluster's counters from its members: empty clusters deleted, changed ones updated,
    new ones inserted. The counters are computed once into a temporary table, which also says
    which clusters exist already (an insert that looked that up in the table it fills could be
    planned as a scan per row)."""
    c, m, t = Cluster.__table__, ClusterMember.__table__, _COUNTERS
    connection = session.connection()
    t.create(connection)
    counters = select(m.c.cluster_id.label("id"), func.count().label("size"), func.min(m.c.joined_at).label("first"),
                      *(func.sum(cast(m.c[f], Integer)).label(f) for f in MEMBER_FLAGS)
                      ).group_by(m.c.cluster_id).subquery()
    connection.execute(t.insert().from_select(
        ["id", "size", "first", *MEMBER_FLAGS, "known"],
        select(*counters.c, c.c.id.is_not(None)).select_from(counters.outerjoin(c, c.c.id == counters.c.id))))
    analyze(connection, t)
    connection.execute(c.delete().where(~exists().where(m.c.cluster_id == c.c.id)))
    connection.execute(c.update().where(c.c.id == t.c.id, t.c.known, or_(
        c.c.size != t.c.size, c.c.first_seen_at != t.c.first, *(c.c[f] != t.c[f] for f in MEMBER_FLAGS))).values(
        size=t.c.size, first_seen_at=t.c.first, **{f: t.c[f] for f in MEMBER_FLAGS}))
    now = datetime.now(timezone.utc)
    connection.execute(c.insert().from_select(
        ["id", "size", "first_seen_at", "created_at", "updated_at", *MEMBER_FLAGS],
        select(t.c.id, t.c.size, t.c.first, literal(now, UTCDateTime), literal(now, UTCDateTime),
               *(t.c[f] for f in MEMBER_FLAGS)).where(t.c.known.is_(False))))
    t.drop(connection)


def _first_clustering(session: Session) -> bool:
    """PostgreSQL, no membership and no cluster yet (a first rebuild): they can be loaded
    rather than diffed. Then locked against writes and looked at again, so none appears
    meanwhile (a built graph's tables are not locked)."""
    connection = session.connection()
    if not postgres(connection):
        return False
    m, c = ClusterMember.__table__, Cluster.__table__

    def empty() -> bool:
        return all(connection.scalar(select(literal(1)).select_from(t).limit(1)) is None for t in (m, c))

    if not empty():
        return False
    lock_against_writes(connection, c, m)
    return empty()


def _load_memberships(session: Session, moves: list[tuple[str, str, datetime | None]]) -> None:
    """A first rebuild: every membership is new, so the memberships are loaded in bulk into the
    empty table (kyc.persist.load_rows) and the clusters counted from them by one aggregate into
    the other, both without their indexes (built afterwards, kyc.persist.indexes_built_after).
    A new member carries no traits: a cluster's size and earliest join are all there is to count."""
    m, c = ClusterMember.__table__, Cluster.__table__
    connection = session.connection()
    traits = (False,) * len(MEMBER_FLAGS)
    with indexes_built_after(connection, m), indexes_built_after(connection, c):
        load_rows(connection, m, ("account_id", "cluster_id", "joined_at", *MEMBER_FLAGS),
                  ((account, cluster_id, joined, *traits) for account, cluster_id, joined in moves))
        now = literal(datetime.now(timezone.utc), UTCDateTime)
        connection.execute(c.insert().from_select(
            ["id", "size", "first_seen_at", "created_at", "updated_at", *MEMBER_FLAGS],
            select(m.c.cluster_id, func.count(), func.min(m.c.joined_at), now, now, *(literal(0) for _ in MEMBER_FLAGS))
            .group_by(m.c.cluster_id)))
    analyze(connection, m, c)


