"""Migration 0011 (pending_links: usage identifiers linked after their reports commit): on an
empty database and on one holding data, both backends, and back down."""

from __future__ import annotations

from alembic import command
from sqlalchemy import create_engine, text

from kyc.runtime import alembic_config, upgrade_database
from tests.migrations import insert_account, table_names

AT = {"t": "2026-11-24 21:00:00+00:00"}


def test_upgrade_on_an_empty_database_takes_a_pending_link(empty_url):
    upgrade_database(empty_url)
    engine = create_engine(empty_url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO pending_links (shown, created_at) VALUES (:shown, :t)"),
                     {**AT, "shown": '[["a1", "api_key", "h", "2026-11-24T21:00:00+00:00"]]'})
        assert conn.execute(text("SELECT count(*) FROM pending_links")).scalar_one() == 1
    engine.dispose()


def test_upgrade_keeps_accounts_and_usage_and_downgrades(empty_url):
    upgrade_database(empty_url, "0010")
    engine = create_engine(empty_url)
    with engine.begin() as conn:
        insert_account(conn)
    upgrade_database(empty_url)
    assert "pending_links" in table_names(empty_url)
    with engine.begin() as conn:
        assert conn.execute(text("SELECT id, decision, score FROM accounts")).all() == [("a1", "allow", 5)]
    engine.dispose()

    command.downgrade(alembic_config(empty_url), "0010")
    tables = table_names(empty_url)
    assert "pending_links" not in tables and "accounts" in tables
