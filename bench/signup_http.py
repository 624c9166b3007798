"""Signups over HTTP: wrk against gunicorn and PostgreSQL, beside a bare Flask JSON endpoint in
the same run, and optionally against another revision of kyc (an A/B).

    python bench/signup_http.py [--database-url postgresql+psycopg://...] [--against 6c06bbd]
                                [--duration 15] [--rounds 2] [--workers 2] [--connections 8]

Each side is served by gunicorn (--workers, each side's own gunicorn.conf.py if it has one)
from its own checkout: this one, and with --against a `git worktree` of that revision run with
the same interpreter and its checkout first on the import path (its own rules and migrations).
Before each of its runs a side gets the same database freshly migrated by its own code (schema
kyc_bench_signup, dropped and made again), then a few seconds of warm-up signups, then an
ANALYZE of the tables that grew (measure says why; --blind-plans leaves it out). wrk posts
varied, realistic signups (bench/score_signup.py's generator: each a new account, with its
email, phone, IP, user agent and device) read by its Lua script from a file, one per request,
authenticated with the development key. Runs alternate between the apps, round after round,
since load on a shared machine drifts.

Prints, per run, requests/s, wrk's latency p50 and p99, and the CPU per signup of gunicorn's
workers and of PostgreSQL's backends (their /proc/<pid>/stat before and after the timed run);
then kyc's share of bare Flask's requests/s and, with --against, this checkout / that revision.
Rescoring runs in-process (no Redis), so a worker's CPU includes the cluster rescoring its
signups ask for. Compare the ratios of one run, not absolute figures, on a loaded machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, text  # noqa: E402

from http_load import check_imports, free_port, revision, start, stop, wrk, wrk_with_cpu  # noqa: E402
from score_signup import varied_signups  # noqa: E402

from kyc.persist import refresh_statistics  # noqa: E402

SCHEMA = "kyc_bench_signup"
DEV_KEY = "bench-signup-key"

LUA = """
local bodies = {}
for line in io.lines("%(path)s") do bodies[#bodies + 1] = line end
local headers = {["Authorization"] = "Bearer %(key)s", ["Content-Type"] = "application/json"}
local threads, next_id, sent = %(threads)d, 0, 0
setup = function(thread)
  thread:set("offset", next_id)
  next_id = next_id + 1
end
request = function()
  -- Threads take turns through the file: every signup in it is sent once before any repeats.
  local i = (sent * threads + offset) %% #bodies + 1
  sent = sent + 1
  return wrk.format("POST", "/v1/signups", headers, bodies[i])
end
"""


def bodies_file(directory: Path, name: str, bodies: list[dict]) -> Path:
    path = directory / f"{name}.jsonl"
    path.write_text("".join(json.dumps(b, separators=(",", ":")) + "\n" for b in bodies))
    return path


def side_env(checkout: Path, database_url: str, data_dir: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(checkout), "KYC_DATABASE_URL": database_url,
            "KYC_RULES_DIR": str(checkout / "rules"), "KYC_DATA_DIR": str(data_dir), "KYC_SECRET_KEY": "bench",
            "KYC_DEV_KEY": DEV_KEY, "KYC_LOG_LEVEL": "WARNING", "KYC_RULES_POLL_SECONDS": "0", "KYC_REDIS_URL": ""}


def fresh_database(admin_url: str, checkout: Path, env: dict) -> None:
    """Drop and make the bench schema again, then migrate it with the side's own code."""
    engine = create_engine(admin_url)
    with engine.begin() as conn:
        conn.execute(text(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
        conn.execute(text(f"CREATE SCHEMA {SCHEMA}"))
    engine.dispose()
    subprocess.run([sys.executable, "-c", "import sys; from kyc.runtime import upgrade_database; "
                                          "upgrade_database(sys.argv[1])", env["KYC_DATABASE_URL"]],
                   cwd=checkout, env=env, check=True, stdout=subprocess.DEVNULL)


def measure(server, port: int, admin_engine, script: str, warm_script: str, args, *, schema_engine=None) -> dict:
    """`schema_engine` (on the bench schema): after the warm-up, its planner statistics as a
    serving database has them. autovacuum, or kyc's schedule where it is off, analyzes every
    minute the tables that grew (kyc.persist.refresh_statistics, called here). A timed run of
    seconds on a schema made just before gets neither, and kyc's generic plans
    (kyc.db._generic_plans), made while the tables were empty, then stay for the whole run
    (measured in process, 5,000 signups: the graph link statement 1.64 ms a signup in the bench
    against 0.39-0.43 ms replayed on the same tables with fresh plans). An ANALYZE also makes
    every connection plan its prepared statements again. --blind-plans leaves it out."""
    wrk(port, warm_script, args.warmup, args.threads, args.connections)
    if schema_engine is not None:
        refresh_statistics(schema_engine)
    result = wrk_with_cpu(server, port, script, args.duration, args.threads, args.connections, admin_engine)
    done = max(1, result["requests"] - result["non_2xx"])
    return {**result, "worker_ms": result["worker_cpu"] * 1e3 / done, "pg_ms": result["pg_cpu"] * 1e3 / done}


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=os.environ.get("KYC_BENCH_POSTGRES_URL")
                        or "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--against", metavar="REV", help="also run this revision of kyc (a git worktree of it)")
    parser.add_argument("--duration", type=int, default=15, help="seconds per timed wrk run")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of warm-up signups before each timed run")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each app, alternated")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers, every app")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--signups", type=int, default=30_000, help="distinct signups in the file wrk sends")
    parser.add_argument("--blind-plans", action="store_true",
                        help="do not analyze the schema after the warm-up (what earlier runs measured)")
    args = parser.parse_args()
    if not args.database_url.startswith("postgresql"):
        parser.error("--database-url: a PostgreSQL database (its backends' CPU is measured)")

    work = Path(tempfile.mkdtemp(prefix="kyc-bench-signup-"))
    sides = {"kyc": ROOT}
    checkouts = ExitStack()                  # the other side's worktree, removed at the end
    if args.against:
        sides[f"kyc@{args.against}"] = checkouts.enter_context(revision(ROOT, args.against, work / "against"))
    admin_url = args.database_url + f"?options=-csearch_path%3D{SCHEMA}"
    admin_engine = create_engine(args.database_url)
    schema_engine = None if args.blind_plans else create_engine(admin_url)
    bodies = varied_signups(args.signups)
    run_file = bodies_file(work, "signups", bodies)
    warm_file = bodies_file(work, "warm", [{**b, "account_id": "warm_" + b["account_id"]} for b in bodies[:5000]])

    def script(path: Path) -> str:
        return LUA % {"path": path, "key": DEV_KEY, "threads": args.threads}

    load_before = loadavg()
    results: dict[str, list[dict]] = {}
    bare = start("bare_flask:app", free_port(), args.workers, dict(os.environ), ROOT / "bench")
    bare_port = int(bare.args[bare.args.index("-b") + 1].rsplit(":", 1)[1])
    try:
        for _ in range(args.rounds):
            results.setdefault("bare Flask", []).append(
                measure(bare, bare_port, admin_engine, script(run_file), script(warm_file), args))
            for name, checkout in sides.items():
                (work / name).mkdir(exist_ok=True)
                env = side_env(checkout, admin_url, work / name)
                check_imports(checkout, env)
                fresh_database(args.database_url, checkout, env)
                port = free_port()
                server = start("wsgi:app", port, args.workers, env, checkout)
                try:
                    results.setdefault(name, []).append(
                        measure(server, port, admin_engine, script(run_file), script(warm_file), args,
                                schema_engine=schema_engine))
                finally:
                    stop(server)
    finally:
        stop(bare)
        admin_engine.dispose()
        if schema_engine is not None:
            schema_engine.dispose()
        checkouts.close()

    print(f"signups over HTTP: postgresql, gunicorn -w {args.workers}, wrk -t{args.threads} -c{args.connections} "
          f"-d{args.duration}s after {args.warmup}s of warm-up"
          f"{' (schema not analyzed)' if args.blind_plans else ' and ANALYZE'}, {args.rounds} alternated round(s), "
          f"{args.signups:,} distinct signups; load average {load_before} before, {loadavg()} after")
    for name, runs in results.items():
        for r in runs:
            wrapped = "  (file wrapped: repeats)" if name != "bare Flask" and r["requests"] > args.signups else ""
            print(f"{name:<16} {r['rps']:8.1f} req/s  p50 {r['p50']:>8}  p99 {r['p99']:>8}  non-2xx {r['non_2xx']:<5}"
                  f"  CPU per request: workers {r['worker_ms']:6.2f} ms, PostgreSQL {r['pg_ms']:5.2f} ms{wrapped}")

    def total(name: str, key: str) -> float:
        return sum(r[key] for r in results[name]) / len(results[name])

    for name in sides:
        print(f"{name} / bare Flask requests/s: {total(name, 'rps') / total('bare Flask', 'rps'):.1%}")
    if args.against:
        old = f"kyc@{args.against}"
        print(f"kyc / {old}: requests/s {total('kyc', 'rps') / total(old, 'rps'):.2f}x; CPU per signup: workers "
              f"{total('kyc', 'worker_ms'):.2f} vs {total(old, 'worker_ms'):.2f} ms, PostgreSQL "
              f"{total('kyc', 'pg_ms'):.2f} vs {total(old, 'pg_ms'):.2f} ms")


if __name__ == "__main__":
    main()
