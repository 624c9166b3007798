"""Usage links accounts: the identifiers an activity report shows, as sightings of its account.

- the API key (the gateway's key id): a strong identifier, one key behind two accounts links them;
- the prompt templates (prompt_fingerprints): weak, as a template a popular tool sends is held
  by thousands of unrelated accounts and turns into a super-node that links nobody (the graph's
  popularity, kyc/graph/core.py); a template links two accounts only together with another weak
  kind, such as
- the activity IP's network within the UTC day (ip_prefix_day, as a signup's IP gives): an
  office's accounts on one network using the company's internal templates are one operator;
- the activity IP and its network are velocity sightings like a signup's IP (velocity.ip_*).

Linking follows the report's commit, not inside its transaction: it was about half the CPU of
a bulk call (bench/activity.py). The report's transaction keeps what the reports showed (one
pending_links row, keyed hashes only) and the background thread links it once the transaction
commits (link_pending): in one transaction it records the identifiers, links the accounts,
re-evaluates those whose cluster changed and deletes the row. A crash before that leaves the
row, which the next link_pending takes (each process's thread runs one when it starts); linking
is idempotent anyway (what an account already holds, or sighted that day, is skipped). So the
answer to a report does not yet reflect a link it makes: the next entitlement check after the
linking (normally well under a second) does.

Each identifier is recorded once per account (linking kinds: once ever, what the graph holds;
velocity kinds: once per UTC day), so `kyc clusters rebuild` sees what incremental linking saw.
Linking costs a few reads a batch; an account is linked one by one (kyc.graph.attach) only when
a node it shows for the first time is held by another account, which is what can change its
cluster; its re-evaluation then reads the cluster's facts.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, defaultdict
from datetime import datetime
from typing import Callable, Sequence

from sqlalchemy import and_, bindparam, delete, select
from sqlalchemy.orm import Session

from kyc import graph
from kyc.db import json_rows, rows_json, send, write_lock
from kyc.graph.link import statements
from kyc.ids import new_id
from kyc.inputs import ActivityInput
from kyc.models import Account, Cluster, ClusterMember, GraphEdge, GraphNode, PendingLink, Sighting, utcnow
from kyc.rescore.requests import after_commit
from kyc.scoring.persist import count_nodes_and_edges, write_sightings
from kyc.security import KeyedHashes
from kyc.signals.network import network_identifiers
from kyc.signals.velocity import VELOCITY_KEYS
from kyc.store import velocity_store
from kyc.usage.reevaluate import reevaluate

Node = tuple[str, str]
_READ_CHUNK = 2000
PENDING_READ = 20          # pending rows linked a transaction (a bulk call's row holds up to 1,000 reports)
_P = PendingLink.__table__
_INSERT_PENDING = _P.insert().inline()          # no RETURNING: its id is not read
_PENDING = select(_P.c.id, _P.c.shown).order_by(_P.c.id).limit(bindparam("limit")).with_for_update(skip_locked=True)
_DELETE_PENDING = delete(_P).where(_P.c.id.in_(bindparam("ids", expanding=True)))
_LOCK_ACCOUNTS = (select(Account.__table__.c.id).where(Account.__table__.c.id.in_(bindparam("ids", expanding=True)))
                  .order_by(Account.__table__.c.id).with_for_update())
_N, _E = GraphNode.__table__, GraphEdge.__table__
_SHOWN = json_rows(_N, ("kind", "value_hash")).subquery("shown")
_PG_NODES = select(_N.c.kind, _N.c.value_hash, _N.c.accounts, _N.c.super_node).join(
    _SHOWN, and_(_N.c.kind == _SHOWN.c.kind, _N.c.value_hash == _SHOWN.c.value_hash))
_SHOWN_ON = json_rows(_E, ("kind", "value_hash", "account_id")).subquery("shown_on")
_PG_EDGES = select(_E.c.kind, _E.c.value_hash, _E.c.account_id).join(
    _SHOWN_ON, and_(_E.c.kind == _SHOWN_ON.c.kind, _E.c.value_hash == _SHOWN_ON.c.value_hash,
                    _E.c.account_id == _SHOWN_ON.c.account_id))


def report_identifiers(inp: ActivityInput, at: datetime, hashed: Callable[[str, str], str]) -> list[Node]:
    """The keyed hashes (`hashed`: a KeyedHashes) of what a report shows: IP, its network and
    network-day, API key, templates."""
    raw = list(network_identifiers(inp.ip, None, at)) if inp.ip else []
    if inp.api_key_id:
        raw.append(("api_key", inp.api_key_id))
    raw.extend(("prompt", fingerprint) for fingerprint in sorted(inp.prompt_fingerprints or ()))
    return [(kind, hashed(kind, value)) for kind, value in raw]


def _chunks(items: list, size: int = _READ_CHUNK):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def shown_identifiers(reports: Sequence[tuple[str, ActivityInput]], hashed: Callable[[str, str], str]
                      ) -> dict[str, dict[Node, datetime]]:
    """What the reports show that the graph links or velocity counts: account -> node -> the
    first time the batch showed it."""
    shown: dict[str, dict[Node, datetime]] = defaultdict(dict)
    for account_id, inp in reports:
        at = inp.at()
        for node in report_identifiers(inp, at, hashed):
            if node[0] in graph.LINK_KINDS or node[0] in VELOCITY_KEYS:
                if node not in shown[account_id] or at < shown[account_id][node]:
                    shown[account_id][node] = at
    return shown


class Linked:
    """What this process has linked and committed: (account, node) for the graph's kinds (held
    for good: a node that became a super-node links nobody either), (account, node, UTC day) for
    velocity's (sighted once a day). A report showing only these has nothing to link (a gateway's
    account reports the same key, templates and network all day): no pending row, no linking.
    Never stale in what it says, as nothing unlinks an account from a node it showed; bounded
    (least recently shown dropped first), and each process has its own, so a miss costs only a
    linking that finds nothing new."""

    SIZE = 200_000

    def __init__(self):
        self._done: OrderedDict[tuple, None] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(account_id: str, node: Node, at: datetime) -> tuple:
        return (account_id, node) if node[0] in graph.LINK_KINDS else (account_id, node, at.date())

    def new(self, shown: dict[str, dict[Node, datetime]]) -> dict[str, dict[Node, datetime]]:
        """`shown` without what is linked already."""
        out: dict[str, dict[Node, datetime]] = {}
        with self._lock:
            for account_id, nodes in shown.items():
                for node, at in nodes.items():
                    key = self.key(account_id, node, at)
                    if key in self._done:
                        self._done.move_to_end(key)
                    else:
                        out.setdefault(account_id, {})[node] = at
        return out

    def add(self, shown: dict[str, dict[Node, datetime]]) -> None:
        with self._lock:
            for account_id, nodes in shown.items():
                for node, at in nodes.items():
                    self._done[self.key(account_id, node, at)] = None
            while len(self._done) > self.SIZE:
                self._done.popitem(last=False)


def linked(runtime) -> Linked:
    """The runtime's Linked (one per runtime: a runtime is one database)."""
    found = getattr(runtime, "_usage_linked", None)
    if found is None:
        found = runtime._usage_linked = Linked()
    return found


