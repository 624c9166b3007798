"""Usage links accounts: the identifiers an activity report shows, as sightings of its account.

- the API key (the gateway's key id): a strong identifier, one key behind two accounts links them;
- the prompt templates (prompt_fingerprints): weak, as a template a popular tool sends is held
  by thousands of unrelated accounts and turns into a super-node that links nobody (the graph's
  popularity, kyc/graph/core.py); a template links two accounts only together with another weak
  kind, such as
- the activity IP's network within the UTC day (activity_prefix_day, a kind of its own, not a
  signup's ip_prefix_day): an office's accounts on one network using the company's internal
  templates are one operator, linked as people who work together are (kyc.graph.SHARED_WORK);
- the activity IP and its network are velocity sightings like a signup's IP (velocity.ip_*).

Linking is part of the report's transaction (link_reports), after its reports are recorded and
with its accounts locked: the contract promises that the next entitlement check answers with what
a report taught kyc, and a link that joins a farm's accounts into one cluster is what it taught.
The accounts whose cluster a link changes are re-evaluated in that transaction and answered with
their new decision. One transaction, so a crash or a refusal leaves neither reports without their
links nor links without their reports, and the gateway's resend counts nothing twice. (An earlier
release linked after the commit, from a pending_links row the report's transaction wrote; rows it
left unlinked are linked by link_pending: each process's background thread at start, and `kyc
worker`'s maintenance.) Linking is idempotent anyway: what an account already holds, or sighted
that day, is skipped.

Each identifier is recorded once per account (linking kinds: once ever, what the graph holds;
velocity kinds: once per UTC day), so `kyc clusters rebuild` sees what incremental linking saw.
Linking costs a few statements a batch (kyc.graph.link_many); an account is linked one by one
(kyc.graph.attach) only when what it shares with other accounts can link it, which is what can
change its cluster; its re-evaluation then reads the cluster's facts.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, defaultdict
from datetime import datetime
from typing import Callable, Sequence

from sqlalchemy import bindparam, delete, select
from sqlalchemy.orm import Session

from kyc import graph
from kyc.db import write_lock
from kyc.ids import new_id
from kyc.inputs import ActivityInput
from kyc.models import Account, GraphEdge, GraphNode, PendingLink, Sighting, velocity_kind
from kyc.persist import in_list, insert_rows, shown_and_sighted
from kyc.security import KeyedHashes
from kyc.signals.network import network_identifiers
from kyc.signals.velocity import VELOCITY_KEYS
from kyc.store import velocity_store
from kyc.usage.reevaluate import reevaluate

Node = tuple[str, str]
_READ_CHUNK = 2000
PENDING_READ = 20          # an earlier release's pending rows linked a transaction (each up to 1,000 reports)
_P = PendingLink.__table__
_PENDING = select(_P.c.id, _P.c.shown).order_by(_P.c.id).limit(bindparam("limit")).with_for_update(skip_locked=True)
_DELETE_PENDING = delete(_P).where(in_list(_P.c.id, "ids"))
_LOCK_ACCOUNTS = (select(Account.__table__.c.id).where(in_list(Account.__table__.c.id, "ids"))
                  .order_by(Account.__table__.c.id).with_for_update())
_SIGHTING_COLUMNS = ("kind", "value_hash", "account_id", "evaluation_id", "occurred_at")


def report_identifiers(inp: ActivityInput, at: datetime, hashed: Callable[[str, str], str]) -> list[Node]:
    """The keyed hashes (`hashed`: a KeyedHashes) of what a report shows: IP, its network and
    network-day, API key, templates."""
    # The network a report came from is where the account works, not where it signed up.
    raw = list(network_identifiers(inp.ip, None, at, day_kind="activity_prefix_day")) if inp.ip else []
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
    account reports the same key, templates and network all day): nothing to link, no statement.
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


def link_reports(runtime, session: Session, reports: Sequence[tuple[str, ActivityInput]],
                 hashes: KeyedHashes) -> tuple[dict[str, dict[Node, datetime]], list[str]]:
    """Link what the reports show, in the report's transaction (its accounts locked by
    record_reports; `hashes`, the batch's): what was new to this process, for `linked(runtime).add`
    once the transaction commits, and the accounts whose cluster changed (to re-evaluate)."""
    shown = linked(runtime).new(shown_identifiers(reports, hashes))
    return shown, link_shown(runtime, session, shown)


def link_pending(runtime, *, limit: int = PENDING_READ) -> int:
    """Link what an earlier release's committed reports left pending (pending_links), oldest first, `limit` rows a
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
            shown = _link(runtime, session, pending)
        linked(runtime).add(shown)           # committed
        done += len(pending)


def _link(runtime, session: Session, pending: list) -> dict[str, dict[Node, datetime]]:
    """Link locked pending rows (id, shown), re-evaluate the accounts whose cluster changed and
    delete the rows, in the caller's transaction; what they showed."""
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
    return shown


def link_shown(runtime, session: Session, shown: dict[str, dict[Node, datetime]]) -> list[str]:
    """Record identifiers shown (account -> node -> first time) and link their accounts, in the
    caller's transaction, the accounts locked by it; the accounts whose cluster changed."""
    if not shown:
        return []
    ids = sorted(shown)
    # What the graph holds of the nodes shown, and velocity kinds already sighted on the account
    # that UTC day.
    since = min(at for nodes in shown.values() for at in nodes.values()).replace(hour=0, minute=0, second=0,
                                                                                microsecond=0)
    velocity_kinds = sorted(k for k in VELOCITY_KEYS if k not in graph.LINK_KINDS)
    stored = shown_and_sighted(session, shown, set(graph.LINK_KINDS), set(velocity_kinds), since)
    if stored is not None:
        nodes, edges, sighted = stored
    else:
        nodes, edges, sighted = [], [], []
        hashes = sorted({h for account_nodes in shown.values() for k, h in account_nodes if k in graph.LINK_KINDS})
        for part in _chunks(hashes):
            nodes += session.execute(
                select(GraphNode.kind, GraphNode.value_hash, GraphNode.accounts, GraphNode.super_node)
                .where(GraphNode.value_hash.in_(part))).all()
            edges += session.execute(
                select(GraphEdge.kind, GraphEdge.value_hash, GraphEdge.account_id)
                .where(GraphEdge.value_hash.in_(part), GraphEdge.account_id.in_(ids))).all()
        for part in _chunks(ids):
            sighted += session.execute(
                select(Sighting.account_id, Sighting.kind, Sighting.value_hash, Sighting.occurred_at)
                .where(Sighting.account_id.in_(part), Sighting.kind.in_(velocity_kinds), velocity_kind(Sighting.kind),
                       Sighting.occurred_at >= since)).all()
    known: dict[Node, tuple[int, bool]] = {(k, h): (n, s) for k, h, n, s in nodes}
    held: set[tuple[str, Node]] = {(a, (k, h)) for k, h, a in edges}
    seen_today: set[tuple[str, Node, object]] = {(a, (k, h), t.date()) for a, k, h, t in sighted}

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
        insert_rows(session, Sighting.__table__, [{**row, "evaluation_id": batch} for row in sightings],
                    _SIGHTING_COLUMNS)
    if velocity:
        velocity_store(runtime, session).record_many(
            [(node, at, account_id) for account_id, keys in velocity.items() for node, at in keys])

    return graph.link_many(session, graph.Policy.from_config(runtime.config), fresh)
