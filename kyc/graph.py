"""The identity graph: accounts linked by the identifiers they share, clustered with union-find.

Identifiers are keyed hashes taken from the sightings an evaluation records:
- strong (device id, canonical mailbox, phone number, card fingerprint): one shared strong
  identifier links two accounts;
- weak (IP /24 or /64 within a day, email template + domain, phone range, BIN + billing
  postal code): two accounts link when they share weak identifiers of WEAK_KINDS_NEEDED
  different kinds.
An identifier held by more accounts than its threshold is a super-node (a carrier NAT, a
university network, "first.last99@gmail.com"): it links nothing and keeps no edges; velocity
still counts it. Clusters are the connected components of what is left, so they do not depend
on the order accounts arrive in: linking one evaluation at a time (`link`) and `rebuild` give
the same clusters. When an identifier turns into a super-node, the clusters it held together
are recomputed (`recluster`), which can split them.

Every account evaluated with identifiers has a cluster (size 1 when alone). A cluster keeps
counters of its members' traits (blocked, labeled fraud, disposable email, VoIP phone, hosting
IP, headless browser) so graph signals cost one row read.
"""

from __future__ import annotations

import json
import logging
import time
from bisect import bisect_right
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from types import SimpleNamespace
from typing import Hashable, Iterable

from sqlalchemy import (Boolean, Column, Integer, MetaData, Select, String, Table, and_, bindparam, case, cast, delete,
                        exists, func, insert, inspect, literal, null, or_, select, text, tuple_, update)
from sqlalchemy.dialects.postgresql import ARRAY, insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, aliased, make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.sql.elements import Label

from kyc.db import deferred
from kyc.ids import new_id, new_ids
from kyc.models import MEMBER_FLAGS, Account, Cluster, ClusterMember, GraphEdge, GraphNode, Sighting, UTCDateTime

STRONG = frozenset({"device", "email", "phone", "card_fingerprint"})
WEAK = frozenset({"ip_prefix_day", "email_template", "phone_range", "card_bin_postal"})
LINK_KINDS = STRONG | WEAK
WEAK_KINDS_NEEDED = 2
GROWTH_CAP = 10_000          # members counted by graph.cluster_growth_24h (bounded index scan)
GROWTH_SPAN = timedelta(hours=24)
_GROWTH = "kyc.growth"        # session.info: cluster id -> (at, growth over GROWTH_SPAN) read with its lock

Node = tuple[str, str]       # (kind, keyed hash)

log = logging.getLogger("kyc.graph")


@dataclass(frozen=True)
class Policy:
    super_strong: int = 200
    super_weak: int = 50
    rescore_sizes: tuple[int, ...] = (5, 20, 100, 500)

    @classmethod
    def from_config(cls, config) -> "Policy":
        return cls(config.graph_super_node_strong, config.graph_super_node_weak, config.graph_rescore_sizes)

    def is_super(self, kind: str, accounts: int) -> bool:
        return accounts > (self.super_strong if kind in STRONG else self.super_weak)

    def bucket(self, cluster: Cluster) -> tuple[int, bool, bool]:
        """What makes members' scores stale when it rises: a size step, a first block, a first fraud label."""
        step = sum(1 for s in self.rescore_sizes if cluster.size >= s)
        return step, cluster.blocked > 0, cluster.labeled_fraud > 0


# --- the pure core, shared by incremental linking, rebuild and the benchmark ------------------

class UnionFind:
    def __init__(self) -> None:
        self.parent: dict[Hashable, Hashable] = {}
        self.size: dict[Hashable, int] = {}

    def add(self, x: Hashable) -> None:
        if x not in self.parent:
            self.parent[x] = x
            self.size[x] = 1

    def find(self, x: Hashable) -> Hashable:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]      # path halving
            x = parent[x]
        return x

    def union(self, a: Hashable, b: Hashable) -> Hashable:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size.pop(rb)
        return ra

    def groups(self) -> dict[Hashable, list[Hashable]]:
        out: dict[Hashable, list[Hashable]] = defaultdict(list)
        for x in self.parent:
            out[self.find(x)].append(x)
        return out


def linked_accounts(account: Hashable, members: dict[Node, list[Hashable]]) -> set[Hashable]:
    """Accounts an account links to, given the members of each (non-super) node it holds."""
    linked: set[Hashable] = set()
    weak_kinds: dict[Hashable, set[str]] = defaultdict(set)
    for (kind, _), accounts in members.items():
        if kind in STRONG:
            linked.update(a for a in accounts if a != account)
        else:
            for a in accounts:
                if a != account:
                    weak_kinds[a].add(kind)
    linked.update(a for a, kinds in weak_kinds.items() if len(kinds) >= WEAK_KINDS_NEEDED)
    return linked


def components(edges: Iterable[tuple[Node, Hashable]], accounts: Iterable[Hashable] = ()) -> UnionFind:
    """Clusters of accounts from (node, account) edges of non-super nodes."""
    members: dict[Node, list[Hashable]] = defaultdict(list)
    uf = UnionFind()
    for account in accounts:
        uf.add(account)
    for node, account in edges:
        members[node].append(account)
        uf.add(account)
    weak_nodes: dict[Hashable, list[Node]] = defaultdict(list)
    for node, accounts_on in members.items():
        if node[0] in STRONG:
            first = accounts_on[0]
            for other in accounts_on[1:]:
                uf.union(first, other)
        else:
            for account in accounts_on:
                weak_nodes[account].append(node)
    for account, nodes in weak_nodes.items():
        if len({kind for kind, _ in nodes}) < WEAK_KINDS_NEEDED:
            continue
        for other in linked_accounts(account, {n: members[n] for n in nodes}):
            uf.union(account, other)
    return uf


