"""The identity graph's model: identifier kinds, nodes and edges, super-nodes, clusters.

Identifiers are keyed hashes taken from the sightings an evaluation records, each of a kind
listed in LINK_KINDS:
- strong (device id, canonical mailbox, phone number, card fingerprint, API key): one shared strong
  identifier links two accounts;
- weak (IP /24 or /64 within a day, email template + domain, phone range, BIN + billing
  postal code, a prompt template): two accounts link when they share weak identifiers of WEAK_KINDS_NEEDED
  different kinds.
An identifier held by more accounts than its threshold is a super-node (a carrier NAT, a
university network, "first.last99@gmail.com"): it links nothing and keeps no edges; velocity
still counts it. Clusters are the connected components of what is left, so they do not depend
on the order accounts arrive in: linking one evaluation at a time (kyc.graph.link) and
kyc.graph.rebuild give the same clusters (`components` here is the pure form both follow).

Every account evaluated with identifiers has a cluster (size 1 when alone). A cluster keeps
counters of its members' traits (blocked, labeled fraud, disposable email, VoIP phone, hosting
IP, headless browser) so graph signals cost one row read.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from types import SimpleNamespace
from typing import Any, Hashable, Iterable

from sqlalchemy import Table, bindparam, case, func, inspect, select, update
from sqlalchemy.orm import Session, make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.sql.elements import Label

from kyc.persist import deferred
from kyc.ids import new_id
from kyc.models import MEMBER_FLAGS, Cluster, ClusterMember

# The identifier kinds that link accounts, and how: a strong kind links on one shared value, a
# weak one only together with WEAK_KINDS_NEEDED - 1 weak kinds more. Adding a kind is one line
# here (a name of at most 32 characters, the column's width) and a collector in kyc/signals
# that returns identifiers of that kind: scoring records them as sightings, linking and
# rebuild read this table, and a super-node's threshold follows the kind's strength. A kind not
# listed is recorded (velocity counts it) but links nothing.
LINK_KINDS: dict[str, str] = {
    "device": "strong",
    "email": "strong",                 # the canonical mailbox
    "phone": "strong",
    "card_fingerprint": "strong",
    "ip_prefix_day": "weak",           # IP /24 or /64 within a day
    "email_template": "weak",          # the mailbox's shape + its domain
    "phone_range": "weak",
    "card_bin_postal": "weak",         # BIN + billing country + postal code
    "api_key": "strong",               # the API gateway's key id (activity reports)
    "prompt": "weak",                  # a prompt template (activity reports' prompt_fingerprints)
    "activity_prefix_day": "weak",     # the network an activity report came from, within a day
}
STRONG = frozenset(kind for kind, strength in LINK_KINDS.items() if strength == "strong")
WEAK = frozenset(kind for kind, strength in LINK_KINDS.items() if strength == "weak")
# The kinds that show what accounts work on and from where, not who holds them: people who work
# together (an office's staff, a course's participants) share their templates and the network they
# use the API from honestly, and are linked by them. A member linked only with them
# (linked_by_work_only) is in its cluster for working with the others, which the usage rules judge:
# the cluster's size alone says little. The network apart from the signup's (ip_prefix_day): an
# office's staff share an email shape at the company's domain too, which with the office's network
# made two weak kinds without a template (`kyc simulate --usage --seed 9595`: 8 of a workshop's 40
# participants held by large_cluster, by their email shape and the campus's address).
SHARED_WORK = frozenset({"prompt", "activity_prefix_day"})
WEAK_KINDS_NEEDED = 2
GROWTH_CAP = 10_000          # members counted by graph.cluster_growth_24h (bounded index scan)
GROWTH_SPAN = timedelta(hours=24)

Node = tuple[str, str]       # (kind, keyed hash)


@dataclass
class Attachment:
    """An account's place in the graph for one evaluation (kyc.graph.attach, or a rescore
    chunk's ChunkGraph.attach): its membership and its cluster, locked for this transaction,
    created by it, or (a chunk) copies the chunk writes back.

    `growth`: the cluster's growth over GROWTH_SPAN up to `at`, read with the cluster's lock
    (None: not read; kyc.graph.cluster_facts reads it when asked). `chunk`: the rescore chunk
    whose read-ahead holds the cluster, which answers the cluster's facts."""

    member: Any                   # ClusterMember, or a chunk's plain record of one
    cluster: Any                  # Cluster, or a chunk's plain record of one
    at: datetime
    growth: int | None = None
    chunk: Any = None             # kyc.graph.chunk.ChunkGraph


