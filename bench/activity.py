"""Benchmark activity ingestion: POST /v1/activity (bulk) against the same reports one call each.

    python bench/activity.py --database-url postgresql+psycopg://...   # 1,000,000 accounts stored
    python bench/activity.py --quick                                    # 10,000 accounts, SQLite
    python bench/activity.py --database-url ... --redis-url redis://127.0.0.1:6379/9   # velocity in Redis

Accounts are stored as bench/entitlement.py stores them (reused when the database holds them
already); the reported accounts each get a real signup evaluation, so the check for riskier
usage reads and evaluates real stored signals. The reports are ordinary usage (inside the
tier's quota, nothing re-evaluates). In-process through Flask's test client, both ways in the
same run: bulk calls of --batch reports, each an account's first report of its day; the same
accounts again (what a gateway mostly sends: the day started, the identifiers linked, a third
template that day); then single reports, each on fresh (account, hour) pairs. Prints reports/s by wall clock and by CPU time (one core),
per-call median and p99, and the ratio bulk / single. The identifiers the reports show are
linked into the identity graph in each call's transaction (kyc.usage.identifiers.link_reports):
"request" CPU is the calling thread's (what answering the gateway costs), "with linking" the
whole process's until its background thread (cluster rescoring) is done (drained). On a local
PostgreSQL, each line also gives the CPU its client backends spent a call (read from /proc) and,
where the server loads pg_stat_statements and the database has the extension, the server's time
in statements a call: the figure to compare in an A/B of a statement or a plan (http_load.statement_ms).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import bindparam, create_engine, insert, select, update  # noqa: E402

from kyc import create_app, settle_for_serving  # noqa: E402
from kyc.config import PROJECT_ROOT, Config  # noqa: E402
from kyc.rescore.background import drain  # noqa: E402
from kyc.models import Account, ApiKey, Cluster, ClusterMember, Evaluation  # noqa: E402
from kyc.persist import in_list  # noqa: E402
from kyc.runtime import Runtime, upgrade_database  # noqa: E402
from kyc.security import hash_api_key, new_api_key  # noqa: E402

from http_load import backend_ticks, cpu_seconds, statement_ms  # noqa: E402  (bench/, the script's folder)
from stats import percentile  # noqa: E402

_spec = importlib.util.spec_from_file_location("bench_entitlement", Path(__file__).with_name("entitlement.py"))
entitlement_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(entitlement_bench)

SIGNUP = {"account_id": "acct_template", "email": "jane.smith84@gmail.com", "ip": "73.15.1.1",
          "phone": "+14155550123", "device_id": "dv_template", "form_fill_ms": 5400,
          "user_agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
                        "Chrome/131.0.0.0 Safari/537.36", "occurred_at": "2026-01-05T12:00:00Z"}


def give_evaluations(runtime: Runtime, client, headers: dict, ids: list[str]) -> None:
    """One real signup evaluation's signals, stored as the latest signup evaluation of each
    account, last seen the day before the reports start (steady usage, no wake-up)."""
    answer = client.post("/v1/signups", json=SIGNUP, headers=headers).json
    with runtime.engine.begin() as conn:
        signals = conn.scalar(select(Evaluation.signals).where(Evaluation.id == answer["evaluation_id"]))
        rows, updates = [], []
        for account_id in ids:
            ev = f"ev_bench_{account_id}"      # one per account: runs with other seeds reuse none
            rows.append({"id": ev, "account_id": account_id, "subject": "signup", "trigger": "live",
                         "occurred_at": answer_time(), "created_at": answer_time(),
                         "input": {**SIGNUP, "account_id": account_id}, "signals": signals,
                         "reasons": [], "decision": "allow", "score": 0, "required_verifications": [],
                         "rules_version": "bench"})
            updates.append({"i": account_id, "subjects": {"signup": {
                "subject": "signup", "evaluation_id": ev, "occurred_at": answer_time().isoformat(), "decision": "allow",
                "score": 0, "reasons": [], "required_verifications": []}}})
        # kyc's in_list: one parameter whatever the count (an expanding IN of 80,000 ids passes
        # PostgreSQL's limit of 65,535 parameters).
        existing = set(conn.scalars(select(Evaluation.id).where(in_list(Evaluation.id, "ids")),
                                    {"ids": [r["id"] for r in rows]}))
        fresh = [r for r in rows if r["id"] not in existing]
        if fresh:
            conn.execute(insert(Evaluation), fresh)
        # Each in a cluster of its own, as its signup left it.
        members = set(conn.scalars(select(ClusterMember.account_id).where(in_list(ClusterMember.account_id, "ids")),
                                   {"ids": ids}))
        alone = [a for a in ids if a not in members]
        if alone:
            conn.execute(insert(Cluster), [{"id": f"cl_bench_{a}", "size": 1, "first_seen_at": answer_time()}
                                           for a in alone])
            conn.execute(insert(ClusterMember), [{"account_id": a, "cluster_id": f"cl_bench_{a}",
                                                  "joined_at": answer_time()} for a in alone])
        # Seen the day before the reports: ordinary steady usage, no wake-up.
        conn.execute(update(Account).where(Account.id == bindparam("i")).values(
            subjects=bindparam("subjects"), decision="allow", first_seen_at=answer_time(),
            last_seen_at=answer_time().replace(month=2, day=28)),
                     updates, execution_options={"synchronize_session": False})


def answer_time():
    from datetime import datetime, timezone

    return datetime(2026, 1, 5, 12, tzinfo=timezone.utc)


def reports_for(ids: list[str], start_day: int, rng: random.Random, tool: str) -> list[dict]:
    """One ordinary report per account: an hour's usage well inside the free quota, from an
    address of its own network, on one of 50 popular templates (named `tool`_0..49) and one of
    its own (unrelated customers: nothing links them)."""
    out = []
    for n, account_id in enumerate(ids):
        day, hour = start_day + n // (len(ids) // 20 + 1) // 24, n // (len(ids) // 20 + 1) % 24
        out.append({"account_id": account_id, "occurred_at": f"2026-03-{1 + day % 28:02d}T{hour:02d}:{rng.randrange(60):02d}:00Z",
                    "window_seconds": 3600, "requests": rng.randint(1, 30), "tier": "free",
                    "ip": f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}", "api_key_id": f"key_{account_id}",
                    "user_agent": "python-httpx/0.27.0", "tokens_in": rng.randint(100, 5000),
                    "tokens_out": rng.randint(100, 5000), "models": {"model-small": 10},
                    "prompt_fingerprints": {f"{tool}_{rng.randrange(50)}": 5, f"pf_{account_id}_{rng.randrange(3)}": 5},
                    "interval_cv": round(rng.uniform(0.3, 2.0), 3)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10,000 accounts, fewer reports")
    parser.add_argument("--accounts", type=int, help="accounts stored (default 1,000,000; --quick 10,000)")
    parser.add_argument("--reports", type=int, help="reports sent each way (default 20,000; --quick 4,000)")
    parser.add_argument("--singles", type=int, help="reports sent one per call (default: as many as --reports; "
                                                    "fewer keeps a run short on a loaded machine, rates compare)")
    parser.add_argument("--batch", type=int, default=1000, help="reports per bulk call")
    parser.add_argument("--seed", type=int, default=5, help="which accounts report (another seed: other accounts, "
                                                            "so runs on one database each start fresh days)")
    parser.add_argument("--database-url", help="default: a SQLite file in a temporary directory")
    parser.add_argument("--redis-url", default="",
                        help="velocity counts in this Redis, as a production deployment keeps them (default: in the "
                             "database, kyc's embedded default); rescoring jobs then go to its queues, none of which "
                             "this bench's steady reports ask for")
    args = parser.parse_args()
    accounts = args.accounts or (10_000 if args.quick else 1_000_000)
    count = args.reports or (4_000 if args.quick else 20_000)
    singles_count = min(args.singles or count, count)

    workdir = Path(tempfile.mkdtemp(prefix="kyc-bench-"))
    url = args.database_url or f"sqlite:///{workdir / 'bench.db'}"
    upgrade_database(url)
    config = Config.from_env({}, database_url=url, rules_dir=PROJECT_ROOT / "rules", data_dir=workdir,
                             secret_key=b"bench", redis_url=args.redis_url, dev_key="", log_level="WARNING")
    runtime = Runtime.start(config, migrate=False)
    entitlement_bench.populate(runtime, accounts)
    key = new_api_key()
    with runtime.session() as session, session.begin():
        session.add(ApiKey(name="bench", prefix=key[:10], key_hash=hash_api_key(key), role="admin"))
    headers = {"Authorization": f"Bearer {key}"}
    client = create_app(runtime=runtime).test_client()
    rng = random.Random(args.seed)
    ids = rng.sample(range(accounts), min(accounts, 2 * count))
    ids = [f"acct_{i}" for i in ids]
    give_evaluations(runtime, client, headers, ids)
    entitlement_bench.settled(runtime)
    settle_for_serving()

    # Each seed's popular templates are its own: runs on one database share the same days, and
    # shared templates would gain users run after run until they passed KYC_USAGE_POPULAR_PROMPT
    # (then lockstep reads them no more), so consecutive runs measured different work.
    tool = f"pf_seed{args.seed}"
    bulk_reports = reports_for(ids[:count], 0, rng, tool)
    single_reports = reports_for(ids[count:2 * count] or ids[:count], 30, rng, tool)[:singles_count]
    warm = client.post("/v1/activity", json={"reports": reports_for(ids[:50], 60, rng, tool)}, headers=headers)
    assert warm.status_code == 200, warm.json

    drain(runtime)

    # PostgreSQL's side: its client backends' CPU (this process's pooled connections), when local.
    admin = (create_engine(url) if url.startswith("postgresql") and ("127.0.0.1" in url or "localhost" in url)
             else None)

    def run(calls):
        """(wall s, request-thread CPU s, process CPU s until linked, per-call wall ms, per-call CPU ms,
        (PostgreSQL CPU s, its time in statements ms or None) or None)."""
        # Statistics as the serving schedule keeps them (refreshed every minute): the run before
        # wrote rows to tables last analyzed empty, and a phase of single reports lasts minutes
        # (measured: 48.6 ms of PostgreSQL CPU a single report planned blind, 1.6 ms analyzed).
        entitlement_bench.settled(runtime)
        pg_before = (backend_ticks(admin), statement_ms(admin)) if admin is not None else None
        wall, cpu = [], []
        p_all, c_all, t_all = time.process_time(), time.thread_time(), time.perf_counter()
        for path, body in calls:
            c0, t0 = time.thread_time(), time.perf_counter()
            answer = client.post(path, data=body, content_type="application/json", headers=headers)
            wall.append((time.perf_counter() - t0) * 1000)
            cpu.append((time.thread_time() - c0) * 1000)
            assert answer.status_code == 200, answer.json
            assert not any(r["reevaluated"] for r in answer.json.get("results", [answer.json]))
        took, request_cpu = time.perf_counter() - t_all, time.thread_time() - c_all
        drain(runtime)
        pg = None
        if admin is not None:
            statements = statement_ms(admin)
            pg = (cpu_seconds(pg_before[0], backend_ticks(admin)),
                  statements - pg_before[1] if statements is not None else None)
        return took, request_cpu, time.process_time() - p_all, wall, cpu, pg

    bodies = [("/v1/activity", json.dumps({"reports": bulk_reports[i:i + args.batch]}))
              for i in range(0, len(bulk_reports), args.batch)]
    bulk_wall, bulk_cpu, bulk_linked, wall, cpu, bulk_pg = run(bodies)
    # The same accounts again, later that hour, with what they showed before and one more
    # template of their own: a gateway's usual report (its day started, its identifiers linked,
    # three templates that day, so the lockstep facts are read).
    again = [{**r, "prompt_fingerprints": {**r["prompt_fingerprints"], f"pf_{r['account_id']}_more": 5}}
             for r in bulk_reports]
    again_wall, again_cpu, again_linked, awall, acpu, again_pg = run(
        [("/v1/activity", json.dumps({"reports": again[i:i + args.batch]})) for i in range(0, len(again), args.batch)])
    singles = [(f"/v1/accounts/{r['account_id']}/activity", json.dumps({k: v for k, v in r.items() if k != "account_id"}))
               for r in single_reports]
    single_wall, single_cpu, single_linked, swall, scpu, single_pg = run(singles)

    backend = "sqlite" if url.startswith("sqlite") else url.split(":")[0]
    print(f"activity ingestion: {accounts:,} accounts stored, {count:,} reports in bulk, {singles_count:,} one per call, "
          f"{backend}, bulk calls of {args.batch}, velocity in {'Redis' if args.redis_url else 'the database'}")

    def line(name, n, wall_s, cpu_s, linked_s, per_call_wall, per_call_cpu, pg_s):
        database = ""
        if pg_s is not None:
            database = f", PostgreSQL {pg_s[0] * 1000 / len(per_call_cpu):8.2f} ms CPU a call"
            if pg_s[1] is not None:
                database += f" ({pg_s[1] / len(per_call_cpu):.2f} ms in statements)"
        print(f"{name:<22} {n / wall_s:9,.0f} reports/s wall  {n / cpu_s:9,.0f} reports/s request CPU (one core)  "
              f"{n / linked_s:9,.0f} with linking   per call: median {statistics.median(per_call_wall):8.2f} ms  "
              f"p99 {percentile(per_call_wall, 0.99):8.2f} ms wall, "
              f"median {statistics.median(per_call_cpu):8.2f} ms CPU{database}")

    line("bulk POST /v1/activity", count, bulk_wall, bulk_cpu, bulk_linked, wall, cpu, bulk_pg)
    line("bulk, same accounts again", count, again_wall, again_cpu, again_linked, awall, acpu, again_pg)
    line("one report per call", singles_count, single_wall, single_cpu, single_linked, swall, scpu, single_pg)
    print(f"bulk / single: x{(count / bulk_wall) / (singles_count / single_wall):.1f} wall, "
          f"x{(count / bulk_cpu) / (singles_count / single_cpu):.1f} request CPU, "
          f"x{(count / bulk_linked) / (singles_count / single_linked):.1f} with linking")
    runtime.engine.dispose()
    if admin is not None:
        admin.dispose()


if __name__ == "__main__":
    main()
