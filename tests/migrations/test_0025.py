"""Migration 0025 (activity_days.networks, the day's networks as hashed buckets): on an empty
database and on one holding days of usage, both backends, and back down."""

from __future__ import annotations

from alembic import command
from sqlalchemy import create_engine, text

from kyc.runtime import alembic_config, upgrade_database
from tests.migrations import column_names


def test_upgrade_on_an_empty_database_adds_the_column(empty_url):
    upgrade_database(empty_url)
    assert "networks" in column_names(empty_url, "activity_days")


def test_upgrade_keeps_the_days_with_no_network_known_then_downgrades(empty_url):
    upgrade_database(empty_url, "0024")
    engine = create_engine(empty_url)
    with engine.begin() as conn:
        for account, day in (("a1", "2026-12-01"), ("a1", "2026-12-02"), ("a2", "2026-12-02")):
            conn.execute(text("INSERT INTO activity_days (account_id, day, requests, first_at, last_at, dormant_days, "
                              "refused, tokens_in, tokens_out, cv_sum, cv_requests, baseline, history_days) "
                              "VALUES (:a, :d, 7, :t, :t, 0, 0, 0, 0, 0, 0, 0, 0)"),
                         {"a": account, "d": day, "t": f"{day} 10:00:00"})
    engine.dispose()
    upgrade_database(empty_url)
    engine = create_engine(empty_url)
    with engine.begin() as conn:
        rows = conn.execute(text("SELECT account_id, requests, networks FROM activity_days "
                                 "ORDER BY account_id, day")).all()
        assert [tuple(r) for r in rows] == [("a1", 7, 0), ("a1", 7, 0), ("a2", 7, 0)]
        # The widest set a day can hold (63 buckets) fits the column on both backends.
        conn.execute(text("UPDATE activity_days SET networks = :n WHERE account_id = 'a2'"), {"n": (1 << 63) - 1})
        assert conn.execute(text("SELECT networks FROM activity_days WHERE account_id = 'a2'")).scalar_one() == (1 << 63) - 1
    engine.dispose()
    command.downgrade(alembic_config(empty_url), "0024")
    assert "networks" not in column_names(empty_url, "activity_days")
