"""Query plans that hold: on a database of realistic size whose statistics kyc keeps fresh
(kyc.persist.refresh_statistics, a schedule), the signup path reads every table through an index,
and so does the read of what links a member to its cluster; so do the gateway's calls (activity
reports, entitlement checks) and reads of a list of ids on a new deployment's smaller tables.

PostgreSQL only: generic plans (kyc.db._generic_plans) come from the planner's statistics; this
machine's server, like some production ones, runs without autovacuum.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

from sqlalchemy import create_engine, select, text

from kyc import create_app
from kyc.graph import shared_kinds
from kyc.graph.link import _shared_weak_kinds
from kyc.models import Account, GraphEdge
from kyc.persist import _SHOWN_AND_SIGHTED, in_list, refresh_statistics
from kyc.runtime import Runtime, upgrade_database
from kyc.usage.reports import _HISTORY
from tests.conftest import pg_schema_url, run_schema, signup
from tests.migrations import query_plans

ACCOUNTS = 20_000
SCHEMA = "kyc_query_plans"
APP = "kyc_query_plans_test"


def grow(accounts: int, linking: tuple[str, ...] = ("device", "email", "ip_day")) -> str:
    """What a signup reads (the API key, the account, velocity, the graph), grown as `accounts`
    accounts of six velocity keys and three linking identifiers each (of the `linking` kinds)
    would have grown them."""
    kinds = ", ".join(f"'{kind}'" for kind in linking)
    return f"""
INSERT INTO accounts (id, first_seen_at, last_seen_at, decision, score, reasons, required_verifications,
                      subjects, state_version, created_at, updated_at)
  SELECT 'bulk' || g, now(), now(), 'allow', 0, '[]', '[]', '{{}}', 0, now(), now()
  FROM generate_series(1, {accounts}) g;
INSERT INTO sightings (kind, value_hash, account_id, evaluation_id, occurred_at)
  SELECT k, md5(k || g), 'bulk' || g, 'ev' || g, now() - g * interval '1 second'
  FROM generate_series(1, {accounts}) g, unnest(array['ip', 'device', 'email', 'ip_prefix', 'asn', 'email_domain']) k;
INSERT INTO velocity_marks (kind, value_hash, account_id, last_at)
  SELECT k, md5(k || g), 'bulk' || g, now()
  FROM generate_series(1, {accounts}) g, unnest(array['ip', 'device', 'email', 'ip_prefix', 'asn', 'email_domain']) k;
INSERT INTO graph_nodes (kind, value_hash, accounts, super_node, first_seen_at)
  SELECT k, md5(k || g), 1, false, now() FROM generate_series(1, {accounts}) g, unnest(array[{kinds}]) k;
INSERT INTO graph_edges (kind, value_hash, account_id)
  SELECT k, md5(k || g), 'bulk' || g FROM generate_series(1, {accounts}) g, unnest(array[{kinds}]) k;
INSERT INTO clusters (id, size, first_seen_at, created_at, updated_at, blocked, labeled_fraud, disposable, voip,
                      hosting, headless)
  SELECT 'clb' || g, 1, now(), now(), now(), 0, 0, 0, 0, 0, 0 FROM generate_series(1, {accounts}) g;
INSERT INTO cluster_members (account_id, cluster_id, joined_at, blocked, labeled_fraud, disposable, voip, hosting,
                             headless)
  SELECT 'bulk' || g, 'clb' || g, now(), false, false, false, false, false, false
  FROM generate_series(1, {accounts}) g;
"""


READ_BY_SIGNUPS = ("accounts", "sightings", "velocity_marks", "graph_nodes", "graph_edges", "clusters",
                   "cluster_members")


def _seq_scans(admin, schema: str = SCHEMA) -> dict[str, int]:
    with admin.connect() as conn:
        conn.execute(text("SELECT pg_stat_clear_snapshot()"))
        return dict(conn.execute(text("SELECT relname, seq_scan FROM pg_stat_user_tables WHERE schemaname = :s"),
                                 {"s": run_schema(schema)}).all())


def _seq_scans_since(admin, before: dict[str, int], tables, *, schema: str = SCHEMA, app: str = APP
                     ) -> dict[str, int]:
    """The sequential scans of `tables` since `before` (_seq_scans), once the app's backends have
    exited (the engine disposed) and reported them."""
    _wait_for_backends_to_exit(admin, app)
    after = _seq_scans(admin, schema)
    return {table: after[table] - before[table] for table in tables if after[table] > before[table]}


def _grow(admin, accounts: int, **kinds) -> None:
    """grow(accounts) through `admin`, its counters in pg_stat_user_tables before it returns.
    Why: a backend reports what it changed when it goes idle at most once a second, else 10 s
    later; read sooner (a quick machine's bulk calls take less), the grown tables showed no
    change, were not analyzed, and the gateway test failed, on a quiet machine every time."""
    with admin.begin() as conn:
        conn.execute(text(grow(accounts, **kinds)))
        conn.execute(text("SELECT pg_stat_force_next_flush()"))     # as the COMMIT leaves it idle


def _wait_for_backends_to_exit(admin, app: str = APP) -> None:
    """A backend reports its counters when it exits: wait (bounded) for the app's to be gone."""
    deadline = time.monotonic() + 30
    with admin.connect() as conn:
        while conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :a"),
                           {"a": app}).scalar():
            assert time.monotonic() < deadline, "the app's connections did not close"
            conn.rollback()
            time.sleep(0.05)


