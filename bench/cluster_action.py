"""A farm action over one cluster of 25,000 accounts, with decision webhooks on.

    python bench/cluster_action.py                 # 25,000 members, PostgreSQL
    python bench/cluster_action.py --quick         # 2,000 members
    python bench/cluster_action.py --backend sqlite

Seeds one cluster whose members are held at review by the rules (each account with a stored
signup standing), then times `act_on_cluster` (one transaction: every member's decision and
override, the cluster's counters, one audit event and one outbox row per changed member),
alternating block and release so that every run changes every member. After each action it
times delivering the outbox to a gateway stub in another process (an HTTP server answering
200), with kyc's deliverer (CONCURRENCY POSTs in flight, pooled connections).

Baseline, in the same run: the same decision made one member at a time, each in its own
transaction, through the review service (what acting on a farm meant before: a person's
decision per account); measured on BASELINE_SAMPLE members and given per member.

Settings: KYC_BENCH_POSTGRES_URL (default: KYC_TEST_POSTGRES_URL, else postgres@127.0.0.1/test);
its schema `bench_cluster_action` is emptied. The machine may be shared: read figures as a range.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from sqlalchemy import create_engine, insert, select, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kyc.config import PROJECT_ROOT, Config  # noqa: E402
from kyc.models import Account, Cluster, ClusterMember, DecisionWebhook  # noqa: E402
from kyc.ops import webhooks  # noqa: E402
from kyc.ops.actions import act_on_cluster  # noqa: E402
from kyc.ops.reviews import review_account  # noqa: E402
from kyc.runtime import Runtime, upgrade_database  # noqa: E402

from stats import percentile  # noqa: E402  (bench/, the script's folder)

SCHEMA = "bench_cluster_action"
BASELINE_SAMPLE = 300
REASON = {"rule": "large_cluster", "score": 20, "action": "review", "description": "Member of a large cluster"}


def schema_url(base: str) -> str:
    engine = create_engine(base)
    with engine.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{SCHEMA}" CASCADE'))
        conn.execute(text(f'CREATE SCHEMA "{SCHEMA}"'))
    engine.dispose()
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options=-csearch_path%3D{SCHEMA}"


# --- the gateway stub (another process) -----------------------------------------------------------

def _serve(port, received) -> None:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers["Content-Length"]))
            with received.get_lock():
                received.value += 1
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    port.value = server.server_port
    server.serve_forever()


def start_gateway():
    port, received = multiprocessing.Value("i", 0), multiprocessing.Value("i", 0)
    process = multiprocessing.Process(target=_serve, args=(port, received), daemon=True)
    process.start()
    while not port.value:
        time.sleep(0.01)
    return f"http://127.0.0.1:{port.value}/kyc", received, process


# --- seeding ---------------------------------------------------------------------------------------

def seed(runtime: Runtime, members: int, cluster_id: str) -> None:
    at = datetime(2026, 11, 1, tzinfo=timezone.utc)
    now = datetime.now(timezone.utc)
    accounts, rows = [], []
    for i in range(members):
        account_id = f"acct_{i:08d}"
        signup = {"subject": "signup", "evaluation_id": f"ev_{i:08d}", "occurred_at": (at + timedelta(seconds=i)).isoformat(),
                  "decision": "review", "score": 20, "reasons": [REASON], "required_verifications": []}
        accounts.append({"id": account_id, "created_at": now, "first_seen_at": at, "last_seen_at": at,
                         "decision": "review", "score": 20, "reasons": [REASON], "required_verifications": [],
                         "last_evaluation_id": signup["evaluation_id"], "subjects": {"signup": signup},
                         "state_version": 1, "updated_at": now, "review_since": now})
        rows.append({"account_id": account_id, "cluster_id": cluster_id, "joined_at": at, "blocked": False,
                     "labeled_fraud": False, "disposable": False, "voip": False, "hosting": False, "headless": False})
    with runtime.engine.begin() as conn:
        conn.execute(insert(Cluster.__table__), [{"id": cluster_id, "size": members, "first_seen_at": at,
                                                  "created_at": now, "updated_at": now, "blocked": 0,
                                                  "labeled_fraud": 0, "disposable": 0, "voip": 0, "hosting": 0,
                                                  "headless": 0}])
        for start in range(0, members, 5000):
            conn.execute(insert(Account.__table__), accounts[start:start + 5000])
            conn.execute(insert(ClusterMember.__table__), rows[start:start + 5000])
        if conn.dialect.name == "postgresql":
            conn.execute(text("ANALYZE"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2,000 members instead of 25,000")
    parser.add_argument("--members", type=int, default=None)
    parser.add_argument("--runs", type=int, default=5, help="actions timed (alternating block and release)")
    parser.add_argument("--backend", choices=("postgresql", "sqlite"), default="postgresql")
    args = parser.parse_args()
    members = args.members or (2_000 if args.quick else 25_000)

    tmp = tempfile.TemporaryDirectory(prefix="kyc-bench-action-")
    if args.backend == "sqlite":
        url = f"sqlite:///{Path(tmp.name) / 'bench.db'}"
    else:
        url = schema_url(os.environ.get("KYC_BENCH_POSTGRES_URL") or os.environ.get(
            "KYC_TEST_POSTGRES_URL") or "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    upgrade_database(url)
    hook_url, received, gateway = start_gateway()
    config = Config.from_env({}, database_url=url, rules_dir=PROJECT_ROOT / "rules", data_dir=Path(tmp.name),
                             secret_key=b"bench", redis_url="", dev_key="", log_level="WARNING",
                             decision_webhook_url=hook_url, decision_webhook_secret="bench-secret")
    runtime = Runtime.start(config, migrate=False)
    cluster_id = "cl_bench_farm"
    print(f"seeding one cluster of {members:,} accounts ({args.backend}) ...", flush=True)
    seed(runtime, members, cluster_id)

    actions, deliveries = [], []
    for run in range(args.runs):
        action = "block" if run % 2 == 0 else "release"
        before = received.value
        started = time.perf_counter()
        done = act_on_cluster(runtime, cluster_id, action, f"bench run {run}", "key:bench")
        actions.append(time.perf_counter() - started)
        assert done.members == members and done.changed == members, done
        # Delivered by the process's delivery thread, woken by the action's commit.
        while received.value - before < members:
            time.sleep(0.01)
        deliveries.append(time.perf_counter() - started - actions[-1])
        print(f"  run {run + 1}: {action:<7} {actions[-1]:6.2f} s   webhooks delivered in {deliveries[-1]:6.2f} s "
              f"({members / deliveries[-1]:,.0f}/s)", flush=True)

    # Baseline: one person's decision per member, one transaction each (the review service).
    sample = [f"acct_{i:08d}" for i in range(min(BASELINE_SAMPLE, members))]
    started = time.perf_counter()
    for account_id in sample:
        with runtime.session() as session, session.begin():
            review_account(runtime, session, account_id, "block", "baseline", "key:bench")
    per_member = (time.perf_counter() - started) / len(sample)
    with runtime.session() as session:
        outbox = session.scalar(select(DecisionWebhook.id).order_by(DecisionWebhook.id.desc()).limit(1))

    median, p99 = statistics.median(actions), percentile(actions, 0.99)
    print(f"\ncluster action, {members:,} members, webhooks on ({args.backend}; {args.runs} runs; "
          f"machine shared, load {os.getloadavg()[0]:.1f}):")
    print(f"  action (one transaction)     median {median:6.2f} s   p99 {p99:6.2f} s   "
          f"({median / members * 1e6:,.0f} us per member)")
    print(f"  webhook delivery             median {statistics.median(deliveries):6.2f} s   p99 "
          f"{percentile(deliveries, 0.99):6.2f} s   ({members / statistics.median(deliveries):,.0f} events/s, "
          f"{webhooks.CONCURRENCY} in flight)")
    print(f"  baseline: one review per member, one transaction each: {per_member * 1e3:.2f} ms per member "
          f"-> {per_member * members:,.1f} s for the cluster")
    print(f"  ratio baseline / action: {per_member * members / median:,.1f}x   (outbox rows written: {outbox:,})")
    runtime.engine.dispose()
    gateway.terminate()
    tmp.cleanup()


if __name__ == "__main__":
    main()
