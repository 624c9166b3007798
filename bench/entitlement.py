"""Benchmark GET /v1/accounts/{id}/entitlement in-process, against a bare Flask endpoint.

    python bench/entitlement.py            # 1,000,000 accounts stored (populating takes a while)
    python bench/entitlement.py --quick    # 10,000 accounts, fewer requests

Both endpoints go through Flask's test client in the same process and run, so the ratio
shows what kyc adds on top of the framework floor: API-key check, the account row, its
verifications, the latest activity day (the high_volume tier's condition reads it), the
answer and its ETag. Prints median and p99 in milliseconds, for a 200 and for a 304
revalidation. Pass --database-url to use PostgreSQL or keep a populated SQLite file
(an already populated database is reused).
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flask import Flask, jsonify  # noqa: E402
from sqlalchemy import func, insert, select  # noqa: E402

from kyc import create_app, settle_for_serving  # noqa: E402
from kyc.config import PROJECT_ROOT, Config  # noqa: E402
from kyc.models import Account, ActivityDay, ApiKey, Verification  # noqa: E402
from kyc.persist import refresh_statistics  # noqa: E402
from kyc.runtime import Runtime, upgrade_database  # noqa: E402
from kyc.security import hash_api_key, new_api_key  # noqa: E402

from stats import percentile  # noqa: E402  (bench/, the script's folder)

CHUNK = 20_000
DECISIONS = ["allow"] * 7 + ["verify", "verify", "review"]


def settled(runtime: Runtime) -> None:
    """Planner statistics as a serving kyc keeps them (its schedule runs
    kyc.persist.refresh_statistics every minute; a bench's process lives less than that): on a
    server without autovacuum, a table written by the bench and never analyzed gets generic plans
    made blind (measured: a bulk call's sightings read, 438 ms before one ANALYZE, 10 ms after)."""
    refresh_statistics(runtime.engine)


def populate(runtime: Runtime, accounts: int) -> None:
    with runtime.engine.connect() as conn:
        have = conn.scalar(select(func.count()).select_from(Account))
    if have >= accounts:
        print(f"reusing {have:,} stored accounts")
        settled(runtime)
        return
    started = time.perf_counter()
    now = datetime.now(timezone.utc)
    rng = random.Random(7)
    with runtime.engine.begin() as conn:
        for base in range(have, accounts, CHUNK):
            rows, verifications, days = [], [], []
            for i in range(base, min(base + CHUNK, accounts)):
                decision = rng.choice(DECISIONS)
                seen = now - timedelta(days=rng.randint(0, 400))
                reasons = [] if decision == "allow" else [
                    {"rule": "disposable_email", "score": 30, "action": decision, "description": "Email from a throwaway domain"}]
                subjects = {"signup": {"evaluation_id": f"ev_{i:026d}", "occurred_at": seen.isoformat(),
                                       "decision": decision, "score": 30 if reasons else 0, "reasons": reasons,
                                       "required_verifications": ["phone"] if decision == "verify" else []}}
                if i % 3 == 0:
                    subjects["payment_method"] = {"evaluation_id": f"ev_p{i:025d}", "occurred_at": seen.isoformat(),
                                                  "decision": "allow", "score": 0, "reasons": [],
                                                  "required_verifications": []}
                rows.append({"id": f"acct_{i}", "created_at": seen, "first_seen_at": seen, "last_seen_at": seen,
                             "decision": decision, "score": 30 if reasons else 0, "reasons": reasons,
                             "required_verifications": ["phone"] if decision == "verify" else [],
                             "last_evaluation_id": f"ev_{i:026d}", "subjects": subjects, "state_version": 2,
                             "updated_at": seen})
                if i % 2 == 0:
                    for kind in ("email", "phone", "document"):
                        verifications.append({"id": f"vf_{kind[0]}{i:025d}", "account_id": f"acct_{i}", "kind": kind,
                                              "status": "verified", "attempts": 1, "sends": 1, "expires_at": seen,
                                              "created_at": seen, "completed_at": seen,
                                              "line_type": "mobile" if kind == "phone" else None})
                if i % 4 == 0:
                    days.append({"account_id": f"acct_{i}", "day": seen.date(), "requests": 100, "first_at": seen,
                                 "last_at": seen, "dormant_days": rng.randint(0, 5)})
            conn.execute(insert(Account), rows)
            if verifications:
                conn.execute(insert(Verification), verifications)
            if days:
                conn.execute(insert(ActivityDay), days)
            done = min(base + CHUNK, accounts)
            if done % 200_000 == 0 or done == accounts:
                print(f"  stored {done:,} accounts ({time.perf_counter() - started:.0f}s)", flush=True)
    settled(runtime)


SIGNUP = {"account_id": "acct_bench_template", "email": "jane.smith84@gmail.com", "ip": "73.15.1.1",
          "phone": "+14155550123", "device_id": "dv_bench_template", "form_fill_ms": 5400,
          "user_agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
                        "Chrome/131.0.0.0 Safari/537.36"}
PAYMENT = {"account_id": "acct_bench_template", "fingerprint": "fp_bench_template", "bin": "414720", "last4": "4242",
           "funding": "credit", "issuer_country": "US", "billing_country": "US", "billing_postal_code": "94107",
           "ip": "73.15.1.1", "device_id": "dv_bench_template"}


def store_evaluations(runtime: Runtime, ids: list[str]) -> None:
    """Store the evaluations that populate()'s accounts among `ids` name as their subjects' latest
    (populate writes only the accounts: 1,000,000 evaluations would take gigabytes), each with the
    signals of a real signup or payment method scored here, so what reads them (the usage check
    for riskier reports, a tier's conditions) reads real signals, once, as in production."""
    from kyc.models import Evaluation

    client = create_app(runtime=runtime).test_client()
    key = new_api_key()
    with runtime.session() as session, session.begin():
        session.add(ApiKey(name="bench-evaluations", prefix=key[:10], key_hash=hash_api_key(key), role="admin"))
    headers = {"Authorization": f"Bearer {key}"}
    signals = {}
    for subject, path, body in (("signup", "/v1/signups", SIGNUP), ("payment_method", "/v1/payment-methods", PAYMENT)):
        answer = client.post(path, json=body, headers=headers)
        assert answer.status_code == 200, answer.json
        with runtime.engine.connect() as conn:
            signals[subject] = conn.scalar(select(Evaluation.signals)
                                           .where(Evaluation.id == answer.json["evaluation_id"]))
    now = datetime.now(timezone.utc)
    with runtime.engine.begin() as conn:
        rows = []
        for account_id, subjects in conn.execute(select(Account.id, Account.subjects).where(Account.id.in_(ids))):
            for slot, latest in (subjects or {}).items():
                subject = latest.get("subject", slot.partition(":")[0])     # payment_method:<its hash>
                rows.append({"id": latest["evaluation_id"], "account_id": account_id, "subject": subject,
                             "trigger": "live", "occurred_at": now, "created_at": now, "input": {},
                             "signals": signals[subject], "reasons": latest["reasons"], "decision": latest["decision"],
                             "score": latest["score"], "required_verifications": latest["required_verifications"],
                             "rules_version": "bench"})
        stored = set(conn.scalars(select(Evaluation.id).where(Evaluation.id.in_([r["id"] for r in rows]))))
        fresh = [r for r in rows if r["id"] not in stored]
        if fresh:
            conn.execute(insert(Evaluation), fresh)
    settled(runtime)


def measure(call, n: int) -> tuple[list[float], list[float]]:
    """Wall-clock and CPU milliseconds per call. On a shared machine the wall-clock tail is
    mostly other processes taking the CPU away; CPU time shows what the call itself costs."""
    for _ in range(min(200, n)):          # warm up: caches, connection pool, code paths
        call()
    wall, cpu = [], []
    for _ in range(n):
        c0, t0 = time.thread_time(), time.perf_counter()
        call()
        wall.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.thread_time() - c0) * 1000)
    return wall, cpu


