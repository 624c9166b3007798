"""Rescoring throughput: N stored accounts rescored by worker processes against PostgreSQL.

    python bench/rescore.py --quick            # 20,000 accounts
    python bench/rescore.py                    # 1,000,000 accounts (the issue's scale)
    python bench/rescore.py --quick --cluster-size 20000   # one farm's cluster of 20,000

Seeds a private PostgreSQL schema (COPY: accounts and their signup evaluation, with its
sightings, and each account's membership of a cluster of its own, as scoring leaves an account
that shares nothing, or with --cluster-size of a farm's cluster and the edges that link it;
then ANALYZE, since the server may run without autovacuum),
empties the Redis db (where velocity is counted: every count starts from this account alone),
enqueues one `rescore --all` run on Redis, starts `kyc worker --burst` processes and times them
until the run is finished. (A rescore reads the sightings only to know which velocity keys to
count, in one read per chunk.) Prints accounts/s, the median and p99
batch time, each worker's peak RSS (VmHWM, sampled while it runs), the CPU time spent per account by the workers
and their PostgreSQL backends (what an idle machine could do), and a ratio against a baseline measured in
the same run: the same pipeline called one account per transaction in one process (how
the rescoring worked before batches).

Settings: KYC_BENCH_POSTGRES_URL (default: KYC_TEST_POSTGRES_URL, else postgres@127.0.0.1/test)
and KYC_BENCH_REDIS_URL (default: KYC_TEST_REDIS_URL, else redis://127.0.0.1:6379/15). The
schema `bench_rescore` and that Redis db are emptied. The machine may be shared: run it more
than once and read the numbers as a range.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import create_engine, select, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import kyc.rescore.queue  # noqa: E402
import kyc.rescore.runs  # noqa: E402
from kyc import rescore  # noqa: E402
from kyc.config import PROJECT_ROOT, Config  # noqa: E402
from kyc.ids import new_id  # noqa: E402
from kyc.inputs import SignupInput  # noqa: E402
from kyc.models import Account, RescoreBatch  # noqa: E402
from kyc.runtime import Runtime, upgrade_database  # noqa: E402
from kyc.scoring import rescore_account, score  # noqa: E402
from kyc.signals import Lookups, _hashed, static_signals  # noqa: E402

from stats import percentile  # noqa: E402  (bench/, the script's folder)

SCHEMA = "bench_rescore"
SECRET = b"bench-secret"
USER_AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
    "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.0.0 Safari/537.36",
]
DOMAINS = ["gmail.com", "yahoo.com", "outlook.com", "mailinator.com", "example.org", "proton.me"]


def schema_url(base: str) -> str:
    engine = create_engine(base)
    with engine.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{SCHEMA}" CASCADE'))
        conn.execute(text(f'CREATE SCHEMA "{SCHEMA}"'))
    engine.dispose()
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options=-csearch_path%3D{SCHEMA}"


def body(i: int, rng: random.Random) -> dict:
    at = datetime(2025, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=rng.randrange(600 * 86400))
    return {
        "account_id": f"acct_{i:08d}",
        "email": f"user.{i}{rng.choice('abcxyz')}@{rng.choice(DOMAINS)}",
        "ip": f"{rng.choice((23, 45, 81, 98, 151, 185))}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}",
        "phone": f"+1415{rng.randrange(2000000, 9999999)}",
        "user_agent": USER_AGENTS[rng.randrange(len(USER_AGENTS) * 20) % len(USER_AGENTS)],
        "device_id": f"dv_{rng.randrange(max(1, i // 3 + 1))}",
        "timezone": "America/New_York",
        "locale": "en-US",
        "form_fill_ms": rng.randrange(800, 20000),
        "occurred_at": at.isoformat().replace("+00:00", "Z"),
    }


def seed(runtime: Runtime, n: int, cluster_size: int = 1) -> None:
    """COPY n accounts, each with one stored signup evaluation and its sightings, in clusters of
    `cluster_size` consecutive accounts (1: each its own). A larger cluster is linked as a farm's
    is, in a chain: each 50 members share a device, and a phone range overlaps each pair of
    device groups (graph edges of both), so a rescore reads what links each member."""
    rng = random.Random(7)
    lookups = Lookups(runtime.rules.lists, None, SECRET, runtime.geoip)
    # One real evaluation gives the stored shape (signals, reasons) every seeded row reuses.
    with runtime.session() as session, session.begin():
        template = score(runtime, session, "signup", SignupInput.model_validate(body(0, rng)))
        signals, version = json.dumps(template.signals), template.rules_version
    with runtime.engine.begin() as conn:
        conn.execute(text("TRUNCATE accounts, evaluations, sightings, clusters, cluster_members, rescore_runs, "
                          "rescore_batches, graph_edges CASCADE"))
    raw = runtime.engine.raw_connection()
    try:
        cur = raw.cursor()
        now = datetime.now(timezone.utc)
        step = 50_000
        for start in range(0, n, step):
            accounts, evaluations, sightings, clusters, members, edges = [], [], [], [], [], []
            for i in range(start, min(n, start + step)):
                inp = SignupInput.model_validate(body(i, rng))
                at = inp.occurred_at
                ev = new_id("ev")
                subjects = {"signup": {"evaluation_id": ev, "occurred_at": at.isoformat(), "decision": "allow",
                                       "score": 0, "reasons": [], "required_verifications": []}}
                cluster = f"cl_{i // cluster_size:08d}"
                accounts.append((inp.account_id, now, at, at, "allow", 0, "[]", "[]", ev, json.dumps(subjects), 1, now))
                if i % cluster_size == 0:
                    first = datetime(2025, 1, 1, tzinfo=timezone.utc)     # the members' events are later
                    clusters.append((cluster, min(cluster_size, n - i), first, now, now, 0, 0, 0, 0, 0, 0))
                members.append((inp.account_id, cluster, at, False, False, False, False, False, False))
                if cluster_size > 1:
                    edges += [("device", f"farm_d{i // 50}", inp.account_id),
                              ("phone_range", f"farm_p{(i + 25) // 50}", inp.account_id)]
                evaluations.append((ev, inp.account_id, "signup", "live", at, now, json.dumps(inp.stored()), signals,
                                    "[]", "allow", 0, "[]", version))
                for kind, value_hash in _hashed(lookups, static_signals(inp, lookups, at)[1]):
                    sightings.append((kind, value_hash, inp.account_id, ev, at))
            _copy(cur, "clusters (id, size, first_seen_at, created_at, updated_at, blocked, labeled_fraud, "
                       "disposable, voip, hosting, headless)", clusters)
            _copy(cur, "accounts (id, created_at, first_seen_at, last_seen_at, decision, score, reasons, "
                       "required_verifications, last_evaluation_id, subjects, state_version, updated_at)",
                  accounts)
            _copy(cur, "cluster_members (account_id, cluster_id, joined_at, blocked, labeled_fraud, disposable, voip, "
                       "hosting, headless)", members)
            _copy(cur, "evaluations (id, account_id, subject, trigger, occurred_at, created_at, input, signals, "
                       "reasons, decision, score, required_verifications, rules_version)", evaluations)
            _copy(cur, "sightings (kind, value_hash, account_id, evaluation_id, occurred_at)", sightings)
            _copy(cur, "graph_edges (kind, value_hash, account_id)", edges)
            raw.commit()
            print(f"  seeded {min(n, start + step):,}", end="\r", flush=True)
        cur.execute("ANALYZE")
        raw.commit()
    finally:
        raw.close()
    print()


def _copy(cur, target: str, rows: list[tuple]) -> None:
    with cur.copy(f"COPY {target} FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def baseline(runtime: Runtime, ids: list[str]) -> float:
    """Accounts/s of one account per transaction (no batching), one process."""
    started = time.perf_counter()
    for account_id in ids:
        with runtime.session() as session, session.begin():
            rescore_account(runtime, session, account_id)
    return len(ids) / (time.perf_counter() - started)


APP_NAME = "kyc-bench-worker"
TICKS = os.sysconf("SC_CLK_TCK")


def backend_times(runtime: Runtime) -> dict[int, float]:
    """CPU seconds used so far by each PostgreSQL backend serving the bench's workers (Linux /proc;
    the server must run on this machine, as the bench assumes)."""
    with runtime.engine.connect() as conn:
        pids = conn.execute(text("SELECT pid FROM pg_stat_activity WHERE application_name = :a"),
                            {"a": APP_NAME}).scalars().all()
    times = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        times[pid] = (int(fields[11]) + int(fields[12])) / TICKS      # utime + stime
    return times


def peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="20,000 accounts")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--baseline-sample", type=int, default=2000)
    parser.add_argument("--reuse", action="store_true", help="keep the seeded schema of a previous run")
    parser.add_argument("--cluster-size", type=int, default=1,
                        help="accounts per cluster (1: each its own; e.g. 25000: one farm, linked in a chain)")
    args = parser.parse_args()
    n = 20_000 if args.quick else args.accounts

    pg = os.environ.get("KYC_BENCH_POSTGRES_URL") or os.environ.get(
        "KYC_TEST_POSTGRES_URL") or "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    redis_url = (os.environ.get("KYC_BENCH_REDIS_URL") or os.environ.get("KYC_TEST_REDIS_URL")
                 or "redis://127.0.0.1:6379/15")
    if args.reuse:
        url = f"{pg}{'&' if '?' in pg else '?'}options=-csearch_path%3D{SCHEMA}"
    else:
        url = schema_url(pg)
        upgrade_database(url)
    data_dir = Path(tempfile.mkdtemp(prefix="kyc-bench-"))
    config = Config.from_env({}, database_url=url, rules_dir=PROJECT_ROOT / "rules", data_dir=data_dir,
                             secret_key=SECRET, redis_url=redis_url, dev_key="", log_level="WARNING")
    runtime = Runtime.start(config, migrate=False)
    if not args.reuse:
        t = time.perf_counter()
        seed(runtime, n, args.cluster_size)
        print(f"seeded {n:,} accounts in {time.perf_counter() - t:.1f}s")

    with runtime.session() as session:
        sample = list(session.scalars(select(Account.id).order_by(Account.id.desc()).limit(args.baseline_sample)))
    base = baseline(runtime, sample)
    print(f"baseline (one account per transaction, 1 process, {len(sample):,} accounts): {base:,.0f} accounts/s")

    connection = rescore.queue.redis_connection(config)
    connection.flushdb()
    t = time.perf_counter()
    run = rescore.runs.start_run(runtime, "all", reason="bench", batch_size=args.batch_size)
    rescore.runs.enqueue_batches(connection, run.id, range(run.batches))
    print(f"run {run.id}: {run.total:,} accounts in {run.batches:,} batches selected and enqueued in "
          f"{time.perf_counter() - t:.1f}s")

    worker_url = f"{url}&application_name={APP_NAME}"
    env = {**os.environ, "KYC_DATABASE_URL": worker_url, "KYC_REDIS_URL": redis_url, "KYC_SECRET_KEY": SECRET.decode(),
           "KYC_DATA_DIR": str(data_dir), "KYC_LOG_LEVEL": "WARNING", "KYC_RULES_DIR": str(config.rules_dir)}
    command = [sys.executable, "-c", "from kyc.cli import main; main()", "worker", "--burst"]
    started = time.perf_counter()
    workers = [subprocess.Popen(command, env=env, cwd=ROOT) for _ in range(args.workers)]
    peaks, worker_cpu, backend_cpu = {}, 0.0, {}
    running = {proc.pid: proc for proc in workers}
    while running:
        for pid, cpu in backend_times(runtime).items():      # the workers' PostgreSQL backends
            backend_cpu[pid] = cpu
        for pid in list(running):
            # VmHWM, the peak RSS of the worker's own memory. (wait4's ru_maxrss would also count
            # the copy of this parent process the child was forked from before its exec.)
            peaks[pid] = max(peaks.get(pid, 0.0), peak_rss_mb(pid))
            waited, status, usage = os.wait4(pid, os.WNOHANG)
            if waited:
                running.pop(pid).returncode = os.waitstatus_to_exitcode(status)
                worker_cpu += usage.ru_utime + usage.ru_stime
        time.sleep(0.2)
    wall = time.perf_counter() - started

    with runtime.session() as session:
        summary = rescore.runs.run_summary(session, session.get(type(run), run.id))
        spans = [(b.started_at, b.finished_at) for b in session.scalars(
            select(RescoreBatch).where(RescoreBatch.run_id == run.id))]
    done = [s for s in spans if s[0] and s[1]]
    durations = sorted((f - s).total_seconds() for s, f in done)
    busy = (max(f for _, f in done) - min(s for s, _ in done)).total_seconds() if done else float("nan")
    rate = summary["seen"] / busy
    print(f"rescored {summary['seen']:,}/{run.total:,} accounts with {args.workers} worker processes: "
          f"{summary['changed']:,} changed, {summary['escalated']:,} more severe")
    print(f"  throughput: {rate:,.0f} accounts/s (first batch start to last batch end, {busy:.1f}s); "
          f"{summary['seen'] / wall:,.0f} accounts/s including worker start-up ({wall:.1f}s)")
    if durations:
        print(f"  batch of {args.batch_size}: median {statistics.median(durations):.2f}s, "
              f"p99 {percentile(durations, 0.99):.2f}s")
    for pid, peak in peaks.items():
        print(f"  worker pid {pid}: peak RSS {peak:,.0f} MB (VmHWM)")
    pg_cpu = sum(backend_cpu.values())
    per_account = (worker_cpu + pg_cpu) / max(1, summary["seen"])
    print(f"  CPU: workers {worker_cpu:.1f}s + their PostgreSQL backends {pg_cpu:.1f}s = "
          f"{per_account * 1000:.2f} ms per account; 2 idle cores would allow ~{2 / per_account:,.0f} accounts/s")
    print(f"  ratio vs baseline: {rate / base:.2f}x total, {rate / args.workers / base:.2f}x per process")
    print(f"  target: >= 2,000 accounts/s total, < 500 MB per worker -> "
          f"{'met' if rate >= 2000 and max(peaks.values()) < 500 else 'NOT met'}")
    if any(p.returncode for p in workers) or summary["seen"] != run.total:
        sys.exit("a worker failed or the run is incomplete")
    runtime.engine.dispose()


if __name__ == "__main__":
    main()