@dataclass(frozen=True)
class ClusterFacts:
    """What an evaluation knows about its account's cluster (kyc.graph.cluster_facts): its
    counters as they stood and its growth, read at the right time."""

    id: str
    size: int
    growth_24h: int
    first_seen_at: datetime
    disposable: int
    voip: int
    hosting: int
    headless: int
    labeled_fraud: int
    blocked: int
    linked_by_work_only: bool = False

    @classmethod
    def of(cls, cluster, growth_24h: int, linked_by_work_only: bool) -> "ClusterFacts":
        return cls(cluster.id, cluster.size, growth_24h, cluster.first_seen_at, cluster.disposable, cluster.voip,
                   cluster.hosting, cluster.headless, cluster.labeled_fraud, cluster.blocked, linked_by_work_only)


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


def may_link(shared_kinds: Iterable[str]) -> bool:
    """Whether an account that shares nodes of these kinds with other accounts can be linked to
    any of them: a shared strong kind, or shared weak kinds enough (linked_accounts)."""
    kinds = set(shared_kinds)
    return bool(kinds & STRONG) or len(kinds & WEAK) >= WEAK_KINDS_NEEDED


def linked_by_work_only(shared_kinds: Iterable[str]) -> bool:
    """Whether a member that shares nodes of these kinds with other members of its cluster is
    linked to them only with the SHARED_WORK kinds: without them, what it shares could not link
    it (may_link). The kinds are pooled over the other members, so a member that shares a weak
    kind with one and another weak kind with a second counts as linked without them: the error
    keeps the member's cluster size counting against it, never the reverse."""
    kinds = set(shared_kinds)
    return bool(kinds & SHARED_WORK) and not may_link(kinds - SHARED_WORK)


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


# --- rows and statements shared by linking, the read-out and rescore chunks --------------------

def growth_column(cluster_id) -> Label:
    """Members of a cluster whose first event lies in (since, at], up to GROWTH_CAP (a bounded
    index scan), as a column: the statements that lock a cluster for scoring read it too, so
    graph.cluster_growth_24h costs no round trip of its own (see growth)."""
    window = (ClusterMember.cluster_id == cluster_id, ClusterMember.joined_at > bindparam("since"),
              ClusterMember.joined_at <= bindparam("at"))
    full = select(ClusterMember.account_id).where(*window).offset(GROWTH_CAP - 1).limit(1).exists()
    return case((full, GROWTH_CAP), else_=select(func.count()).where(*window).scalar_subquery()).label("_growth")


def growth_window(at: datetime) -> dict[str, datetime]:
    return {"since": at - GROWTH_SPAN, "at": at}


def locked_with_growth(session: Session, row) -> tuple[Cluster, int]:
    """A cluster row read with its growth (growth_column): the cluster in the session, and its
    growth (an Attachment carries it to cluster_facts, which then reads nothing)."""
    values = dict(row)
    grown = values.pop("_growth")
    return as_loaded(session, Cluster, values, refresh=True), grown


def add_cluster(session: Session, at: datetime) -> Cluster:
    cluster = Cluster(id=new_id("cl"), size=0, first_seen_at=at,
                      **{flag: 0 for flag in MEMBER_FLAGS})
    session.add(cluster)
    return cluster


def one_member(account_id: str, at: datetime, flags: dict[str, bool] | None) -> tuple[dict, dict]:
    """The membership and the cluster of one of an account that has none, its traits counted."""
    traits = {flag: bool((flags or {}).get(flag, False)) for flag in MEMBER_FLAGS}
    cluster = {"id": new_id("cl"), "size": 1, "first_seen_at": at, **{f: int(v) for f, v in traits.items()}}
    return {"account_id": account_id, "cluster_id": cluster["id"], "joined_at": at, **traits}, cluster


def as_loaded(session: Session, model: type, row, *, refresh: bool = False):
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


def store(session: Session, row: Cluster | ClusterMember | SimpleNamespace, values: dict) -> None:
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


def rose(before: tuple, after: tuple) -> bool:
    return any(a > b for a, b in zip(after, before))


def keep_ids(groups: Iterable[list[str]], current: dict[str, str], claimed: set[str]):
    """Each group of accounts, largest first, with the cluster id it keeps: the most common of
    its members' current clusters not claimed by a larger group (None: it needs a new one)."""
    for group in sorted(groups, key=lambda g: (-len(g), min(g))):
        votes = Counter(current[a] for a in group if current.get(a))
        cluster_id = next((cid for cid, _ in sorted(votes.items(), key=lambda v: (-v[1], v[0]))
                           if cid not in claimed), None)
        if cluster_id is not None:
            claimed.add(cluster_id)
        yield group, cluster_id


def chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]
