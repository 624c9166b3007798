"""Benchmark: score varied signups in-process through the full pipeline, with persistence.

Each signup goes through Flask's test client: auth, validation, signals, rules, and the
evaluation, account and sightings written in one transaction. The floor, measured in the same
run, is an authenticated no-op request (GET /v1/accounts/<missing> -> 404), so the ratio shows
what scoring adds on top of the framework and the key lookup.

    python bench/score_signup.py [--n 10000] [--backend sqlite|postgresql|both] [--quick] [--isolated]
                                 [--redis-url redis://127.0.0.1:6379/15]

Without Redis, the cluster rescoring that signups trigger runs on a background thread of this
process, which waits for pauses in the traffic (at most 5 s per group of accounts); the bench
prints how much of it ran during the timed run. `--isolated` lets it finish (untimed) before
each signup, which shows the latency of the request alone. `--redis-url` runs the deployment
a server with Redis runs: velocity counted in Redis, cluster rescoring queued for rq workers
(none runs here; the database given is flushed before and after).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import phonenumbers
from redis import Redis
from sqlalchemy import create_engine, event, text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kyc import create_app, settle_for_serving  # noqa: E402
from kyc.config import PROJECT_ROOT, Config  # noqa: E402
from kyc.rescore.background import drain  # noqa: E402
from kyc.runtime import upgrade_database  # noqa: E402

POSTGRES_URL = os.environ.get("KYC_BENCH_POSTGRES_URL") or "postgresql+psycopg://postgres@127.0.0.1:5432/test"

USER_AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.0.0 Safari/537.36",
    "python-requests/2.31.0",
]
DOMAINS = ["gmail.com", "outlook.com", "yahoo.com", "proton.me", "mailinator.com", "acme-corp.com", "uni.edu"]
FIRST = ["jane", "john", "mike", "anna", "li", "wei", "omar", "fatima", "carlos", "maria", "yuki", "olga", "raj",
         "priya", "kwame", "ama", "lucas", "sofia", "noah", "emma", "ivan", "chen", "ali", "sara", "tom", "eva"]
LAST = ["smith", "doe", "garcia", "nguyen", "kim", "patel", "muller", "rossi", "silva", "ivanov", "tanaka",
        "okafor", "cohen", "martin", "lopez", "wang", "singh", "khan", "brown", "dubois", "novak", "berg"]
REGIONS = ["US", "GB", "FR", "DE", "IN", "BR", "NG", "JP", "CA", "AU"]


def varied_signups(n: int, seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    phones = []
    for region in REGIONS:
        for kind in (phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE,
                     phonenumbers.PhoneNumberType.VOIP):
            example = phonenumbers.example_number_for_type(region, kind)
            if example:
                phones.append(phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.E164))
    bodies = []
    start = 1_790_000_000
    for i in range(n):
        name = rng.choice(FIRST) + rng.choice([".", "_", ""]) + rng.choice(LAST) + rng.choice(["", str(rng.randint(1, 99))])
        phone = rng.choice(phones)
        phone = phone[:-5] + f"{rng.randint(0, 99999):05d}"
        body = {
            "account_id": f"bench_{i}",
            "email": f"{name}@{rng.choice(DOMAINS)}",
            "ip": f"{rng.randint(11, 220)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
            "phone": phone,
            "user_agent": rng.choice(USER_AGENTS),
            # Most devices are seen once; a few are shared (families, shared computers, farms).
            "device_id": f"dv_{i}" if rng.random() < 0.95 else f"dv_shared_{rng.randint(0, n // 100)}",
            "timezone": "Europe/Paris",
            "locale": "en-US",
            "form_fill_ms": rng.randint(500, 60_000),
            "occurred_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start + i * 7)),
        }
        bodies.append(body)
    return bodies


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def database(backend: str, workdir: Path) -> str:
    if backend == "sqlite":
        url = f"sqlite:///{workdir / 'bench.db'}"
    else:
        engine = create_engine(POSTGRES_URL)
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA IF EXISTS kyc_bench CASCADE"))
            conn.execute(text("CREATE SCHEMA kyc_bench"))
        engine.dispose()
        url = POSTGRES_URL + "?options=-csearch_path%3Dkyc_bench"
    upgrade_database(url)
    return url


def run(backend: str, n: int, isolated: bool = False, redis_url: str = "") -> None:
    if redis_url:
        Redis.from_url(redis_url).flushdb()
    with tempfile.TemporaryDirectory() as tmp:
        url = database(backend, Path(tmp))
        config = Config.from_env({}, database_url=url, rules_dir=PROJECT_ROOT / "rules", data_dir=Path(tmp),
                                 secret_key=b"bench", dev_key="bench-key", log_level="WARNING",
                                 redis_url=redis_url)
        app = create_app(config)
        settle_for_serving()        # as `kyc serve` and wsgi.py do once the app is built
        client = app.test_client()
        headers = {"Authorization": "Bearer bench-key"}
        bodies = varied_signups(n)
        for body in bodies[:200]:                                  # warm caches and the connection pool
            client.post("/v1/signups", json={**body, "account_id": "warm_" + body["account_id"]}, headers=headers)
        floor = []
        for _ in range(min(n, 2000)):
            t0 = time.perf_counter()
            client.get("/v1/accounts/none", headers=headers)
            floor.append(time.perf_counter() - t0)
        # Round trips matter more than anything else here: count every statement sent while the
        # signups run (the rescoring they trigger in the background included).
        statements = [0]

        def count(*_args) -> None:
            statements[0] += 1

        engine = app.extensions["kyc"].engine
        event.listen(engine, "before_cursor_execute", count)
        latencies, cpu, thread_cpu = [], [], []
        started = time.perf_counter()
        for body in bodies:
            if isolated:
                drain(app.extensions["kyc"])
            t0, c0, tc0 = time.perf_counter(), time.process_time(), time.thread_time()
            response = client.post("/v1/signups", json=body, headers=headers)
            latencies.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            thread_cpu.append(time.thread_time() - tc0)
            assert response.status_code == 200, response.json
        elapsed = time.perf_counter() - started
        event.remove(engine, "before_cursor_execute", count)
        during = rescored(engine)
        drain(app.extensions["kyc"])          # cluster rescoring queued by the signups, before cleanup
        after = rescored(engine) - during
        app.extensions["kyc"].engine.dispose()
    if redis_url:
        Redis.from_url(redis_url).flushdb()
    med, p99 = statistics.median(latencies) * 1e3, percentile(latencies, 99) * 1e3
    fmed = statistics.median(floor) * 1e3
    label = backend + ("+redis" if redis_url else "")
    print(f"{label:<10} n={n:<6} median {med:6.2f} ms   p99 {p99:6.2f} ms   {n / elapsed:7.0f} signups/s   "
          f"floor median {fmed:5.2f} ms   ratio {med / fmed:4.1f}x   (target p99 < 10 ms: "
          f"{'met' if p99 < 10 else 'MISSED'})")
    # CPU time of this process only (the PostgreSQL server's work is not in it): on a shared
    # machine it shows what the code costs when wall-clock figures are inflated by other load.
    # The request's own thread apart from the whole process: without Redis, the cluster
    # rescoring that signups trigger runs on a background thread of this process, competing
    # with the requests for the interpreter.
    ms = 1e3
    print(f"{'':<10} SQL statements per signup {statements[0] / n:5.1f}   CPU per signup: request thread median "
          f"{statistics.median(thread_cpu) * ms:5.2f} ms p99 {percentile(thread_cpu, 99) * ms:5.2f} ms, "
          f"whole process median {statistics.median(cpu) * ms:5.2f} ms p99 {percentile(cpu, 99) * ms:5.2f} ms")
    # Without Redis the background thread waits for pauses in the traffic; a benchmark that never
    # pauses leaves most of it for after the timed run.
    if redis_url:
        print(f"{'':<10} cluster rescoring the signups asked for: queued for rq workers (not run here)")
    else:
        print(f"{'':<10} cluster rescoring the signups asked for: {during} account(s) rescored during the timed "
              f"run, {after} after it")


def rescored(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM evaluations WHERE trigger = 'rescore'")).scalar()

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--quick", action="store_true", help="1,000 signups")
    parser.add_argument("--isolated", action="store_true",
                        help="let background cluster rescoring finish (untimed) before each signup")
    parser.add_argument("--redis-url", default="",
                        help="velocity in this Redis, rescoring queued on it (a db of its own: it is flushed)")
    args = parser.parse_args()
    n = 1000 if args.quick else args.n
    for backend in (["sqlite", "postgresql"] if args.backend == "both" else [args.backend]):
        run(backend, n, args.isolated, args.redis_url)


if __name__ == "__main__":
    main()
