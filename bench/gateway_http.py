"""The API gateway's two calls over HTTP: wrk against gunicorn, beside a bare Flask JSON endpoint
in the same run.

    python bench/gateway_http.py --database-url postgresql+psycopg://...   [--duration 10] [--against REV]

Accounts are stored as bench/entitlement.py stores them (reused when present; --accounts, default
1,000,000). kyc (wsgi.py) and bench/bare_flask.py each run under gunicorn with the same worker
count; wrk sends, for each, GET entitlement?tier=free and POST activity (one report, an account
last seen in the past three weeks, with its own API key id, template and address: steady usage
of unrelated customers, no wake-up, nothing linked) to accounts drawn at random, with a
real API key (its read included). Before the runs each account reports twice (bulk calls), when it
signed up and now: a gateway's customers have used the API before (else today's report is a first
use long after signup, a wake for lockstep), and have reported today, so their identifiers are
linked and their day started;
the evaluations the accounts' decisions came from are stored (store_evaluations). A third app,
bench/flask_one_statement.py, is bare Flask plus one PostgreSQL statement per call (a primary-key
read for the entitlement, a one-row update for a report): the floor of any design that touches
the account once per call. With --against, a fourth: kyc at another revision (a `git worktree` of
it, its own code, rules and gunicorn.conf.py) on the same database and accounts, warmed up by this
checkout's server: an A/B of a change to the gateway's path (both revisions' migrations must
agree). Prints requests/s, wrk's latency percentiles, the CPU a call costs
gunicorn's workers and PostgreSQL's backends, and kyc's share of bare Flask's requests/s and of
that floor's. On a shared, loaded machine compare the ratios of one run, not the
absolute figures.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import urllib.request
from contextlib import ExitStack
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import exists, select  # noqa: E402

from kyc.config import PROJECT_ROOT, Config  # noqa: E402
from kyc.models import Account, ActivityDay, ApiKey  # noqa: E402
from kyc.runtime import Runtime, upgrade_database  # noqa: E402
from kyc.security import hash_api_key, new_api_key  # noqa: E402

from http_load import check_imports, free_port, revision, start, stop, wrk_with_cpu  # noqa: E402  (bench/, the script's folder)

_spec = importlib.util.spec_from_file_location("bench_entitlement", Path(__file__).with_name("entitlement.py"))
entitlement_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(entitlement_bench)

LUA = """
ids = {%(ids)s}
headers = {["Authorization"] = "Bearer %(key)s", ["Content-Type"] = "application/json"}
request = function()
  local id = ids[math.random(#ids)]
  if "%(call)s" == "entitlement" then
    return wrk.format("GET", "/v1/accounts/" .. id .. "/entitlement?tier=free", headers)
  end
  -- The account's own address, the same at each of its reports (derived from its id).
  local n = tonumber(string.match(id, "%%d+")) or 0
  local ip = (11 + n %% 200) .. "." .. (math.floor(n / 200) %% 256) .. "." .. (math.floor(n / 51200) %% 256) .. ".7"
  local body = (string.gsub((string.gsub('%(body)s', "ACCOUNT", id)), "IPADDR", ip))
  return wrk.format("POST", "/v1/accounts/" .. id .. "/activity", headers, body)
end
"""


def address(account_id: str) -> str:
    """The account's own address, as the Lua script derives it."""
    n = int("".join(c for c in account_id if c.isdigit()) or 0)
    return f"{11 + n % 200}.{(n // 200) % 256}.{(n // 51200) % 256}.7"


def warm_up(port: int, key: str, signed_up: dict[str, datetime], report: dict) -> None:
    """Two reports per account, in bulk calls of 1,000, through the kyc server: one when it signed
    up (its first use of the API, then), one now. Without the first, today's report was each
    account's first use a week or more after its signup: a wake for lockstep
    (kyc.usage.lockstep.AGED_FIRST_USE_DAYS, since e3a7c24), whose every later report reads who
    else woke on its templates: not the steady usage this bench measures."""
    template = json.dumps(report)
    ids = sorted(signed_up)
    for at_signup in (True, False):
        for i in range(0, len(ids), 1000):
            reports = []
            for a in ids[i:i + 1000]:
                one = {**json.loads(template.replace("ACCOUNT", a).replace("IPADDR", address(a))), "account_id": a}
                if at_signup:
                    one["occurred_at"] = signed_up[a].isoformat()
                reports.append(one)
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/v1/activity", method="POST", data=json.dumps({"reports": reports}).encode(),
                headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=300) as answer:
                assert answer.status == 200


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--accounts", type=int, default=1_000_000)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--workers", type=int, default=1, help="gunicorn workers, both apps")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--against", metavar="REV", help="also run this revision of kyc (a git worktree of it)")
    args = parser.parse_args()

    upgrade_database(args.database_url)
    workdir = Path(tempfile.mkdtemp(prefix="kyc-bench-"))
    config = Config.from_env({}, database_url=args.database_url, rules_dir=PROJECT_ROOT / "rules", data_dir=workdir,
                             secret_key=b"bench", redis_url="", dev_key="", log_level="WARNING")
    runtime = Runtime.start(config, migrate=False)
    entitlement_bench.populate(runtime, args.accounts)
    key = new_api_key()
    recent = datetime.now(timezone.utc) - timedelta(days=21)
    with runtime.session() as session, session.begin():
        session.add(ApiKey(name="bench-http", prefix=key[:10], key_hash=hash_api_key(key), role="gateway"))
        # Accounts that have not reported yet: an earlier run's have today's day, woken for
        # lockstep by that run's first report if it was made before the warm-up below was.
        signed_up = dict(session.execute(
            select(Account.id, Account.first_seen_at).where(
                Account.last_seen_at > recent, ~exists().where(ActivityDay.account_id == Account.id)).limit(5000)).all())
    ids = sorted(signed_up)
    assert len(ids) == 5000, f"{len(ids)} accounts seen in the past three weeks and not reported yet: populate afresh"
    entitlement_bench.store_evaluations(runtime, ids)
    env = {**os.environ, "KYC_DATABASE_URL": args.database_url, "KYC_RULES_DIR": str(PROJECT_ROOT / "rules"),
           "KYC_DATA_DIR": str(workdir), "KYC_SECRET_KEY": "bench", "KYC_LOG_LEVEL": "WARNING",
           "KYC_RULES_POLL_SECONDS": "0", "KYC_REDIS_URL": "", "KYC_DEV_KEY": ""}
    # Unrelated customers: each account's own API key, template and address (one key or address
    # for all would link them into one cluster, re-evaluated at every report: not steady usage).
    report = {"window_seconds": 60, "requests": 3, "tier": "free", "ip": "IPADDR", "api_key_id": "key_ACCOUNT",
              "user_agent": "python-httpx/0.27.0", "tokens_in": 900, "tokens_out": 1400,
              "models": {"model-small": 3}, "prompt_fingerprints": {"pf_ACCOUNT": 3}, "interval_cv": 0.9}
    checkouts = ExitStack()                  # the other side's worktree, removed at the end
    sides = {"kyc": ROOT}
    if args.against:
        sides[f"kyc@{args.against}"] = checkouts.enter_context(revision(ROOT, args.against, workdir / "against"))
    side_env = {}
    for name, checkout in sides.items():         # each side its own code, rules and data folder
        (workdir / "data" / name).mkdir(parents=True)
        side_env[name] = {**env, "PYTHONPATH": str(checkout), "KYC_RULES_DIR": str(checkout / "rules"),
                          "KYC_DATA_DIR": str(workdir / "data" / name)}
        check_imports(checkout, side_env[name])
    ports = {name: free_port() for name in ("bare", "floor", *sides)}
    servers = {"bare": start("bare_flask:app", ports["bare"], args.workers, env, ROOT / "bench"),
               "floor": start("flask_one_statement:app", ports["floor"], args.workers, env, ROOT / "bench"),
               **{name: start("wsgi:app", ports[name], args.workers, side_env[name], checkout)
                  for name, checkout in sides.items()}}
    results = {}
    try:
        # Steady usage: each account has reported before (its key, template and address linked,
        # its day started), as a gateway's customers have; the first report of each in a fresh
        # process is the cold case, not what a serving process mostly answers.
        warm_up(ports["kyc"], key, signed_up, report)
        entitlement_bench.settled(runtime)
        for call in ("entitlement", "activity"):
            script = LUA % {"ids": ",".join(json.dumps(i) for i in ids), "key": key, "call": call,
                            "body": json.dumps(report)}
            for name in ("bare", "floor", *sides) * 2:     # alternated: load drifts over a run
                results.setdefault((call, name), []).append(wrk_with_cpu(
                    servers[name], ports[name], script, args.duration, args.threads, args.connections, runtime.engine))
    finally:
        for server in servers.values():
            stop(server)
        runtime.engine.dispose()
        checkouts.close()
    print(f"gateway calls over HTTP: {args.accounts:,} accounts stored, "
          f"{'sqlite' if args.database_url.startswith('sqlite') else 'postgresql'}, gunicorn -w {args.workers}, "
          f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s, two alternated runs each")
    labels = {"bare": "bare Flask", "floor": "one stmt", **{name: name for name in sides}}
    for call in ("entitlement", "activity"):
        for name, label in labels.items():
            print(f"{call:<12} {label:<10} " + "   ".join(
                f"{r['rps']:8.0f} req/s (p50 {r['p50']}, p99 {r['p99']}, non-2xx {r['non_2xx']})"
                for r in results[(call, name)]))
        print(f"{call:<12} CPU a call (both runs): " + "   ".join(
            f"{label} workers {sum(r['worker_cpu'] for r in runs) * 1000 / sum(r['requests'] for r in runs):.2f} ms, "
            f"PostgreSQL {sum(r['pg_cpu'] for r in runs) * 1000 / sum(r['requests'] for r in runs):.2f} ms"
            for label, runs in ((labels[name], results[(call, name)]) for name in labels)))
        rate = {name: sum(r["rps"] for r in results[(call, name)]) for name in labels}
        print(f"{call:<12} kyc / bare Flask: {rate['kyc'] / rate['bare']:.0%}   bare Flask + one statement / bare "
              f"Flask: {rate['floor'] / rate['bare']:.0%}   kyc / bare Flask + one statement: "
              f"{rate['kyc'] / rate['floor']:.0%}" + "".join(
                  f"   {name} / bare Flask: {rate[name] / rate['bare']:.0%}   kyc / {name}: "
                  f"{rate['kyc'] / rate[name]:.2f}x" for name in sides if name != "kyc"))


if __name__ == "__main__":
    main()
