"""Migration 0002 on an empty database and on one holding data, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timezone

from alembic import command
from sqlalchemy import create_engine, text

from kyc.runtime import alembic_config, upgrade_database
from tests.migrations import table_names

NEW_TABLES = {"verifications", "verification_events", "outbox", "webhook_events", "activity_days"}


def test_upgrade_empty_database(empty_url):
    upgrade_database(empty_url)
    assert NEW_TABLES <= table_names(empty_url)


def test_upgrade_keeps_data_and_downgrade_removes_only_itstable_names(empty_url):
    upgrade_database(empty_url, "0001")
    now = datetime.now(timezone.utc)
    engine = create_engine(empty_url)
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO accounts (id, created_at, first_seen_at, last_seen_at, decision, score, reasons, "
            "required_verifications, subjects, state_version, updated_at) VALUES "
            "('acct_old', :t, :t, :t, 'verify', 30, '[]', '[\"phone\"]', '{}', 4, :t)"), {"t": now})
    upgrade_database(empty_url)
    with engine.begin() as conn:
        assert conn.execute(text("SELECT decision, state_version FROM accounts")).one() == ("verify", 4)
        conn.execute(text(
            "INSERT INTO verifications (id, account_id, kind, status, attempts, sends, expires_at, created_at) "
            "VALUES ('vf_1', 'acct_old', 'email', 'pending', 0, 0, :t, :t)"), {"t": now})
        conn.execute(text(
            "INSERT INTO activity_days (account_id, day, requests, first_at, last_at, dormant_days) "
            "VALUES ('acct_old', :d, 5, :t, :t, 0)"), {"t": now, "d": now.date()})
    engine.dispose()
    command.downgrade(alembic_config(empty_url), "0001")
    tables = table_names(empty_url)
    assert not NEW_TABLES & tables and "accounts" in tables
