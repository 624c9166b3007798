"""Migration 0022 (prompt_days.began, each template's newcomers of the day): on an empty database
and on one holding template uses, both backends, and back down."""

from __future__ import annotations

from alembic import command
from sqlalchemy import create_engine, text

from kyc.runtime import alembic_config, upgrade_database
from tests.migrations import column_names


def test_upgrade_on_an_empty_database_adds_the_newcomers_count(empty_url):
    upgrade_database(empty_url)
    assert "began" in column_names(empty_url, "prompt_days")


def test_upgrade_counts_the_starts_kept_on_each_day_and_downgrades(empty_url):
    upgrade_database(empty_url, "0021")
    engine = create_engine(empty_url)
    with engine.begin() as conn:
        # Template t1: three accounts on the 24th, two of them begun on it that day, one on the 23rd
        # (which used it then too); t2: one account, begun before kyc kept its days.
        conn.execute(text("INSERT INTO prompt_days (value_hash, day, accounts) VALUES "
                          "('t1', '2026-11-23', 1), ('t1', '2026-11-24', 3), ('t2', '2026-11-24', 1)"))
        conn.execute(text("INSERT INTO prompt_starts (value_hash, account_id, day) VALUES "
                          "('t1', 'a1', '2026-11-23'), ('t1', 'a2', '2026-11-24'), ('t1', 'a3', '2026-11-24'), "
                          "('t2', 'a1', '2026-10-01')"))
    engine.dispose()
    upgrade_database(empty_url)
    engine = create_engine(empty_url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT value_hash, day, accounts, began FROM prompt_days "
                                 "ORDER BY value_hash, day")).all()
    engine.dispose()
    assert [(h, str(d), n, b) for h, d, n, b in rows] == [
        ("t1", "2026-11-23", 1, 1), ("t1", "2026-11-24", 3, 2), ("t2", "2026-11-24", 1, 0)]
    command.downgrade(alembic_config(empty_url), "0021")
    assert "began" not in column_names(empty_url, "prompt_days") and "accounts" in column_names(empty_url, "prompt_days")