def queue_links(runtime, session: Session, reports: Sequence[tuple[str, ActivityInput]],
                hashes: KeyedHashes | None = None) -> None:
    """Keep the reports' identifiers for linking after the commit, in the caller's transaction
    (one row, one statement), and have the background thread link them once it commits.
    `hashes`: the batch's, when recording the reports hashed some of them already."""
    shown = linked(runtime).new(shown_identifiers(reports, hashes or KeyedHashes(runtime.config.secret_key)))
    rows = [[a, k, h, at.isoformat()] for a, nodes in sorted(shown.items()) for (k, h), at in sorted(nodes.items())]
    if not rows:
        return
    send(session, _INSERT_PENDING, [{"shown": rows, "created_at": utcnow()}])
    after_commit(session).collect("usage-links", lambda _work: runtime.rescoring().link_usage()).append(True)


def link_pending(runtime, *, limit: int = PENDING_READ) -> int:
    """Link what committed reports showed (pending_links), oldest first, `limit` rows a
    transaction, until none is left; re-evaluate the accounts whose cluster changed, in the same
    transaction that links them and deletes the rows. A crash or rollback leaves the rows for
    the next call; two processes take different rows (SKIP LOCKED; SQLite's write lock
    serialises them). Returns the rows linked."""
    done = 0
    while True:
        with runtime.session() as session, session.begin():
            write_lock(session)
            pending = session.execute(_PENDING, {"limit": limit}).all()
            if not pending:
                return done
            shown: dict[str, dict[Node, datetime]] = defaultdict(dict)
            for _, rows in pending:
                for account_id, kind, value_hash, at in rows:
                    at = datetime.fromisoformat(at)
                    node = (kind, value_hash)
                    if node not in shown[account_id] or at < shown[account_id][node]:
                        shown[account_id][node] = at
            # The accounts locked in id order, as a report's transaction locks them.
            session.execute(_LOCK_ACCOUNTS, {"ids": sorted(shown)}).all()
            changed = link_shown(runtime, session, shown)
            reevaluate(runtime, session, changed)
            session.execute(_DELETE_PENDING, {"ids": [row_id for row_id, _ in pending]})
        linked(runtime).add(shown)           # committed
        done += len(pending)