# --- database-backed operations (inside the caller's transaction) -----------------------------

@lru_cache(maxsize=4)
def _statements(dialect: str) -> SimpleNamespace:
    """The statements of the hot path, built once: building a statement costs more than running it."""
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    count = insert(GraphNode.__table__)
    c = Cluster.__table__.c
    mine = select(GraphEdge.kind, GraphEdge.value_hash).where(GraphEdge.account_id == bindparam("account"))
    member_cluster = (select(ClusterMember.cluster_id).where(ClusterMember.account_id == bindparam("account"))
                      .scalar_subquery())
    return SimpleNamespace(
        dialect=dialect,
        # Sorted rows: concurrent transactions lock node rows in the same order (no deadlock), and
        # the row lock makes a concurrent account on the same node wait, then see this one's edge.
        count=count.on_conflict_do_update(index_elements=["kind", "value_hash"],
                                          set_={"accounts": GraphNode.__table__.c.accounts + 1},
                                          # A super-node counts no more accounts and links nothing: no row
                                          # comes back for it, so no edge is written.
                                          where=GraphNode.__table__.c.super_node.is_(False))
        .returning(GraphNode.__table__.c.kind, GraphNode.__table__.c.value_hash, GraphNode.__table__.c.accounts),
        edge=insert(GraphEdge.__table__).on_conflict_do_nothing(),
        # The other holders of the account's nodes, each with its cluster: one read.
        members=select(GraphEdge.kind, GraphEdge.value_hash, GraphEdge.account_id, ClusterMember.cluster_id)
        .outerjoin(ClusterMember, ClusterMember.account_id == GraphEdge.account_id)
        .where(tuple_(GraphEdge.kind, GraphEdge.value_hash).in_(mine)),
        # A stored cluster absorbing a new account's cluster of one: its row updated and read in
        # one statement (the update takes the row lock a merge needs).
        # (Core, its row put in the session by _loaded: the ORM's UPDATE ... RETURNING cost 0.5 ms more.)
        absorb=update(Cluster.__table__).where(c.id == bindparam("cluster")).values(
            size=c.size + 1,
            first_seen_at=case((c.first_seen_at > bindparam("first"), bindparam("first")), else_=c.first_seen_at),
            **{flag: c[flag] + bindparam(flag) for flag in MEMBER_FLAGS})
        .returning(*c, _growth_of(c.id)),
        move_members=deferred(update(ClusterMember.__table__)
                              .where(ClusterMember.cluster_id.in_(bindparam("moved", expanding=True)))
                              .values(cluster_id=bindparam("target"))),
        delete_clusters=deferred(delete(Cluster.__table__).where(c.id.in_(bindparam("moved", expanding=True)))),
        lock_cluster=select(*c).where(c.id == member_cluster).with_for_update(),
        lock_cluster_growth=select(*c, _growth_of(c.id)).where(c.id == member_cluster).with_for_update(),
        growth=select(_growth_of(bindparam("cluster"))),
    )


def _growth_of(cluster_id) -> Label:
    """Members of a cluster whose first event lies in (since, at], up to GROWTH_CAP (a bounded
    index scan), as a column: the statements that lock a cluster for scoring read it too, so
    graph.cluster_growth_24h costs no round trip of its own (see growth)."""
    window = (ClusterMember.cluster_id == cluster_id, ClusterMember.joined_at > bindparam("since"),
              ClusterMember.joined_at <= bindparam("at"))
    full = select(ClusterMember.account_id).where(*window).offset(GROWTH_CAP - 1).limit(1).exists()
    return case((full, GROWTH_CAP), else_=select(func.count()).where(*window).scalar_subquery()).label("_growth")


def _window(at: datetime) -> dict[str, datetime]:
    return {"since": at - GROWTH_SPAN, "at": at}


def _locked_with_growth(session: Session, row, at: datetime) -> Cluster:
    """A cluster row read with its growth (_growth_of): the cluster in the session, its growth
    kept for growth() (once: a later read of the same cluster reads again)."""
    values = dict(row)
    session.info.setdefault(_GROWTH, {})[values["id"]] = (at, values.pop("_growth"))
    return _loaded(session, Cluster, values, refresh=True)


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


