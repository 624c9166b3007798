"""Migration 0009 (activity reports, usage totals per day): on an empty database and on one
holding data, both backends."""

from __future__ import annotations

from sqlalchemy import create_engine, inspect, text

from kyc.runtime import upgrade_database

NEW_DAY_COLUMNS = {"refused", "tokens_in", "tokens_out", "hours", "cv_sum", "cv_requests", "models", "fingerprints",
                   "tier", "baseline", "history_days", "first_used_at"}


def _layout(url: str) -> tuple[set[str], set[str]]:
    engine = create_engine(url)
    try:
        found = inspect(engine)
        return set(found.get_table_names()), {c["name"] for c in found.get_columns("activity_days")}
    finally:
        engine.dispose()


def test_upgrade_on_an_empty_database(empty_url):
    upgrade_database(empty_url)
    tables, columns = _layout(empty_url)
    assert {"activity_reports", "prompt_uses", "prompt_days"} <= tables and NEW_DAY_COLUMNS <= columns


def test_upgrade_keeps_existing_days_and_downgrades(empty_url):
    from alembic import command

    from kyc.runtime import alembic_config

    upgrade_database(empty_url, "0008")
    engine = create_engine(empty_url)
    at = {"t": "2026-11-24 21:00:00+00:00", "d": "2026-11-24"}
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO accounts (id, created_at, first_seen_at, last_seen_at, decision, score, reasons, "
            "required_verifications, subjects, state_version, updated_at) VALUES ('a1', :t, :t, :t, 'allow', 0, "
            "'[]', '[]', '{}', 1, :t)"), at)
        conn.execute(text("INSERT INTO activity_days (account_id, day, requests, first_at, last_at, dormant_days) "
                          "VALUES ('a1', :d, 1200, :t, :t, 3)"), at)
    upgrade_database(empty_url)
    with engine.begin() as conn:
        row = conn.execute(text("SELECT requests, dormant_days, refused, tokens_in, cv_requests, history_days, hours "
                                "FROM activity_days WHERE account_id = 'a1'")).one()
    assert tuple(row) == (1200, 3, 0, 0, 0, 0, None)
    engine.dispose()
    command.downgrade(alembic_config(empty_url), "0008")
    tables, columns = _layout(empty_url)
    assert not {"activity_reports", "prompt_uses", "prompt_days"} & tables and not NEW_DAY_COLUMNS & columns
    engine = create_engine(empty_url)
    with engine.begin() as conn:
        assert conn.execute(text("SELECT requests FROM activity_days")).scalar() == 1200
    engine.dispose()
