"""Migration 0020 (activity_days, activity_reports and sightings without their foreign key to
accounts): on an empty database and on one holding their rows, both backends, and back down
(where the foreign keys are back: a row naming no account is refused again)."""

from __future__ import annotations

import pytest
from alembic import command
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import IntegrityError

from kyc.runtime import alembic_config, upgrade_database
from tests.migrations import insert_account

TABLES = ("activity_days", "activity_reports", "sightings")
AT = {"t": "2026-12-05 06:00:00+00:00"}
ROWS = {
    "activity_days": "INSERT INTO activity_days (account_id, day, first_at, last_at, requests, dormant_days, hours, "
                     "history_days) VALUES (:a, '2026-12-05', :t, :t, 5, 0, '[]', 0)",
    "activity_reports": "INSERT INTO activity_reports (account_id, occurred_at, window_seconds, requests, received_at) "
                        "VALUES (:a, :t, 3600, 5, :t)",
    "sightings": "INSERT INTO sightings (kind, value_hash, account_id, evaluation_id, occurred_at) "
                 "VALUES ('ip', 'h1', :a, 'ev_1', :t)",
}


def _referring(url: str) -> set[str]:
    """The tables of TABLES holding a foreign key to accounts."""
    engine = create_engine(url)
    try:
        found = inspect(engine)
        return {t for t in TABLES if any(fk["referred_table"] == "accounts" for fk in found.get_foreign_keys(t))}
    finally:
        engine.dispose()


def test_upgrade_on_an_empty_database_leaves_the_tables_without_the_foreign_keys(empty_url):
    upgrade_database(empty_url)
    assert _referring(empty_url) == set()


def test_upgrade_keeps_rows_and_downgrades(empty_url):
    upgrade_database(empty_url, "0019")
    assert _referring(empty_url) == set(TABLES)
    engine = create_engine(empty_url)
    with engine.begin() as conn:
        insert_account(conn)
        for statement in ROWS.values():
            conn.execute(text(statement), {**AT, "a": "a1"})
    engine.dispose()
    upgrade_database(empty_url)
    assert _referring(empty_url) == set()
    engine = create_engine(empty_url)
    with engine.begin() as conn:
        for table in TABLES:
            assert conn.execute(text(f"SELECT account_id FROM {table}")).scalars().all() == ["a1"], table
    engine.dispose()
    command.downgrade(alembic_config(empty_url), "0019")
    assert _referring(empty_url) == set(TABLES)
    engine = create_engine(empty_url)
    with engine.begin() as conn:
        for table in TABLES:
            assert conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one() == 1, table
    for table, statement in ROWS.items():
        with pytest.raises(IntegrityError), engine.begin() as conn:
            if empty_url.startswith("sqlite"):
                conn.exec_driver_sql("PRAGMA foreign_keys=ON")      # as kyc.db's engines do
            conn.execute(text(statement), {**AT, "a": "nobody"})
    engine.dispose()
