"""Migration 0023 (activity_days.woke_on, the day of the account's latest wake): on an empty
database and on one holding days of usage, both backends, and back down."""

from __future__ import annotations

from alembic import command
from sqlalchemy import create_engine, text

from kyc.runtime import alembic_config, upgrade_database
from tests.migrations import column_names


def test_upgrade_on_an_empty_database_adds_the_latest_wake(empty_url):
    upgrade_database(empty_url)
    assert "woke_on" in column_names(empty_url, "activity_days")


def test_upgrade_marks_each_wake_and_the_day_after_it_and_downgrades(empty_url):
    upgrade_database(empty_url, "0022")
    engine = create_engine(empty_url)
    with engine.begin() as conn:
        # a1 woke on the 23rd (45 days dormant) and used the API on the 24th and the 26th; a2 was
        # silent 10 days (no wake) before the 24th; a3 woke on the 20th, silent 3 days after it.
        rows = [("a1", "2026-11-23", 45), ("a1", "2026-11-24", 0), ("a1", "2026-11-26", 1),
                ("a2", "2026-11-24", 10), ("a3", "2026-11-20", 31), ("a3", "2026-11-24", 3)]
        for account, day, dormant in rows:
            conn.execute(text("INSERT INTO activity_days (account_id, day, requests, first_at, last_at, dormant_days, "
                              "refused, tokens_in, tokens_out, cv_sum, cv_requests, baseline, history_days) "
                              "VALUES (:a, :d, 1, :t, :t, :n, 0, 0, 0, 0, 0, 0, 0)"),
                         {"a": account, "d": day, "t": f"{day} 10:00:00", "n": dormant})
    engine.dispose()
    upgrade_database(empty_url)
    engine = create_engine(empty_url)
    with engine.connect() as conn:
        found = conn.execute(text("SELECT account_id, day, woke_on FROM activity_days ORDER BY account_id, day")).all()
    engine.dispose()
    assert [(a, str(d), None if w is None else str(w)) for a, d, w in found] == [
        ("a1", "2026-11-23", "2026-11-23"), ("a1", "2026-11-24", "2026-11-23"), ("a1", "2026-11-26", None),
        ("a2", "2026-11-24", None), ("a3", "2026-11-20", "2026-11-20"), ("a3", "2026-11-24", None)]
    command.downgrade(alembic_config(empty_url), "0022")
    assert "woke_on" not in column_names(empty_url, "activity_days") and "dormant_days" in column_names(empty_url, "activity_days")
