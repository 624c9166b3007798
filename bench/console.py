"""Benchmark the ops console's pages on a farm-sized cluster, against a bare Flask page.

    python bench/console.py            # a cluster of 25,000 members, all held for review
    python bench/console.py --quick    # 2,500 members
    python bench/console.py --database-url postgresql+psycopg://postgres@127.0.0.1/bench_console

A farm the size of the 2026 distillation campaign (25,000 accounts linked by a phone range, a
/24 and an email shape) is written straight into the tables, every member with a signup
evaluation and held for review. Then the pages a person opens are timed through Flask's test
client, signed in, in the same process and run as a bare Flask endpoint rendering a small
template (the framework floor): the review queue (its 100 oldest and the held total), a
member's account page, the cluster page (summary, the 1,000 first members, the links of
the 60 drawn), the clusters list. Prints median and p99 in milliseconds and the ratio to the
floor.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flask import Flask, render_template_string  # noqa: E402
from sqlalchemy import delete, insert  # noqa: E402

from kyc import create_app, settle_for_serving  # noqa: E402
from kyc.config import PROJECT_ROOT, Config  # noqa: E402
from kyc.models import (Account, Cluster, ClusterMember, Evaluation, GraphEdge, GraphNode,  # noqa: E402
                        utcnow)
from kyc.ops.keys import create_key  # noqa: E402
from kyc.runtime import Runtime, upgrade_database  # noqa: E402

from stats import percentile  # noqa: E402  (bench/, the script's folder)

CHUNK = 5_000
CLUSTER = "cl_bench_farm"
LINKS = (("phone_range", "a" * 32), ("ip_prefix_day", "b" * 32), ("email_template", "c" * 32))
REASONS = [{"rule": "risky_cluster", "score": 35, "action": "review",
            "description": "A linked group whose members mostly use VoIP numbers, throwaway email, hosting IPs or automation"},
           {"rule": "disposable_email", "score": 30, "action": "verify", "description": "Email from a throwaway domain"}]
SIGNALS = {"email": {"valid": True, "domain": "mailinator.com", "disposable": True, "free": False,
                     "local_randomness": 0.93},
           "phone": {"valid": True, "line_type": "mobile", "region": "GB", "voip": False},
           "ip": {"country": "DE", "asn_org": "Example Hosting", "hosting": True, "phone_country_mismatch": True},
           "device": {"browser": "Chrome", "os": "Windows", "bot": False, "headless": False, "form_fill_ms": 900},
           "velocity": {"phone_range_24h": 1001, "ip_prefix_24h": 1001},
           "graph": {"cluster_size": 25_000, "cluster_growth_24h": 1001}}


def populate(rt: Runtime, members: int) -> None:
    now = utcnow()
    t = {m: m.__table__ for m in (Account, Cluster, ClusterMember, Evaluation, GraphEdge, GraphNode)}
    with rt.engine.begin() as conn:
        for model in (GraphEdge, GraphNode, ClusterMember, Evaluation, Account, Cluster):
            conn.execute(delete(t[model]))
        conn.execute(insert(t[Cluster]), [{"id": CLUSTER, "size": members, "first_seen_at": now - timedelta(days=2),
                                           "created_at": now, "updated_at": now, "blocked": 0, "labeled_fraud": 0,
                                           "disposable": members, "voip": 0, "hosting": members, "headless": 0}])
        conn.execute(insert(t[GraphNode]), [{"kind": k, "value_hash": h, "accounts": members, "super_node": False,
                                             "first_seen_at": now} for k, h in LINKS])
        for base in range(0, members, CHUNK):
            accounts, evaluations, memberships, edges = [], [], [], []
            for i in range(base, min(base + CHUNK, members)):
                account_id, evaluation_id = f"farm_{i:06d}", f"ev_bench_{i:06d}"
                at = now - timedelta(days=2) + timedelta(seconds=6 * i)
                accounts.append({"id": account_id, "created_at": at, "first_seen_at": at, "last_seen_at": at,
                                 "decision": "review", "score": 100, "reasons": REASONS, "required_verifications": [],
                                 "last_evaluation_id": evaluation_id, "state_version": 1,
                                 "updated_at": at, "review_since": at,
                                 "subjects": {"signup": {"subject": "signup", "evaluation_id": evaluation_id,
                                                         "occurred_at": at.isoformat(), "decision": "review"}}})
                evaluations.append({"id": evaluation_id, "account_id": account_id, "subject": "signup",
                                    "trigger": "live", "occurred_at": at, "created_at": at,
                                    "input": {"account_id": account_id, "email": f"qz{i}x@mailinator.com",
                                              "ip": f"185.220.101.{i % 250}", "phone": f"+4479460{i:05d}"},
                                    "signals": SIGNALS, "reasons": REASONS, "decision": "review", "score": 100,
                                    "required_verifications": [], "rules_version": rt.rules.version})
                memberships.append({"account_id": account_id, "cluster_id": CLUSTER, "joined_at": at,
                                    "blocked": False, "labeled_fraud": False, "disposable": True, "voip": False,
                                    "hosting": True, "headless": False})
                edges += [{"kind": k, "value_hash": h, "account_id": account_id} for k, h in LINKS]
            conn.execute(insert(t[Account]), accounts)
            conn.execute(insert(t[Evaluation]), evaluations)
            conn.execute(insert(t[ClusterMember]), memberships)
            conn.execute(insert(t[GraphEdge]), edges)


def timed(client, url: str, runs: int) -> list[float]:
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        answer = client.get(url)
        seconds.append(time.perf_counter() - started)
        assert answer.status_code == 200, (url, answer.status_code)
    return seconds


def summary(seconds: list[float]) -> tuple[float, float]:
    return statistics.median(seconds) * 1000, percentile(seconds, 0.99) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2,500 members instead of 25,000")
    parser.add_argument("--database-url", help="default: a SQLite file in a temporary folder")
    parser.add_argument("--runs", type=int, default=None, help="requests per page (default 30, --quick 15)")
    args = parser.parse_args()
    members = 2_500 if args.quick else 25_000
    runs = args.runs or (15 if args.quick else 30)
    folder = Path(tempfile.mkdtemp(prefix="kyc-bench-console-"))
    url = args.database_url or f"sqlite:///{folder / 'kyc.db'}"
    upgrade_database(url)
    config = Config.from_env({}, database_url=url, rules_dir=PROJECT_ROOT / "rules", data_dir=folder,
                             secret_key=b"bench", redis_url="", dev_key="", log_level="WARNING")
    rt = Runtime.start(config, migrate=False)
    started = time.perf_counter()
    populate(rt, members)
    print(f"{members:,} members written in {time.perf_counter() - started:.1f} s ({url.split(':')[0]})")
    with rt.session() as s, s.begin():
        _, key = create_key(s, "bench", "ops", "bench")
    app = create_app(runtime=rt)
    settle_for_serving()
    client = app.test_client()
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/console/login").text).group(1)
    assert client.post("/console/login", data={"api_key": key, "csrf_token": token}).status_code == 302

    floor = Flask("floor")

    @floor.get("/page")
    def page():
        return render_template_string("<!doctype html><title>{{ t }}</title><p>{{ t }}</p>", t="floor")

    floor_client = floor.test_client()
    pages = [("review queue (100 of all held)", "/console/queue"),
             ("account page", "/console/accounts/farm_000042"),
             (f"cluster page ({members:,} members)", f"/console/clusters/{CLUSTER}"),
             ("clusters list", "/console/clusters")]
    for _, url_ in pages:              # warm: templates compiled, statements prepared
        timed(client, url_, 2)
    timed(floor_client, "/page", 50)
    base_median, base_p99 = summary(timed(floor_client, "/page", runs * 10))
    print(f"{'page':<34}{'median ms':>11}{'p99 ms':>10}{'x floor':>10}")
    print(f"{'bare Flask page (floor)':<34}{base_median:>11.2f}{base_p99:>10.2f}{1:>10.0f}")
    for name, url_ in pages:
        median, p99 = summary(timed(client, url_, runs))
        print(f"{name:<34}{median:>11.1f}{p99:>10.1f}{median / base_median:>10.0f}")
    rt.engine.dispose()


if __name__ == "__main__":
    main()