@lru_cache(maxsize=1)
def _count_and_read_statement():
    """PostgreSQL: one statement counts the nodes an account shows that it does not hold yet
    (as `count` does, in the same order), records its edges, reads the other holders of each
    with their cluster, names the nodes that were super-nodes already and, when the account
    is not new (`existing`), reads the other holders of every node it held already.

    Each row starts with what it is about: a node `counted` (with its count; one row per other
    holder), a `super` node, or a node `held` already (one row per other holder). The holders
    are read in the statement's snapshot, taken before it waited for any node row a concurrent
    signup had locked; that signup's edge is then missing from what it read. `_count_and_read`
    sees that from the counts (a node that is not a super-node has exactly one edge per account
    it counts) and reads again. (A node held already is not counted again, so a concurrent
    signup on it waits for no lock of ours: that signup reads this account's edge and links.)
    The nodes come as two arrays, so the statement is the same for any number of them and
    compiled once.
    """
    n, e, m = GraphNode.__table__, GraphEdge.__table__, ClusterMember.__table__
    account = bindparam("account", type_=String)
    given = func.unnest(bindparam("kinds", type_=ARRAY(String)), bindparam("hashes", type_=ARRAY(String))
                        ).table_valued("kind", "value_hash").render_derived(name="given")
    held = exists().where(e.c.kind == given.c.kind, e.c.value_hash == given.c.value_hash, e.c.account_id == account)
    counted = (pg_insert(n).from_select(
        ["kind", "value_hash", "accounts", "super_node", "first_seen_at"],
        select(given.c.kind, given.c.value_hash, literal(1), literal(False), bindparam("at", type_=UTCDateTime))
        .where(~held).order_by(given.c.kind, given.c.value_hash))
        .on_conflict_do_update(index_elements=["kind", "value_hash"], set_={"accounts": n.c.accounts + 1},
                               where=n.c.super_node.is_(False))
        .returning(n.c.kind, n.c.value_hash, n.c.accounts).cte("counted"))
    edges = (pg_insert(e).from_select(["kind", "value_hash", "account_id"],
                                      select(counted.c.kind, counted.c.value_hash, account))
             .on_conflict_do_nothing().cte("edges"))
    holders = (select(literal("counted"), counted.c.kind, counted.c.value_hash, counted.c.accounts, e.c.account_id,
                      m.c.cluster_id)
               .select_from(counted.outerjoin(e, (e.c.kind == counted.c.kind) & (e.c.value_hash == counted.c.value_hash)
                                              & (counted.c.accounts > 1))
                            .outerjoin(m, m.c.account_id == e.c.account_id))
               .add_cte(edges))
    supers = (select(literal("super"), n.c.kind, n.c.value_hash, null(), null(), null())
              .join(given, (n.c.kind == given.c.kind) & (n.c.value_hash == given.c.value_hash)).where(n.c.super_node))
    mine, other = e.alias("mine"), e.alias("other")
    before = (select(literal("held"), mine.c.kind, mine.c.value_hash, null(), other.c.account_id, m.c.cluster_id)
              .select_from(mine.outerjoin(other, (other.c.kind == mine.c.kind) & (other.c.value_hash == mine.c.value_hash)
                                          & (other.c.account_id != account))
                           .outerjoin(m, m.c.account_id == other.c.account_id))
              .where(mine.c.account_id == account, bindparam("existing", type_=Boolean)))
    return holders.union_all(supers, before)


def _count_and_read(session: Session, account_id: str, nodes: list[Node], at: datetime, existing: bool
                    ) -> tuple[list[tuple[str, str, int]], list[tuple] | None]:
    """An account's new nodes counted and its edges recorded (PostgreSQL, one statement): the
    nodes counted with their counts, and the other holders of every node it holds with their
    cluster, or None when what the statement read may miss a concurrent signup's edge (read
    them again). `existing`: the account may hold nodes already (it is not new)."""
    params = {"account": account_id, "at": at, "kinds": [k for k, _ in nodes], "hashes": [h for _, h in nodes],
              "existing": existing}
    counted: dict[Node, int] = {}
    known: set[Node] = set()                   # super-nodes, and nodes the account held already
    holders: list[tuple] = []
    for role, kind, value_hash, accounts, other, other_cluster in session.execute(_count_and_read_statement(), params):
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


def _sql(session: Session) -> SimpleNamespace:
    return _statements(session.get_bind().dialect.name)


def queue_rescore(session: Session, *, accounts: Iterable[str] = (), clusters: Iterable[str] = ()) -> None:
    """Ask for members to be rescored once this transaction commits (kyc/jobs.py drains it)."""
    pending = session.info.setdefault("kyc.rescore", {"accounts": set(), "clusters": set()})
    pending["accounts"].update(accounts)
    pending["clusters"].update(clusters)


def _new_cluster(session: Session, at: datetime) -> Cluster:
    cluster = Cluster(id=new_id("cl"), size=0, first_seen_at=at,
                      **{flag: 0 for flag in MEMBER_FLAGS})
    session.add(cluster)
    return cluster