def test_signups_read_through_indexes_once_statistics_are_refreshed(make_config):
    url = pg_schema_url(SCHEMA)
    upgrade_database(url)
    rt = Runtime.start(make_config(f"{url}&application_name={APP}", dev_key="dev"), migrate=False)
    client = create_app(runtime=rt).test_client()
    headers = {"Authorization": "Bearer dev"}

    def post(n: int) -> None:
        body = signup(account_id=f"acct_{n}", email=f"user{n}@example{n}.org", device_id=f"dv_{n}",
                      phone=None, ip=f"81.{n % 200}.{n % 250}.9")
        assert client.post("/v1/signups", json=body, headers=headers).status_code == 200

    admin = create_engine(url)
    try:
        for n in range(20):                      # the app's statements are prepared on small tables
            post(n)
        _grow(admin, ACCOUNTS)
        assert set(READ_BY_SIGNUPS) <= set(refresh_statistics(rt.engine))
        assert refresh_statistics(rt.engine) == []            # nothing changed since
        rt.engine.dispose()
        _wait_for_backends_to_exit(admin)
        before = _seq_scans(admin)
        for n in range(100, 140):
            post(n)
        # What links a member to its cluster (graph.linked_by_work_only), for one account and for a
        # rescore chunk's: prepared after five executions, then planned generically.
        with rt.session() as session:
            for n in range(1, 13):
                assert shared_kinds(session, [f"bulk{n}"]) == {}
                assert shared_kinds(session, [f"bulk{m}" for m in range(n * 500, n * 500 + 500)]) == {}
        rt.engine.dispose()
        scanned = _seq_scans_since(admin, before, READ_BY_SIGNUPS)
        assert scanned == {}, f"sequential scans during 40 signups and 24 shared-kinds reads: {scanned}"
    finally:
        rt.engine.dispose()
        admin.dispose()



def test_reads_of_given_keys_go_through_an_index_on_a_new_deployment_s_tables():
    """A generic plan's guess of how many keys a statement is given decides between an index and a
    sequential scan: taken for 100 (a set-returning function's default), the read of what an
    account shares scanned graph_edges at 32,000 rows, 9.5 ms a single activity report
    (kyc.persist.in_list), and the read of the nodes a report shows scanned graph_nodes
    (kyc.persist._SHOWN_AND_SIGHTED, 2.3-3.1 ms)."""
    url = pg_schema_url("kyc_list_plans")
    upgrade_database(url)
    admin = create_engine(url)
    try:
        with admin.begin() as conn:          # a deployment's first weeks: 21,000 usage nodes and edges
            conn.execute(text(grow(7000, linking=("ip", "api_key", "prompt"))))
        with admin.begin() as conn:
            for table in ("accounts", "graph_nodes", "graph_edges"):
                conn.execute(text(f"ANALYZE {table}"))
        statements = [statement.params(ids=["bulk1"]) for statement in (
            _shared_weak_kinds("ip"), select(Account.id).where(in_list(Account.id, "ids")),
            select(GraphEdge.kind).where(in_list(GraphEdge.account_id, "ids")))]
        statements.append(_SHOWN_AND_SIGHTED.params(nodes="[]", edges="[]", sighted="[]",
                                                    since=datetime.now(timezone.utc)))
        scanned = [f"{statement}\n{plan}" for statement, plan in zip(statements, query_plans(url, statements, []))
                   if "Seq Scan" in plan]
        assert scanned == [], "\n\n".join(scanned)
    finally:
        admin.dispose()


