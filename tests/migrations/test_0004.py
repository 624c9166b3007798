"""Migration 0004 (rescore runs): on an empty database and on one holding data, both backends."""

from __future__ import annotations

from sqlalchemy import create_engine, text

from kyc.runtime import upgrade_database
from tests.migrations import table_names


def test_upgrade_on_an_empty_database(empty_url):
    upgrade_database(empty_url)
    assert {"rescore_runs", "rescore_batches", "accounts"} <= table_names(empty_url)


def test_upgrade_keeps_existing_data_and_downgrades(empty_url):
    from alembic import command

    from kyc.runtime import alembic_config

    upgrade_database(empty_url, "0001")
    engine = create_engine(empty_url)
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO accounts (id, created_at, first_seen_at, last_seen_at, decision, score, reasons, "
            "required_verifications, subjects, state_version, updated_at) VALUES ('a1', :t, :t, :t, 'block', 70, "
            "'[]', '[]', '{}', 3, :t)"), {"t": "2026-11-24 21:00:00+00:00"})
    upgrade_database(empty_url)
    with engine.begin() as conn:
        assert conn.execute(text("SELECT decision, state_version FROM accounts")).one() == ("block", 3)
        conn.execute(text(
            "INSERT INTO rescore_runs (id, selector, params, reason, rules_version, total, batches, created_at) "
            "VALUES ('rr_1', 'all', '{}', 'test', 'sha256:x', 1, 1, :t)"), {"t": "2026-11-24 21:00:00+00:00"})
        conn.execute(text(
            "INSERT INTO rescore_batches (run_id, batch_no, account_ids, cursor, changes, escalated, held, missing, "
            "attempts) VALUES ('rr_1', 0, '[\"a1\"]', 0, '{}', 0, 0, 0, 0)"))
    engine.dispose()
    command.downgrade(alembic_config(empty_url), "0001")
    tables = table_names(empty_url)
    assert "rescore_runs" not in tables and "rescore_batches" not in tables and "accounts" in tables