def one_member(account_id: str, at: datetime, flags: dict[str, bool] | None) -> tuple[dict, dict]:
    """The membership and the cluster of one of an account that has none, its traits counted."""
    traits = {flag: bool((flags or {}).get(flag, False)) for flag in MEMBER_FLAGS}
    cluster = {"id": new_id("cl"), "size": 1, "first_seen_at": at, **{f: int(v) for f, v in traits.items()}}
    return {"account_id": account_id, "cluster_id": cluster["id"], "joined_at": at, **traits}, cluster


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
    """
    member = (None if new_account else _loaded(session, ClusterMember, stored) if stored
              else session.get(ClusterMember, account_id))
    if member is None:
        member_values, cluster_values = one_member(account_id, at, flags)
        return ClusterMember(**member_values), Cluster(**cluster_values)
    if at < member.joined_at:
        # A backfilled earlier event: the account joined its cluster at its first event time.
        _store(session, member, {"joined_at": at})
        cluster = session.get(Cluster, member.cluster_id)
        _store(session, cluster, {"first_seen_at": min(cluster.first_seen_at, at)})
    return member, None


def _loaded(session: Session, model: type, row, *, refresh: bool = False):
    """A row read by a Core statement, in the session as if the session had loaded it (which
    costs more than the read). `refresh`: an object the session holds already takes the row's
    values (a locked read: they are the latest)."""
    key = row[model.__table__.primary_key.columns[0].key]
    found = session.identity_map.get(inspect(model).identity_key_from_primary_key((key,)))
    if found is None:
        found = model(**row)
        make_transient_to_detached(found)      # its values are the stored ones: nothing to write
        session.add(found)
    elif refresh:
        for column, value in row.items():
            set_committed_value(found, column, value)
    return found


def locked_cluster(session: Session, member: ClusterMember, at: datetime | None = None) -> Cluster:
    """The member's cluster, locked for this transaction, and its growth up to `at` when given
    (scoring: see growth). Read through the membership: a concurrent merge may have moved the
    member since it was read, and once that merge commits the cluster locked by id would be
    gone; the member then follows its move."""
    sql = _sql(session)
    statement, params = (sql.lock_cluster, {}) if at is None else (sql.lock_cluster_growth, _window(at))
    for _ in range(3):
        row = session.execute(statement, {"account": member.account_id, **params}).mappings().one_or_none()
        if row is not None:
            if row["id"] != member.cluster_id:
                set_committed_value(member, "cluster_id", row["id"])
            return _loaded(session, Cluster, row, refresh=True) if at is None else _locked_with_growth(session, row, at)
    # Only a merge committing between each read and its lock, three times over, gets here.
    raise RuntimeError(f"the cluster of {member.account_id} kept moving while it was being locked")


def _attach(session: Session, member: ClusterMember, created: Cluster | None) -> None:
    """A membership and cluster ensure_member made, put in the session (written at its flush)."""
    if inspect(member).transient:
        session.add_all([c for c in (created, member) if c is not None and inspect(c).transient])


def write_new(session: Session, member: ClusterMember, cluster: Cluster) -> None:
    """Insert a membership and its cluster of one that ensure_member made and nothing put in
    the session: call once their flags are final (scoring does, before its writes)."""
    if not inspect(member).transient:
        return
    if inspect(cluster).transient:
        session.execute(insert(Cluster.__table__), dict(inspect(cluster).dict))
    session.execute(insert(ClusterMember.__table__), dict(inspect(member).dict))


def set_flags(session: Session, policy: Policy, account_id: str, flags: dict[str, bool], *,
              member: ClusterMember | None = None, cluster: Cluster | None = None,
              being_scored: bool = False) -> None:
    """Update an account's traits and its cluster's counters; a rising cluster queues a rescore.

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
    _store(session, member, changes)
    _store(session, cluster, {flag: getattr(cluster, flag) + (1 if value else -1) for flag, value in changes.items()})
    if _rose(before, policy.bucket(cluster)) and not (being_scored and cluster.size == 1):
        queue_rescore(session, clusters=[cluster.id])


def _store(session: Session, row: Cluster | ClusterMember | SimpleNamespace, values: dict) -> None:
    """Change a membership's or a cluster's columns. A row the session loaded is written by one
    `deferred` UPDATE (in a pipelined transaction it travels with the commit: the session's
    flush would wait for its answer, to check it changed one row) and the object told its values
    are the stored ones; a row not written yet, or a rescore chunk's record (ChunkGraph writes
    what changed), just takes the values."""
    if not values:
        return
    state = inspect(row, raiseerr=False)
    if state is not None and state.persistent:
        table = row.__table__
        session.execute(_update_statement(table, tuple(values)),
                        {"_key": getattr(row, table.primary_key.columns[0].key), **values})
        for column, value in values.items():
            set_committed_value(row, column, value)
    else:
        for column, value in values.items():
            setattr(row, column, value)


@lru_cache(maxsize=256)
def _update_statement(table: Table, columns: tuple[str, ...]):
    """A deferred UPDATE of some columns of one row, built once (building a statement and its
    cache key each time cost more than sending it)."""
    key = table.primary_key.columns[0]
    return deferred(update(table).where(key == bindparam("_key")).values({c: bindparam(c) for c in columns}))


def _rose(before: tuple, after: tuple) -> bool:
    return any(a > b for a, b in zip(after, before))


def member_cluster(session: Session, account_id: str, at: datetime, *, flags: dict[str, bool] | None = None,
                   new_account: bool = False, stored: dict | None = None) -> tuple[ClusterMember, Cluster]:
    """The account's membership and its cluster, locked for this transaction (no linking: rescoring)."""
    member, created = ensure_member(session, account_id, at, flags=flags, new_account=new_account, stored=stored)
    return member, created or locked_cluster(session, member, at)


def link(session: Session, policy: Policy, account_id: str, identifiers: Iterable[Node], at: datetime, *,
         flags: dict[str, bool] | None = None, new_account: bool = False, stored: dict | None = None
         ) -> tuple[ClusterMember, Cluster]:
    """Record the account's linking identifiers, link it, and return its membership and its
    (possibly merged) cluster, locked for this transaction or created by it. `stored`: see
    ensure_member."""
    member, created = ensure_member(session, account_id, at, flags=flags, new_account=new_account, stored=stored)
    nodes = sorted({n for n in identifiers if n[0] in LINK_KINDS})
    sql = _sql(session)
    # A new member and cluster stay out of the session while the reads and writes below run
    # (none of them reads this account's membership), so write_new inserts them with their last
    # values instead of inserting now and updating later; joining one stored cluster keeps them
    # out too (_absorb). A merge of several clusters puts them in the session, and a super-node
    # split, which reads memberships, flushes them first.
    with session.no_autoflush:
        return _link(session, policy, account_id, member, created, nodes, sql, at, new_account)