def link_shown(runtime, session: Session, shown: dict[str, dict[Node, datetime]]) -> list[str]:
    """Record identifiers shown (account -> node -> first time) and link their accounts, in the
    caller's transaction, the accounts locked by it; the accounts whose cluster changed."""
    if not shown:
        return []
    ids = sorted(shown)
    known: dict[Node, tuple[int, bool]] = {}
    held: set[tuple[str, Node]] = set()
    if session.get_bind().dialect.name == "postgresql":
        # Each node and (account, node) looked up by its key: with the hashes as a bound list,
        # PostgreSQL's generic plan compared every node of the kinds with the whole list (2-7 s
        # a statement for 2,000 hashes against 20,000 nodes, loaded machine).
        nodes = sorted({node for shown_nodes in shown.values() for node in shown_nodes})
        known.update({(k, h): (n, s) for k, h, n, s in session.execute(
            _PG_NODES, {"rows": rows_json([{"kind": k, "value_hash": h} for k, h in nodes])})})
        held.update((a, (k, h)) for k, h, a in session.execute(_PG_EDGES, {"rows": rows_json(
            [{"kind": k, "value_hash": h, "account_id": a} for a in ids for k, h in sorted(shown[a])])}))
    else:
        hashes = sorted({h for nodes in shown.values() for _, h in nodes})
        for part in _chunks(hashes):
            known.update({(k, h): (n, s) for k, h, n, s in session.execute(
                select(GraphNode.kind, GraphNode.value_hash, GraphNode.accounts, GraphNode.super_node)
                .where(GraphNode.value_hash.in_(part)))})
            held.update((a, (k, h)) for k, h, a in session.execute(
                select(GraphEdge.kind, GraphEdge.value_hash, GraphEdge.account_id)
                .where(GraphEdge.value_hash.in_(part), GraphEdge.account_id.in_(ids))))
    # Velocity kinds already sighted on the account that UTC day.
    since = min(at for nodes in shown.values() for at in nodes.values()).replace(hour=0, minute=0, second=0,
                                                                                microsecond=0)
    seen_today: set[tuple[str, Node, object]] = set()
    velocity_kinds = sorted(k for k in VELOCITY_KEYS if k not in graph.LINK_KINDS)
    for part in _chunks(ids):
        seen_today.update((a, (k, h), t.date()) for a, k, h, t in session.execute(
            select(Sighting.account_id, Sighting.kind, Sighting.value_hash, Sighting.occurred_at)
            .where(Sighting.account_id.in_(part), Sighting.kind.in_(velocity_kinds), Sighting.occurred_at >= since)))

    sightings: list[dict] = []
    fresh: dict[str, dict[Node, datetime]] = defaultdict(dict)        # linking nodes new to the account
    velocity: dict[str, list[tuple[Node, datetime]]] = defaultdict(list)
    for account_id in ids:
        for node, at in sorted(shown[account_id].items()):
            kind = node[0]
            if kind in graph.LINK_KINDS:
                count, is_super = known.get(node, (0, False))
                if is_super or (account_id, node) in held:
                    continue
                fresh[account_id][node] = at
            elif (account_id, node, at.date()) in seen_today:
                continue
            if kind in VELOCITY_KEYS:
                velocity[account_id].append((node, at))
            sightings.append({"kind": kind, "value_hash": node[1], "account_id": account_id, "occurred_at": at})
    if sightings:
        batch = new_id("act")
        write_sightings(session, [{**row, "evaluation_id": batch} for row in sightings])
    if velocity:
        velocity_store(runtime, session).record_many(
            [(node, at, account_id) for account_id, keys in velocity.items() for node, at in keys])

    # A node nobody else holds (in the graph or in this batch) links nobody: count it and add
    # the account's edge in bulk. An account showing a node someone else holds is linked.
    holders = defaultdict(int)
    for nodes in fresh.values():
        for node in nodes:
            holders[node] += 1
    alone = {a: nodes for a, nodes in fresh.items()
             if all(known.get(n, (0, False))[0] == 0 and holders[n] == 1 for n in nodes)}
    rows = sorted((n, a, at) for a, nodes in alone.items() for n, at in nodes.items())
    if rows and not count_nodes_and_edges(session, rows):
        sql = statements(session)
        session.execute(sql.count, [{"kind": k, "value_hash": h, "accounts": 1, "super_node": False,
                                     "first_seen_at": at} for (k, h), _, at in rows]).all()
        session.execute(sql.edge, [{"kind": k, "value_hash": h, "account_id": a} for (k, h), a, _ in rows])
    shared = sorted(a for a in fresh if a not in alone)
    if not shared:
        return []
    before = {a: (c, n) for a, c, n in session.execute(
        select(ClusterMember.account_id, ClusterMember.cluster_id, Cluster.size)
        .join(Cluster, Cluster.id == ClusterMember.cluster_id).where(ClusterMember.account_id.in_(shared)))}
    policy = graph.Policy.from_config(runtime.config)
    changed = []
    for account_id in shared:
        nodes = fresh[account_id]
        attached = graph.attach(session, policy, account_id, min(nodes.values()), identifiers=sorted(nodes))
        if (attached.cluster.id, attached.cluster.size) != before.get(account_id):
            changed.append(account_id)
    return changed