# A deployment's first weeks, for the gateway's calls: 10,000 accounts and two days of their usage.
GATEWAY_ACCOUNTS = 10_000
READ_BY_THE_GATEWAY = ("accounts", "activity_days", "activity_reports", "prompt_uses", "prompt_days",
                       "prompt_starts", "graph_nodes", "graph_edges", "clusters", "cluster_members", "sightings",
                       "velocity_marks", "evaluations")


def _report(n: int, at: datetime) -> dict:
    """Account bulk<n>'s usage in the hour before `at`: its own address, key and template, and one
    of 50 templates a tool's users share."""
    return {"account_id": f"bulk{n}", "occurred_at": at.isoformat(), "window_seconds": 3600, "requests": 1 + n % 40,
            "tier": "free", "ip": f"{11 + n % 200}.{(n // 200) % 256}.{n % 97}.7", "api_key_id": f"key_{n}",
            "prompt_fingerprints": {f"pf_own_{n}": 3, f"pf_tool_{n % 50}": 2}, "interval_cv": 0.8}


def test_the_gateway_s_calls_read_through_indexes_on_a_new_deployment_s_tables(make_config):
    """Activity reports (single and bulk) and entitlement checks, once statistics are refreshed,
    on 10,000 accounts with two days of usage: no sequential scan. Before kyc.persist.in_list
    matched lists as = ANY(ARRAY(...)), each single report scanned accounts (a generic plan
    took its one id for 100)."""
    schema, app = "kyc_gateway_plans", "kyc_gateway_plans_test"
    url = pg_schema_url(schema)
    upgrade_database(url)
    admin = create_engine(url)
    rt = Runtime.start(make_config(f"{url}&application_name={app}", dev_key="dev"), migrate=False)
    client = create_app(runtime=rt).test_client()
    headers = {"Authorization": "Bearer dev"}
    now = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)

    def bulk(first: int, last: int, at: datetime) -> None:
        reports = [_report(n, at) for n in range(first, last + 1)]
        assert client.post("/v1/activity", json={"reports": reports}, headers=headers).status_code == 200

    try:
        _grow(admin, GATEWAY_ACCOUNTS)
        for days_ago in (2, 1):
            for first in range(1, GATEWAY_ACCOUNTS + 1, 1000):
                bulk(first, first + 999, now - timedelta(days=days_ago))
        assert set(READ_BY_THE_GATEWAY) - {"evaluations"} <= set(refresh_statistics(rt.engine))
        rt.engine.dispose()
        _wait_for_backends_to_exit(admin, app)
        before = _seq_scans(admin, schema)
        for n in range(1, 101):
            one = {k: v for k, v in _report(n, now).items() if k != "account_id"}
            assert client.post(f"/v1/accounts/bulk{n}/activity", json=one, headers=headers).status_code == 200
            assert client.get(f"/v1/accounts/bulk{n}/entitlement?tier=free", headers=headers).status_code == 200
        for first in (1001, 2001, 3001):
            bulk(first, first + 999, now)
        rt.engine.dispose()
        scanned = _seq_scans_since(admin, before, READ_BY_THE_GATEWAY, schema=schema, app=app)
        assert scanned == {}, f"sequential scans during 100 single reports, 100 entitlements and 3 bulk calls: {scanned}"
    finally:
        rt.engine.dispose()
        admin.dispose()


def test_a_new_day_s_history_is_read_through_the_accounts_own_days():
    """The trailing window a new day's baseline reads (kyc.usage.reports._HISTORY), on 3,000
    accounts of 30 days each: through the primary key, the accounts' own days, not through
    ix_activity_days_day, every account's days of the window (13.2 ms a report, against 0.29)."""
    url = pg_schema_url("kyc_history_plans")
    upgrade_database(url)
    admin = create_engine(url)
    try:
        with admin.begin() as conn:
            conn.execute(text("""
INSERT INTO activity_days (account_id, day, requests, first_at, last_at, dormant_days, refused, tokens_in, tokens_out,
                           cv_sum, cv_requests, baseline, history_days)
  SELECT 'bulk' || g, current_date - d, 10, now(), now(), 0, 0, 0, 0, 0, 0, 0, 0
  FROM generate_series(1, 3000) g, generate_series(1, 30) d"""))
        with admin.begin() as conn:
            conn.execute(text("ANALYZE activity_days"))
        today = datetime.now(timezone.utc).date()
        history = _HISTORY.params(ids=["bulk7"], since=today - timedelta(days=28), until=today)
        (plan,) = query_plans(url, postgresql=[history], sqlite=[])
        assert "activity_days_pkey" in plan and "ix_activity_days_day" not in plan, plan
    finally:
        admin.dispose()