def report(name: str, measured: tuple[list[float], list[float]], floor: tuple[list[float], list[float]] | None
           ) -> None:
    for clock, samples, base in zip(("wall", "cpu"), measured, floor or (None, None)):
        med, tail = statistics.median(samples), percentile(samples, 0.99)
        ratio = f"  x{med / statistics.median(base):.1f} median, x{tail / percentile(base, 0.99):.1f} p99 vs floor" if base else ""
        print(f"{name:<34} {clock:<4} median {med:6.3f} ms   p95 {percentile(samples, 0.95):6.3f} ms   "
              f"p99 {tail:6.3f} ms{ratio}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10,000 accounts, 2,000 requests")
    parser.add_argument("--accounts", type=int, help="accounts stored (default 1,000,000; --quick 10,000)")
    parser.add_argument("--requests", type=int, help="requests measured per endpoint (default 5,000)")
    parser.add_argument("--database-url", help="default: a SQLite file in a temporary directory")
    args = parser.parse_args()
    accounts = args.accounts or (10_000 if args.quick else 1_000_000)
    requests = args.requests or (2_000 if args.quick else 5_000)

    workdir = Path(tempfile.mkdtemp(prefix="kyc-bench-"))
    url = args.database_url or f"sqlite:///{workdir / 'bench.db'}"
    upgrade_database(url)
    config = Config.from_env({}, database_url=url, rules_dir=PROJECT_ROOT / "rules", data_dir=workdir,
                             secret_key=b"bench", redis_url="", dev_key="", log_level="WARNING")
    runtime = Runtime.start(config, migrate=False)
    populate(runtime, accounts)
    key = new_api_key()
    with runtime.session() as session, session.begin():
        session.add(ApiKey(name="bench", prefix=key[:10], key_hash=hash_api_key(key)))
    headers = {"Authorization": f"Bearer {key}"}

    client = create_app(runtime=runtime).test_client()
    settle_for_serving()        # as `kyc serve` and wsgi.py do once the app is built
    rng = random.Random(11)
    ids = [f"acct_{rng.randrange(accounts)}" for _ in range(requests + 200)]
    # The evaluations their subjects name, as every account has: the tier's conditions read
    # them (once each, then cached); missing, each check would read again for nothing.
    store_evaluations(runtime, sorted(set(ids)))
    sample = client.get(f"/v1/accounts/{ids[0]}/entitlement?tier=high_volume", headers=headers)
    assert sample.status_code == 200, sample.json
    etags = {}

    floor_app = Flask("floor")
    body = sample.json

    @floor_app.get("/v1/accounts/<account_id>/entitlement")
    def bare(account_id):
        return jsonify(body)

    floor_client = floor_app.test_client()
    it = iter(ids * 3)

    # Long-lived objects of the setup (a million generated rows) out of the collector's way,
    # as a pre-forking server does after start-up; both endpoints run under the same setting.
    gc.collect()
    gc.freeze()
    floor = measure(lambda: floor_client.get(f"/v1/accounts/{next(it)}/entitlement?tier=high_volume",
                                             headers=headers), requests)

    def entitled():
        account = next(it)
        response = client.get(f"/v1/accounts/{account}/entitlement?tier=high_volume", headers=headers)
        etags[account] = response.headers["ETag"]

    full = measure(entitled, requests)
    revalidating = list(etags.items())
    rv = iter(revalidating * 3)

    def revalidate():
        account, tag = next(rv)
        response = client.get(f"/v1/accounts/{account}/entitlement?tier=high_volume",
                              headers={**headers, "If-None-Match": tag})
        assert response.status_code == 304

    cached = measure(revalidate, min(requests, len(revalidating)))
    print(f"entitlement benchmark: {accounts:,} accounts, {requests:,} requests each, "
          f"{'sqlite' if url.startswith('sqlite') else url.split(':')[0]}, tier high_volume")
    report("bare Flask endpoint (floor)", floor, None)
    report("entitlement 200", full, floor)
    report("entitlement 304 (If-None-Match)", cached, floor)
    runtime.engine.dispose()


if __name__ == "__main__":
    main()
