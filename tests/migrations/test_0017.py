"""Migration 0017 (activity_days by day: kyc's first day of usage in one index step, which
lockstep reads as where it began watching): on an empty database and on one holding usage days,
both backends, and back down."""

from __future__ import annotations

from alembic import command
from sqlalchemy import create_engine, text

from kyc.runtime import alembic_config, upgrade_database
from tests.migrations import index_names, insert_account

AT = {"t": "2026-12-05 06:00:00+00:00"}



def test_upgrade_on_an_empty_database_creates_the_index(empty_url):
    upgrade_database(empty_url)
    assert "ix_activity_days_day" in index_names(empty_url, "activity_days")


def test_upgrade_keeps_usage_days_and_downgrades(empty_url):
    upgrade_database(empty_url, "0016")
    engine = create_engine(empty_url)
    with engine.begin() as conn:
        insert_account(conn)
        for day in ("2026-11-20", "2026-11-03"):
            conn.execute(text("INSERT INTO activity_days (account_id, day, first_at, last_at, requests, dormant_days, "
                              "hours, history_days) VALUES ('a1', :d, :t, :t, 5, 0, '[]', 0)"), {**AT, "d": day})
    upgrade_database(empty_url)
    assert "ix_activity_days_day" in index_names(empty_url, "activity_days")
    with engine.begin() as conn:
        assert str(conn.execute(text("SELECT min(day) FROM activity_days")).scalar_one()) == "2026-11-03"
    engine.dispose()
    command.downgrade(alembic_config(empty_url), "0016")
    assert "ix_activity_days_day" not in index_names(empty_url, "activity_days")
    engine = create_engine(empty_url)
    with engine.begin() as conn:
        assert conn.execute(text("SELECT count(*) FROM activity_days")).scalar_one() == 2
    engine.dispose()
