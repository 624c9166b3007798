"""Migration 0003 (velocity, identity graph, labels) on an empty database and on one holding data."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import create_engine, inspect, text

from kyc.runtime import upgrade_database
from tests.conftest import pg_schema_url

TABLES = {"velocity_marks", "graph_nodes", "graph_edges", "clusters", "cluster_members", "account_labels"}


def _check(url: str) -> None:
    upgrade_database(url, "0001")
    engine = create_engine(url)
    now = datetime(2026, 11, 24, tzinfo=timezone.utc)
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO accounts (id, created_at, first_seen_at, last_seen_at, decision, score, reasons, "
            "required_verifications, subjects, state_version, updated_at) "
            "VALUES ('acct_old', :t, :t, :t, 'allow', 0, '[]', '[]', '{}', 1, :t)"), {"t": now})
    upgrade_database(url)
    names = set(inspect(engine).get_table_names())
    assert TABLES <= names
    with engine.begin() as conn:
        assert conn.execute(text("SELECT id FROM accounts")).scalars().all() == ["acct_old"]
        conn.execute(text("INSERT INTO account_labels (account_id, label, created_at) VALUES ('acct_old', 'legit', :t)"),
                     {"t": now})
    engine.dispose()


def test_upgrade_sqlite_empty_and_with_data(tmp_path):
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    upgrade_database(empty)
    assert TABLES <= set(inspect(create_engine(empty)).get_table_names())
    _check(f"sqlite:///{tmp_path / 'data.db'}")


def test_upgrade_postgresql_with_data():
    _check(pg_schema_url("kyc_migration_0003_test"))