def _link(session: Session, policy: Policy, account_id: str, member: ClusterMember, created: Cluster | None,
          nodes: list[Node], sql: SimpleNamespace, at: datetime, new_account: bool) -> tuple[ClusterMember, Cluster]:
    counted: list = []
    read: list[tuple] | None = None            # the other holders and their clusters, when read
    if nodes:
        fresh: list[Node] = []
        if sql.dialect == "postgresql":
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
        return member, created                 # the only holder of all its nodes: a cluster of one
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
                return member, merge(session, policy, cluster_ids, at, exclude=member, joining=created)
            session.flush()
            return member, merge(session, policy, cluster_ids, at, exclude=member)
    if created is not None and created.id == member.cluster_id:
        return member, created
    return member, locked_cluster(session, member, at)


def _may_link(counted: list[tuple[str, str, int]]) -> bool:
    """Whether a new account, holding exactly the nodes just counted, can link to anyone: a node
    counted once is held by it alone (each holder of a node that is not a super-node has an
    edge and was counted once), so only shared strong nodes, or shared weak nodes of enough
    kinds, can link. Most new accounts share nothing and skip reading the other holders."""
    shared = [kind for kind, _, accounts in counted if accounts > 1]
    return any(kind in STRONG for kind in shared) or len({k for k in shared if k in WEAK}) >= WEAK_KINDS_NEEDED


def merge(session: Session, policy: Policy, cluster_ids: Iterable[str], at: datetime,
          exclude: ClusterMember | None = None, *, joining: Cluster | None = None) -> Cluster:
    """Merge clusters into the largest one (union by size); members whose cluster rose are queued.
    The clusters' growth up to `at` (the evaluation's time) is read with their locks: see growth.

    `exclude`: the membership of the account being scored, which is not queued (a cluster of one
    holding only it queues nobody, without reading its members). `joining`: that account's new
    cluster of one, when neither is written yet. When another cluster absorbs it, the member is
    written straight into that cluster and the new cluster never is (no insert, move and delete
    of a row that lives a few milliseconds).
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
    clusters = [_locked_with_growth(session, row, at) for row in session.execute(
        select(*c, _growth_of(c.id)).where(c.id.in_(stored)).order_by(c.id).with_for_update(), _window(at)).mappings()]
    if new_cluster is not None:
        clusters.append(new_cluster)
    # The largest absorbs the others (union by size: an account moves O(log n) times); ties: the oldest.
    target = min(clusters, key=lambda c: (-c.size, c.first_seen_at, c.id))
    read = session.info.setdefault(_GROWTH, {})    # the merged cluster grew by what each of them did
    read[target.id] = (at, min(GROWTH_CAP, sum(read.pop(c.id)[1] for c in clusters if c is not new_cluster)))
    before = {c.id: policy.bucket(c) for c in clusters}
    others = [c for c in clusters if c is not target]
    _store(session, target, {"size": sum(c.size for c in clusters),
                             "first_seen_at": min(c.first_seen_at for c in clusters),
                             **{flag: sum(getattr(c, flag) for c in clusters) for flag in MEMBER_FLAGS}})
    after = policy.bucket(target)
    excluded = exclude.account_id if exclude is not None else ""
    for other in others:
        # A cluster of one holding the excluded account (the new one, say): nobody to queue.
        alone = other.size == 1 and exclude is not None and other.id == exclude.cluster_id
        if not alone and _rose(before[other.id], after):
            moved = session.execute(select(ClusterMember.account_id).where(
                ClusterMember.cluster_id == other.id, ClusterMember.account_id != excluded)).scalars()
            queue_rescore(session, accounts=moved)
    if _rose(before[target.id], after):
        queue_rescore(session, clusters=[target.id])
    moved_ids = [c.id for c in others if c is not new_cluster]
    # Membership rows only: accounts.cluster_id is written by each account's own evaluation, so
    # a merge never waits on the row lock of a member being scored at the same time (deadlock).
    if moved_ids:
        # Written without waiting for answers (see _store), and the members the session holds
        # told where they are now: the account being scored updates its traits in the target
        # without locking it again (locked_cluster).
        sql = _sql(session)
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
    return target


def _absorb(session: Session, policy: Policy, cluster_id: str, new_member: ClusterMember,
            new_cluster: Cluster, at: datetime) -> Cluster | None:
    """A new account joining one stored cluster (the common merge): the stored cluster keeps its
    id whatever its size, its counters rise by the new member's in one statement, and the new
    cluster of one is never written. None: a concurrent merge removed that cluster meanwhile."""
    added = {flag: getattr(new_cluster, flag) for flag in MEMBER_FLAGS}
    row = session.execute(_sql(session).absorb, {"cluster": cluster_id, "first": new_cluster.first_seen_at,
                                                  **_window(at), **added}).mappings().one_or_none()
    if row is None:
        return None
    target = _locked_with_growth(session, row, at)
    before = SimpleNamespace(size=target.size - 1, blocked=target.blocked - added["blocked"],
                             labeled_fraud=target.labeled_fraud - added["labeled_fraud"])
    if _rose(policy.bucket(before), policy.bucket(target)):
        queue_rescore(session, clusters=[target.id])
    new_member.cluster_id = target.id          # written by write_new, as for a cluster of one
    if new_cluster in session:
        session.expunge(new_cluster)
    return target


def _make_super(session: Session, policy: Policy, nodes: list[Node]) -> None:
    """Nodes that crossed their threshold stop linking: drop their edges, split what they held."""
    condition = tuple_(GraphEdge.kind, GraphEdge.value_hash).in_(nodes)
    affected = set(session.execute(
        select(ClusterMember.cluster_id).join(GraphEdge, GraphEdge.account_id == ClusterMember.account_id)
        .where(condition)).scalars())
    session.execute(update(GraphNode).where(tuple_(GraphNode.kind, GraphNode.value_hash).in_(nodes))
                    .values(super_node=True))
    session.execute(delete(GraphEdge).where(condition))
    session.flush()
    recluster(session, policy, affected)


def recluster(session: Session, policy: Policy, cluster_ids: Iterable[str]) -> None:
    """Recompute the components of some clusters from their members' edges (a cluster can only split)."""
    cluster_ids = sorted(set(cluster_ids))
    if not cluster_ids:
        return
    # The clusters before their members, in id order, as merge() and rescore chunks lock them:
    # transactions never wait on each other in a circle.
    session.execute(select(Cluster.id).where(Cluster.id.in_(cluster_ids)).order_by(Cluster.id).with_for_update())
    in_clusters = ClusterMember.cluster_id.in_(cluster_ids)
    current = dict(session.execute(select(ClusterMember.account_id, ClusterMember.cluster_id).where(in_clusters)).all())
    edges = session.execute(
        select(GraphEdge.kind, GraphEdge.value_hash, GraphEdge.account_id)
        .join(ClusterMember, ClusterMember.account_id == GraphEdge.account_id).where(in_clusters))
    uf = components((((kind, h), a) for kind, h, a in edges), current)
    _assign(session, uf.groups().values(), current)


