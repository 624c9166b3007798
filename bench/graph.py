"""Identity graph at scale: incremental linking and the full rebuild, in the database.

    python bench/graph.py --quick                 # 20,000 accounts, seconds
    python bench/graph.py                         # 1,000,000 accounts x 6 identifiers
    python bench/graph.py --database-url postgresql+psycopg://...   (default: a temporary SQLite file)

Synthetic accounts hold 6 identifiers (device, mailbox, phone: strong; network-day, email
template, phone range: weak) with households, farms, carrier NATs and common email shapes,
so there are real clusters and real super-nodes.

Steps, each line naming its database:
1. load the accounts and their sightings (no graph yet);
2. `rebuild` (what `kyc clusters rebuild` runs) on that empty graph: every account gets a
   cluster; seconds and the rebuild process's peak RSS (it runs in a process of its own);
3. incremental linking (kyc.graph.link) of new accounts, one transaction per evaluation as
   the scoring pipeline runs it (account row, link, sightings, commit): the link call's wall
   and CPU time (median, p99), and the whole transaction against a baseline transaction that
   writes the same rows without linking. Wall time on a shared machine includes waiting for
   a core; CPU time does not;
4. `rebuild` again on the built graph: seconds, peak RSS, and how many memberships it moved
   (0: the rebuild gives the clusters incremental linking gave).
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import random
import resource
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kyc.db import make_engine, make_session_factory  # noqa: E402
from kyc.persist import pipelined  # noqa: E402
from kyc.graph import Policy, link, rebuild, write_new  # noqa: E402
from kyc.models import Account, Sighting  # noqa: E402
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


def account_row(account: str, at: datetime) -> dict:
    return {"id": account, "created_at": at, "first_seen_at": at, "last_seen_at": at, "decision": "allow",
            "score": 0, "reasons": [], "required_verifications": [], "subjects": {}, "state_version": 1,
            "updated_at": at}


def load_database(url: str, n: int, seed: int) -> None:
    """Every account and its sightings, as the scoring pipeline records them; no graph yet."""
    engine = make_engine(url)
    started = time.perf_counter()
    rows = ((account, T0 + timedelta(seconds=i), ids) for i, (account, ids) in enumerate(identifiers(n, seed)))
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            cursor = conn.connection.dbapi_connection.cursor()
            accounts, sightings = [], []
            for account, at, ids in rows:
                accounts.append(account_row(account, at))
                sightings.extend((kind, value, account, "ev", at) for kind, value in ids)
                if len(accounts) == 50_000:
                    _copy(cursor, accounts, sightings)
            _copy(cursor, accounts, sightings)
        else:
            accounts, sightings = [], []
            for account, at, ids in rows:
                accounts.append(account_row(account, at))
                sightings.extend({"kind": k, "value_hash": v, "account_id": account, "evaluation_id": "ev",
                                  "occurred_at": at} for k, v in ids)
                if len(accounts) == 50_000:
                    conn.execute(Account.__table__.insert(), accounts)
                    conn.execute(Sighting.__table__.insert(), sightings)
                    accounts.clear()
                    sightings.clear()
            if accounts:
                conn.execute(Account.__table__.insert(), accounts)
                conn.execute(Sighting.__table__.insert(), sightings)
    if engine.dialect.name == "postgresql":
        # Committed, or the statistics roll back with the transaction; the tables loaded only
        # (a database-wide ANALYZE also waits on other schemas' locks).
        with engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE accounts, sightings")
    engine.dispose()
    took = time.perf_counter() - started
    print(f"[{engine.dialect.name}] loaded {n:,} accounts, {6 * n:,} sightings in {took:.0f} s")


def _copy(cursor, accounts: list, sightings: list) -> None:
    """PostgreSQL COPY: the bench's load is not what it measures."""
    with cursor.copy("COPY accounts (id, created_at, first_seen_at, last_seen_at, decision, score, reasons, "
                     "required_verifications, subjects, state_version, updated_at) FROM STDIN") as copy:
        for a in accounts:
            copy.write_row((a["id"], a["created_at"], a["first_seen_at"], a["last_seen_at"], "allow", 0, "[]", "[]",
                            "{}", 1, a["updated_at"]))
    with cursor.copy("COPY sightings (kind, value_hash, account_id, evaluation_id, occurred_at) FROM STDIN") as copy:
        for row in sightings:
            copy.write_row(row)
    accounts.clear()
    sightings.clear()


def _rebuild_child(url: str, out) -> None:
    logging.basicConfig(level=logging.INFO, format="  %(message)s")      # the rebuild's phase timings
    engine = make_engine(url)
    started, cpu = time.perf_counter(), time.process_time()
    with make_session_factory(engine)() as s, s.begin():
        stats = rebuild(s, POLICY)
    out.put((time.perf_counter() - started, time.process_time() - cpu,
             resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, stats))
    engine.dispose()


