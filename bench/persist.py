"""What a scoring transaction's writes cost, the Core statements against persist's PostgreSQL
statement (kyc/scoring/persist.py), alternated in one run on one connection.

    python bench/persist.py [--database-url postgresql+psycopg://...] [--n 2000]

Rows are real: signups scored through the pipeline first (bench/score_signup.py's
generator), whose evaluations (input, signals), account rows and sightings are then written
again under new ids, each in a pipelined transaction of its own that first inserts the account
as the pipeline does. Prints, per way of writing, this process's CPU per transaction (median,
p99), the PostgreSQL backend's CPU per transaction (/proc/<pid>/stat over each block) and the
ratios. Blocks of the two ways alternate, since load on a shared machine drifts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, select, text  # noqa: E402

from kyc import create_app  # noqa: E402
from kyc.config import PROJECT_ROOT, Config  # noqa: E402
from kyc.db import pipelined  # noqa: E402
from kyc.models import Account, Evaluation, Sighting  # noqa: E402
from kyc.runtime import upgrade_database  # noqa: E402
from kyc.scoring import persist  # noqa: E402
from kyc.scoring.pipeline import _new_account_statement  # noqa: E402

from http_load import TICKS_PER_SECOND, cpu_ticks  # noqa: E402
from score_signup import percentile, varied_signups  # noqa: E402

SCHEMA = "kyc_bench_persist"
WAYS = {"Core statements": persist._write_core, "persist (PostgreSQL)": persist._write_postgresql}


def scored_rows(app, count: int) -> list[tuple[dict, dict, list[dict]]]:
    """(evaluation, account row, sightings) of `count` signups scored through the pipeline."""
    client = app.test_client()
    for body in varied_signups(count, seed=11):
        assert client.post("/v1/signups", json=body, headers={"Authorization": "Bearer bench"}).status_code == 200
    with app.extensions["kyc"].session() as session:
        rows = []
        for account in session.scalars(select(Account)):
            ev = session.get(Evaluation, account.last_evaluation_id)
            evaluation = {c: getattr(ev, c) for c in persist.EVALUATION_COLUMNS}
            sightings = [{c: getattr(s, c) for c in persist.SIGHTING_COLUMNS}
                         for s in session.scalars(select(Sighting).where(Sighting.evaluation_id == ev.id))]
            rows.append((evaluation, persist.account_row(account), sightings))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=os.environ.get(
        "KYC_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--n", type=int, default=2000, help="transactions per way")
    parser.add_argument("--block", type=int, default=100)
    args = parser.parse_args()

    admin = create_engine(args.database_url)
    with admin.begin() as conn:
        conn.execute(text(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
        conn.execute(text(f"CREATE SCHEMA {SCHEMA}"))
    url = args.database_url + f"?options=-csearch_path%3D{SCHEMA}"
    upgrade_database(url)
    with tempfile.TemporaryDirectory() as tmp:
        config = Config.from_env({}, database_url=url, rules_dir=PROJECT_ROOT / "rules", data_dir=Path(tmp),
                                 secret_key=b"bench", dev_key="bench", log_level="WARNING", redis_url="")
        app = create_app(config)
        runtime = app.extensions["kyc"]
        rows = scored_rows(app, 200)
        with runtime.engine.connect() as conn:
            backend = conn.execute(text("SELECT pg_backend_pid()")).scalar()
        cpu: dict[str, list[float]] = {name: [] for name in WAYS}
        server: dict[str, float] = dict.fromkeys(WAYS, 0.0)
        done = 0
        while done < args.n:
            for name, write in WAYS.items():
                ticks = cpu_ticks(backend)
                for i in range(done, done + args.block):
                    evaluation, account, sightings = rows[i % len(rows)]
                    account_id, evaluation_id = f"{name[0]}{i}", f"ev_{name[0]}{i}"
                    t0 = time.thread_time()
                    with runtime.session() as session, pipelined(session):
                        session.execute(_new_account_statement("postgresql"), {
                            "id": account_id, "first_seen_at": account["first_seen_at"],
                            "last_seen_at": account["last_seen_at"]}).all()
                        write(session, [{**evaluation, "id": evaluation_id, "account_id": account_id}],
                              [{**account, "account_id": account_id, "last_evaluation_id": evaluation_id}],
                              [{**s, "account_id": account_id, "evaluation_id": evaluation_id} for s in sightings])
                    cpu[name].append(time.thread_time() - t0)
                server[name] += (cpu_ticks(backend) - ticks) / TICKS_PER_SECOND
            done += args.block
        with runtime.engine.connect() as conn:     # both ways wrote every row
            counts = conn.execute(text("SELECT (SELECT count(*) FROM evaluations), (SELECT count(*) FROM sightings)")).one()
        runtime.engine.dispose()
    with admin.begin() as conn:
        conn.execute(text(f"DROP SCHEMA {SCHEMA} CASCADE"))
    admin.dispose()

    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(f"scoring writes: {done:,} transactions per way (account insert + evaluation, account update and "
          f"{statistics.mean(len(s) for *_, s in rows):.1f} sightings on average), blocks of {args.block} alternated; "
          f"{counts[0]:,} evaluations and {counts[1]:,} sightings stored; load average {load}")
    for name in WAYS:
        print(f"{name:<22} this process: CPU median {statistics.median(cpu[name]) * 1e3:5.2f} ms, "
              f"p99 {percentile(cpu[name], 99) * 1e3:5.2f} ms per transaction;   PostgreSQL backend "
              f"{server[name] / done * 1e3:5.2f} ms per transaction")
    core, pg = WAYS
    print(f"persist / Core: this process {statistics.median(cpu[pg]) / statistics.median(cpu[core]):.2f}x, "
          f"PostgreSQL backend {server[pg] / max(server[core], 1e-9):.2f}x")


if __name__ == "__main__":
    main()