def _keep_ids(groups: Iterable[list[str]], current: dict[str, str], claimed: set[str]):
    """Each group of accounts, largest first, with the cluster id it keeps: the most common of
    its members' current clusters not claimed by a larger group (None: it needs a new one)."""
    for group in sorted(groups, key=lambda g: (-len(g), min(g))):
        votes = Counter(current[a] for a in group if current.get(a))
        cluster_id = next((cid for cid, _ in sorted(votes.items(), key=lambda v: (-v[1], v[0]))
                           if cid not in claimed), None)
        if cluster_id is not None:
            claimed.add(cluster_id)
        yield group, cluster_id


def _assign(session: Session, groups: Iterable[list[str]], current: dict[str, str]) -> None:
    """Give each group of accounts a cluster, keeping ids where a group keeps most of a cluster,
    and recompute counters from the members' flags."""
    claimed: set[str] = set()
    changed: dict[str, str] = {}
    touched: set[str] = set(current.values())
    for group, cluster_id in _keep_ids(groups, current, claimed):
        if cluster_id is None:
            first = session.execute(select(func.min(ClusterMember.joined_at))
                                    .where(ClusterMember.account_id.in_(group[:1]))).scalar()
            cluster_id = _new_cluster(session, first).id
        touched.add(cluster_id)
        for account in group:
            if current.get(account) != cluster_id:
                changed[account] = cluster_id
    session.flush()
    by_target: dict[str, list[str]] = defaultdict(list)
    for account, cluster_id in changed.items():
        by_target[cluster_id].append(account)
    for cluster_id, accounts in by_target.items():
        for chunk in _chunks(accounts, 5000):
            session.execute(update(ClusterMember).where(ClusterMember.account_id.in_(chunk)).values(cluster_id=cluster_id))
    _recount(session, touched)


def _recount(session: Session, cluster_ids: set[str]) -> None:
    for chunk in _chunks(sorted(cluster_ids), 5000):
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


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


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
    session.flush()
    if session.get_bind().dialect.name == "postgresql":
        # Hashes over millions of rows in memory rather than spilled to disk (a hash may use
        # hash_mem_multiplier times work_mem); index builds likewise. No JIT: compiling each
        # of these one-off statements costs more than it saves. For this transaction only.
        session.execute(text("SET LOCAL work_mem = '256MB'"))
        session.execute(text("SET LOCAL maintenance_work_mem = '512MB'"))
        session.execute(text("SET LOCAL jit = off"))
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
    _set_account_clusters(session)
    lap("accounts")
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
    postgres = connection.dialect.name == "postgresql"
    if postgres:
        # Signups linking meanwhile wait for the commit instead of racing the rebuild; readers
        # (ops views) go on. In the order linking writes them: no deadlock with a signup.
        connection.execute(text(f"LOCK TABLE {n.name}, {e.name} IN EXCLUSIVE MODE"))
    keys = (s.c.kind, s.c.value_hash, s.c.account_id)
    holding = (select(*keys, func.min(s.c.occurred_at).label("first")).where(s.c.kind.in_(sorted(LINK_KINDS)))
               .group_by(*keys).order_by(*keys))
    if postgres:
        # Sorted rather than hashed: the holders come out in the order of the edges' primary
        # key, so the nodes are counted from them without another sort (a group aggregate
        # over a presorted sort costs one pass), and both tables are loaded in the order of
        # their primary keys, whose builds then find their input sorted. CREATE TABLE AS,
        # unlike INSERT, sorts in parallel.
        connection.execute(text("SET LOCAL enable_hashagg = off"))
        connection.exec_driver_sql(f"CREATE TEMPORARY TABLE {held.name} AS " + str(
            holding.compile(dialect=connection.dialect, compile_kwargs={"literal_binds": True})))
    else:
        held.create(connection)
        connection.execute(held.insert().from_select(["kind", "value_hash", "account_id", "first"], holding))
    _analyze(session, held)
    holders = func.count()
    threshold = case((held.c.kind.in_(sorted(STRONG)), policy.super_strong), else_=policy.super_weak)
    _replace(session, n, select(held.c.kind, held.c.value_hash, holders.label("accounts"),
                                (holders > threshold).label("super_node"), func.min(held.c.first).label("first_seen_at"))
             .group_by(held.c.kind, held.c.value_hash).order_by(held.c.kind, held.c.value_hash))
    if postgres:
        connection.execute(text("SET LOCAL enable_hashagg TO DEFAULT"))
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
    if empty or connection.dialect.name != "postgresql":
        if not empty:
            connection.execute(table.delete())
        with _indexes_built_after(session, table):
            connection.execute(table.insert().from_select(columns, wanted))
        _analyze(session, table)
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