def bench_rebuild(url: str, what: str) -> dict:
    """The rebuild in a fresh process of its own, so its peak RSS is the rebuild's alone."""
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    child = context.Process(target=_rebuild_child, args=(url, out))
    child.start()
    took, cpu, rss, stats = out.get()
    child.join()
    dialect = make_engine(url).dialect.name
    cpu_note = ", SQLite's included" if dialect == "sqlite" else ", the server's apart"
    print(f"[{dialect}] rebuild, {what}: {took:.1f} s  (this process's CPU {cpu:.1f} s{cpu_note})  "
          f"peak RSS {rss:,.0f} MB  {stats}")
    return stats


def bench_incremental(url: str, n: int, seed: int, count: int) -> None:
    engine = make_engine(url)
    sessions = make_session_factory(engine)
    rng = random.Random(seed + 1)
    donors = sorted(rng.randrange(n) for _ in range(count))
    wanted = {f"a{i}" for i in donors}
    donor_ids = {account: ids for account, ids in identifiers(n, seed) if account in wanted}
    rng.shuffle(donors)
    link_wall, link_cpu, totals, base_totals = [], [], [], []
    for j, d in enumerate(donors):
        # New accounts re-use identifiers of existing ones as often as the population does.
        ids = [node if rng.random() < 0.3 else (node[0], f"x{j}_{node[0]}") for node in donor_ids[f"a{d}"]]
        at = T0 + timedelta(days=29, seconds=j)
        account = f"new{j}"
        with sessions() as s, pipelined(s):    # as the scoring pipeline runs it
            started = time.perf_counter()
            s.execute(Account.__table__.insert(), [account_row(account, at)])
            wall, cpu = time.perf_counter(), time.thread_time()
            member, cluster = link(s, POLICY, account, ids, at, new_account=True)
            write_new(s, member, cluster)      # the membership link made is its cost too
            s.flush()
            link_wall.append(time.perf_counter() - wall)
            link_cpu.append(time.thread_time() - cpu)
            s.execute(Sighting.__table__.insert(), [
                {"kind": k, "value_hash": v, "account_id": account, "evaluation_id": "ev", "occurred_at": at}
                for k, v in ids])
        totals.append(time.perf_counter() - started)
        with sessions() as s, pipelined(s):    # the same rows without linking; kinds that link nothing
            started = time.perf_counter()
            s.execute(Account.__table__.insert(), [account_row(f"base{j}", at)])
            s.execute(Sighting.__table__.insert(), [
                {"kind": f"base_{k}", "value_hash": v, "account_id": f"base{j}", "evaluation_id": "ev",
                 "occurred_at": at} for k, v in ids])
        base_totals.append(time.perf_counter() - started)
    engine.dispose()

    def p(values, q):
        values = sorted(values)
        return values[min(int(len(values) * q), len(values) - 1)] * 1000

    print(f"[{engine.dialect.name}] incremental link against {n:,} accounts, {count} evaluations: "
          f"link call wall median {p(link_wall, .5):.2f} ms p99 {p(link_wall, .99):.2f} ms, "
          f"CPU median {p(link_cpu, .5):.2f} ms p99 {p(link_cpu, .99):.2f} ms")
    print(f"  whole transaction median {p(totals, .5):.2f} ms p99 {p(totals, .99):.2f} ms   baseline (same rows, "
          f"no linking) median {p(base_totals, .5):.2f} ms p99 {p(base_totals, .99):.2f} ms   "
          f"ratio median {p(totals, .5) / p(base_totals, .5):.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20,000 accounts")
    parser.add_argument("--accounts", type=int, default=None)
    parser.add_argument("--evaluations", type=int, default=1000)
    parser.add_argument("--database-url", default="", help="an empty database (it is written to)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    n = args.accounts or (20_000 if args.quick else 1_000_000)
    tmp = tempfile.TemporaryDirectory(prefix="kyc-bench-")
    url = args.database_url or f"sqlite:///{Path(tmp.name) / 'graph.db'}"
    upgrade_database(url)
    load_database(url, n, args.seed)
    bench_rebuild(url, f"graph empty ({n:,} accounts)")
    bench_incremental(url, n, args.seed, args.evaluations)
    stats = bench_rebuild(url, f"graph built ({n + args.evaluations:,} accounts)")
    print(f"  memberships the second rebuild moved: {stats['members_moved']} (0: it gives the clusters incremental "
          f"linking gave)")
    tmp.cleanup()


if __name__ == "__main__":
    main()
