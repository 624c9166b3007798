"""Identity graph at scale: clustering core, incremental linking in the database, full rebuild.

    python bench/graph.py --quick                 # 20,000 accounts, seconds
    python bench/graph.py                         # 1,000,000 accounts x 6 identifiers
    python bench/graph.py --database-url postgresql+psycopg://...   (default: a temporary SQLite file)

Synthetic accounts hold 6 identifiers (device, mailbox, phone: strong; network-day, email
template, phone range: weak) with households, farms, carrier NATs and common email shapes,
so there are real clusters and real super-nodes.

Prints:
1. clustering core (what `kyc clusters rebuild` runs after reading the sightings) over all
   accounts: seconds, against a baseline pass that only groups the edges by node; peak RSS;
2. incremental linking (kyc.graph.link, one transaction per evaluation, as the scoring
   pipeline runs it) of new accounts against a database holding every account: median, p99,
   against a baseline transaction that inserts the same number of rows and does nothing else;
3. `rebuild` from sightings in the database, at --rebuild-accounts scale.
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import text  # noqa: E402

from kyc.db import make_engine, make_session_factory  # noqa: E402
from kyc.graph import Policy, UnionFind, components, link, rebuild  # noqa: E402
from kyc.models import MEMBER_FLAGS, Account, Cluster, ClusterMember, GraphEdge, GraphNode, Sighting  # noqa: E402
from kyc.runtime import upgrade_database  # noqa: E402

T0 = datetime(2026, 10, 1, tzinfo=timezone.utc)
POLICY = Policy()


def identifiers(n: int, seed: int):
    """Yield (account, [(kind, value)] * 6) for n accounts; values are short strings."""
    rng = random.Random(seed)
    households = max(n // 40, 1)
    farms = max(n // 2000, 1)
    for i in range(n):
        farm = rng.random() < 0.05
        if farm:
            f = rng.randrange(farms)
            device = f"fd{f}_{rng.randrange(60)}"
            phone = f"fp{f}_{rng.randrange(120)}"
            phone_range = f"fr{f}_{rng.randrange(4)}"
        else:
            device = f"hd{rng.randrange(households)}" if rng.random() < 0.08 else f"d{i}"
            phone = f"p{i}"
            phone_range = f"r{rng.randrange(max(n // 3, 1))}"
        mailbox = f"m{rng.randrange(n)}" if rng.random() < 0.01 else f"m{i}"
        if rng.random() < 0.1:
            network = f"nat{rng.randrange(30)}|{rng.randrange(30)}"          # carrier NATs: super-nodes
        else:
            network = f"n{rng.randrange(max(n // 4, 1))}|{rng.randrange(30)}"
        template = f"t{rng.randrange(300)}" if rng.random() < 0.6 else f"t{rng.randrange(300, max(n // 5, 301))}"
        yield f"a{i}", [("device", device), ("email", mailbox), ("phone", phone),
                        ("ip_prefix_day", network), ("email_template", template), ("phone_range", phone_range)]


def super_nodes(n: int, seed: int) -> set:
    counts: dict = defaultdict(int)
    for _, ids in identifiers(n, seed):
        for node in ids:
            counts[node] += 1
    return {node for node, c in counts.items() if POLICY.is_super(node[0], c)}


def edges(n: int, seed: int, cut: set):
    for account, ids in identifiers(n, seed):
        for node in ids:
            if node not in cut:
                yield node, account


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_core(n: int, seed: int) -> UnionFind:
    cut = super_nodes(n, seed)
    started = time.perf_counter()
    grouped = defaultdict(list)
    for node, account in edges(n, seed, cut):
        grouped[node].append(account)
    baseline = time.perf_counter() - started
    del grouped
    started = time.perf_counter()
    uf = components(edges(n, seed, cut))
    core = time.perf_counter() - started
    groups = uf.groups()
    sizes = sorted((len(g) for g in groups.values()), reverse=True)
    print(f"clustering core, {n:,} accounts x 6 identifiers ({len(cut):,} super-nodes cut): "
          f"{core:.1f} s   baseline (group edges by node) {baseline:.1f} s   ratio {core / baseline:.2f}x")
    print(f"  clusters {len(groups):,}, largest {sizes[:5]}, linked accounts {sum(s for s in sizes if s > 1):,}")
    print(f"  peak RSS so far {rss_mb():,.0f} MB")
    return uf


def load_database(url: str, n: int, seed: int, uf: UnionFind) -> None:
    """Every account, its graph edges and its cluster, as incremental linking would have left them."""
    engine = make_engine(url)
    cut = super_nodes(n, seed)
    counts: dict = defaultdict(int)
    for _, ids in identifiers(n, seed):
        for node in ids:
            counts[node] += 1
    root_ids = {}
    started = time.perf_counter()
    with engine.begin() as conn:
        def flush(table, rows):
            if rows:
                conn.execute(table.insert(), rows)
                rows.clear()

        accounts, members, clusters, edge_rows, sightings = [], [], [], [], []
        sizes = defaultdict(int)
        for account, ids in identifiers(n, seed):
            root = uf.find(account) if account in uf.parent else account
            sizes[root] += 1
        for i, (account, ids) in enumerate(identifiers(n, seed)):
            at = T0 + timedelta(seconds=i)
            root = uf.find(account) if account in uf.parent else account
            cluster_id = root_ids.get(root)
            if cluster_id is None:
                cluster_id = root_ids[root] = f"cl_{len(root_ids)}"
                clusters.append({"id": cluster_id, "size": sizes[root], "first_seen_at": at, "created_at": at,
                                 "updated_at": at, **{f: 0 for f in MEMBER_FLAGS}})
            accounts.append({"id": account, "created_at": at, "first_seen_at": at, "last_seen_at": at,
                             "decision": "allow", "score": 0, "reasons": [], "required_verifications": [],
                             "subjects": {}, "cluster_id": cluster_id, "state_version": 1, "updated_at": at})
            members.append({"account_id": account, "cluster_id": cluster_id, "joined_at": at,
                            **{f: False for f in MEMBER_FLAGS}})
            for kind, value in ids:
                sightings.append({"kind": kind, "value_hash": value, "account_id": account, "evaluation_id": "ev",
                                  "occurred_at": at})
                if (kind, value) not in cut:
                    edge_rows.append({"kind": kind, "value_hash": value, "account_id": account})
            if len(accounts) >= 20000:
                flush(Account.__table__, accounts)
                flush(Cluster.__table__, clusters)
                flush(ClusterMember.__table__, members)
                flush(GraphEdge.__table__, edge_rows)
                flush(Sighting.__table__, sightings)
        flush(Account.__table__, accounts)
        flush(Cluster.__table__, clusters)
        flush(ClusterMember.__table__, members)
        flush(GraphEdge.__table__, edge_rows)
        flush(Sighting.__table__, sightings)
        nodes = [{"kind": k, "value_hash": v, "accounts": c, "super_node": (k, v) in cut, "first_seen_at": T0}
                 for (k, v), c in counts.items()]
        for i in range(0, len(nodes), 20000):
            conn.execute(GraphNode.__table__.insert(), nodes[i:i + 20000])
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("ANALYZE"))
    engine.dispose()
    print(f"  loaded {n:,} accounts into the database in {time.perf_counter() - started:.0f} s")


def bench_incremental(url: str, n: int, seed: int, count: int) -> None:
    engine = make_engine(url)
    sessions = make_session_factory(engine)
    rng = random.Random(seed + 1)
    existing = list(identifiers(n, seed))
    link_times, base_times = [], []
    for j in range(count):
        account = f"new{j}"
        # New accounts re-use identifiers of existing ones as often as the population does.
        donor = existing[rng.randrange(n)][1]
        ids = [node if rng.random() < 0.3 else (node[0], f"x{j}_{node[0]}") for node in donor]
        at = T0 + timedelta(days=29, seconds=j)
        with sessions() as s, s.begin():
            started = time.perf_counter()
            s.execute(Account.__table__.insert().values(
                id=account, created_at=at, first_seen_at=at, last_seen_at=at, decision="allow", score=0,
                reasons=[], required_verifications=[], subjects={}, state_version=1, updated_at=at))
            link(s, POLICY, account, ids, at)
            s.flush()
        link_times.append(time.perf_counter() - started)
        with sessions() as s, s.begin():
            started = time.perf_counter()
            s.execute(Account.__table__.insert().values(
                id=f"base{j}", created_at=at, first_seen_at=at, last_seen_at=at, decision="allow", score=0,
                reasons=[], required_verifications=[], subjects={}, state_version=1, updated_at=at))
            s.execute(Sighting.__table__.insert(), [
                {"kind": k, "value_hash": v, "account_id": f"base{j}", "evaluation_id": "ev", "occurred_at": at}
                for k, v in ids])
        base_times.append(time.perf_counter() - started)
    engine.dispose()

    def p(values, q):
        values = sorted(values)
        return values[min(int(len(values) * q), len(values) - 1)] * 1000

    print(f"incremental link against {n:,} accounts ({count} evaluations, {engine.dialect.name}): "
          f"median {p(link_times, .5):.2f} ms  p99 {p(link_times, .99):.2f} ms   "
          f"baseline (insert the account and its 6 rows) median {p(base_times, .5):.2f} ms  "
          f"p99 {p(base_times, .99):.2f} ms   ratio p99 {p(link_times, .99) / p(base_times, .99):.2f}x")


def bench_rebuild(url: str) -> None:
    engine = make_engine(url)
    sessions = make_session_factory(engine)
    started = time.perf_counter()
    with sessions() as s, s.begin():
        stats = rebuild(s, POLICY)
    took = time.perf_counter() - started
    engine.dispose()
    print(f"rebuild from sightings in the database: {took:.1f} s  ({stats})  peak RSS {rss_mb():,.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20,000 accounts")
    parser.add_argument("--accounts", type=int, default=None)
    parser.add_argument("--db-accounts", type=int, default=None,
                        help="accounts loaded into the database (default: --accounts, 20,000 with --quick)")
    parser.add_argument("--evaluations", type=int, default=500)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--skip-rebuild", action="store_true")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    n = args.accounts or (20_000 if args.quick else 1_000_000)
    db_n = args.db_accounts or n
    uf = bench_core(n, args.seed)
    tmp = tempfile.TemporaryDirectory(prefix="kyc-bench-")
    url = args.database_url or f"sqlite:///{Path(tmp.name) / 'graph.db'}"
    if args.database_url:
        print("  (the database given is written to: use an empty one)")
    upgrade_database(url)
    if db_n != n:
        uf = components(edges(db_n, args.seed, super_nodes(db_n, args.seed)))
    load_database(url, db_n, args.seed, uf)
    del uf
    bench_incremental(url, db_n, args.seed, args.evaluations)
    if not args.skip_rebuild:
        bench_rebuild(url)
    tmp.cleanup()


if __name__ == "__main__":
    main()