@contextmanager
def _indexes_built_after(session: Session, table: Table):
    """PostgreSQL: load an empty table without its constraints (primary key, foreign keys) and
    indexes and put them back afterwards, each as the schema defined it; one sorted build is
    several times faster than millions of inserts into each b-tree, and one join validates a
    foreign key faster than a check per row. Inside the rebuild's transaction, whose ALTER
    TABLE keeps everyone else off the table until the commit (adding a foreign key also keeps
    writers off the table it references)."""
    if session.get_bind().dialect.name != "postgresql":
        yield
        return
    connection = session.connection()
    oid = connection.scalar(text("SELECT CAST(CAST(:t AS regclass) AS oid)"), {"t": table.name})
    constraints = connection.execute(text(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = :oid AND contype IN ('p', 'f') "
        "ORDER BY contype DESC, conname"), {"oid": oid}).all()                # the primary key first
    indexes = connection.execute(text(
        "SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE i.indrelid = :oid AND NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conindid = i.indexrelid) "
        "ORDER BY c.relname"), {"oid": oid}).all()
    for name, _ in constraints:
        connection.execute(text(f'ALTER TABLE {table.name} DROP CONSTRAINT "{name}"'))
    for name, _ in indexes:
        connection.execute(text(f'DROP INDEX "{name}"'))
    yield
    for name, definition in constraints:
        connection.execute(text(f'ALTER TABLE {table.name} ADD CONSTRAINT "{name}" {definition}'))
    for _, definition in indexes:
        connection.execute(text(definition))


def _analyze(session: Session, *tables: Table) -> None:
    """Fresh planner statistics for tables this transaction rewrote (PostgreSQL would otherwise
    plan the next statements for the tables as they were, e.g. empty: nested loops over millions)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("ANALYZE " + ", ".join(t.name for t in tables)))


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
    _analyze(session, shared)
    postgres = connection.dialect.name == "postgresql"
    holders = func.array_agg if postgres else func.json_group_array      # each group's accounts, in one row
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
            accounts = accounts if postgres else json.loads(accounts)
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
    many are new. One pass over the memberships: linked accounts' clusters go to `_keep_ids`;
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
    for group, cluster_id in _keep_ids(uf.groups().values(), current, claimed):
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
    """Memberships moved and added in bulk, through a temporary table (loaded with COPY on
    PostgreSQL: a million rows in seconds)."""
    if not moves:
        return
    connection = session.connection()
    _MOVES.create(connection)
    if connection.dialect.name == "postgresql":
        with connection.connection.dbapi_connection.cursor() as cursor, \
                cursor.copy("COPY rebuild_moves (account_id, cluster_id, joined_at) FROM STDIN") as copy:
            for move in moves:
                copy.write_row(move)
    else:
        for chunk in _chunks(moves, 20_000):
            connection.execute(_MOVES.insert(), [{"account_id": a, "cluster_id": c, "joined_at": j}
                                                 for a, c, j in chunk])
    _analyze(session, _MOVES)
    m = ClusterMember.__table__
    connection.execute(m.update().where(m.c.account_id == _MOVES.c.account_id, _MOVES.c.joined_at.is_(None))
                       .values(cluster_id=_MOVES.c.cluster_id))
    connection.execute(m.insert().from_select(
        ["account_id", "cluster_id", "joined_at", *MEMBER_FLAGS],
        select(_MOVES.c.account_id, _MOVES.c.cluster_id, _MOVES.c.joined_at, *(literal(False) for _ in MEMBER_FLAGS))
        .where(_MOVES.c.joined_at.is_not(None))))
    _MOVES.drop(connection)
    _analyze(session, m)


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
    _analyze(session, t)
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
    if connection.dialect.name != "postgresql":
        return False
    m, c = ClusterMember.__table__, Cluster.__table__

    def empty() -> bool:
        return all(connection.scalar(select(literal(1)).select_from(t).limit(1)) is None for t in (m, c))

    if not empty():
        return False
    connection.execute(text(f"LOCK TABLE {c.name}, {m.name} IN EXCLUSIVE MODE"))
    return empty()


def _load_memberships(session: Session, moves: list[tuple[str, str, datetime | None]]) -> None:
    """A first rebuild: every membership is new, so the memberships are loaded with COPY into the
    empty table and the clusters counted from them by one aggregate into the other, both
    without their indexes (built afterwards, `_indexes_built_after`). A new member carries no
    traits: a cluster's size and earliest join are all there is to count."""
    m, c = ClusterMember.__table__, Cluster.__table__
    connection = session.connection()
    traits = (False,) * len(MEMBER_FLAGS)
    with _indexes_built_after(session, m), _indexes_built_after(session, c):
        with connection.connection.dbapi_connection.cursor() as cursor, \
                cursor.copy(f"COPY {m.name} (account_id, cluster_id, joined_at, {', '.join(MEMBER_FLAGS)}) "
                            "FROM STDIN") as copy:
            for account, cluster_id, joined in moves:
                copy.write_row((account, cluster_id, joined, *traits))
        now = literal(datetime.now(timezone.utc), UTCDateTime)
        connection.execute(c.insert().from_select(
            ["id", "size", "first_seen_at", "created_at", "updated_at", *MEMBER_FLAGS],
            select(m.c.cluster_id, func.count(), func.min(m.c.joined_at), now, now, *(literal(0) for _ in MEMBER_FLAGS))
            .group_by(m.c.cluster_id)))
    _analyze(session, m, c)


def _set_account_clusters(session: Session) -> None:
    """accounts.cluster_id follows the memberships."""
    a, m = Account.__table__, ClusterMember.__table__
    session.connection().execute(a.update().where(a.c.id == m.c.account_id,
                                                  or_(a.c.cluster_id.is_(None), a.c.cluster_id != m.c.cluster_id))
                                 .values(cluster_id=m.c.cluster_id))


# --- reading --------------------------------------------------------------------------------

def growth(session: Session, cluster_id: str, at: datetime, span: timedelta = GROWTH_SPAN, *,
           member: ClusterMember | None = None, size: int | None = None) -> int:
    """Members whose first event time lies in (at - span, at], capped at GROWTH_CAP.

    Given a cluster's size and the member being scored, a cluster of one (most accounts) is
    answered without a read: its one member is that account. So is a cluster locked for this
    evaluation (link, member_cluster), whose growth was read with its lock. A member not
    written yet (a new account that joined a stored cluster: write_new inserts it) is counted
    here.
    """
    mine = member is not None and member.cluster_id == cluster_id
    joined = int(mine and at - span < member.joined_at <= at)
    if size == 1 and mine:
        return joined
    read = session.info.get(_GROWTH, {}).pop(cluster_id, None)
    if read is not None and read[0] == at and span == GROWTH_SPAN:
        stored = read[1]
    else:
        stored = session.scalar(_sql(session).growth, {"cluster": cluster_id, "since": at - span, "at": at})
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
    for chunk in _chunks(members, 5_000) if shared else ():
        for account, kind, value_hash in session.execute(
                select(e.account_id, e.kind, e.value_hash).where(e.account_id.in_(chunk))):
            if (kind, value_hash) in shared:
                reasons[account].add(kind)
    identifiers = [
        {"kind": kind, "hash": value_hash, "strength": "strong" if kind in STRONG else "weak", "accounts": accounts}
        for kind, value_hash, accounts in sorted(counted, key=lambda row: (-row[2], row[0], row[1]))
    ]
    return {a: sorted(k) for a, k in reasons.items()}, identifiers


def member_link_kinds(session: Session, account_id: str, cluster_id: str) -> list[str]:
    """The identifier kinds one member shares with another member: its entry of link_reasons,
    answered by stopping at the first other holder of each of its identifiers, where
    link_reasons counts every holder (a farm member's page must not count 25,000 of them)."""
    other = aliased(GraphEdge)
    held_by_another = (select(literal(1)).select_from(other)
                       .join(ClusterMember, ClusterMember.account_id == other.account_id)
                       .where(other.kind == GraphEdge.kind, other.value_hash == GraphEdge.value_hash,
                              other.account_id != account_id, ClusterMember.cluster_id == cluster_id))
    return sorted(set(session.scalars(select(GraphEdge.kind).where(GraphEdge.account_id == account_id,
                                                                   held_by_another.exists()))))


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
        "first_seen_at": _rfc3339(cluster.first_seen_at),
        "last_joined_at": _rfc3339(newest),
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
            {"account_id": a, "decision": d, "score": s, "label": label, "joined_at": _rfc3339(j),
             "linked_by": reasons.get(a, [])}
            for a, d, s, label, j in rows
        ]
    return body


def _rfc3339(value: datetime | None) -> str | None:
    from kyc.inputs import rfc3339

    return rfc3339(value)


# --- rescoring a chunk of accounts (kyc/scoring.py read_chunk) --------------------------------

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

    def member_cluster(self, session: Session, account_id: str, at: datetime, *,
                       flags: dict[str, bool] | None = None) -> tuple[SimpleNamespace, SimpleNamespace]:
        """member_cluster for an account of the chunk: nothing read, nothing locked."""
        member = self.members.get(account_id)
        if member is None:
            # No membership (read with the chunk): a cluster of its own, as ensure_member makes.
            member_values, cluster_values = one_member(account_id, at, flags)
            member, cluster = SimpleNamespace(**member_values), SimpleNamespace(**cluster_values)
            self.members[account_id] = member
            self.clusters[cluster.id] = cluster
            self.new.append(account_id)
            return member, cluster
        cluster = self.clusters[member.cluster_id]
        if at < member.joined_at:                  # as ensure_member: a backfilled earlier event
            member.joined_at = at
            cluster.first_seen_at = min(cluster.first_seen_at, at)
        return member, cluster

    def growth(self, session: Session, cluster: SimpleNamespace, member: SimpleNamespace, at: datetime,
               span: timedelta = timedelta(hours=24)) -> int:
        """growth, from the join times read with the chunk when the cluster is small enough."""
        times = self.joined.get(cluster.id)
        if times is None:
            return growth(session, cluster.id, at, span, member=member, size=cluster.size)
        return min(GROWTH_CAP, bisect_right(times, at) - bisect_right(times, at - span))

    def newest_join(self, session: Session, cluster: SimpleNamespace) -> datetime | None:
        """newest_join, from the join times read with the chunk when the cluster is small enough."""
        times = self.joined.get(cluster.id)
        return times[-1] if times else newest_join(session, cluster.id)

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
