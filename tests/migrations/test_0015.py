"""Migration 0015 (a partial index of usage re-evaluations by when they were made, which the
backtest windows them by): on an empty database and on one holding data, both backends, and
back down."""

from __future__ import annotations

from alembic import command
from sqlalchemy import create_engine, text

from kyc.runtime import alembic_config, upgrade_database
from tests.migrations import index_names, insert_account

AT = {"t": "2026-12-05 06:00:00+00:00"}



def test_upgrade_on_an_empty_database_creates_the_index(empty_url):
    upgrade_database(empty_url)
    assert "ix_evaluations_usage_created" in index_names(empty_url, "evaluations")


def test_upgrade_keeps_evaluations_and_downgrades(empty_url):
    upgrade_database(empty_url, "0014")
    engine = create_engine(empty_url)
    with engine.begin() as conn:
        insert_account(conn)
        for ev, trigger in (("ev_1", "live"), ("ev_2", "usage")):
            conn.execute(text(
                "INSERT INTO evaluations (id, account_id, subject, trigger, occurred_at, created_at, input, signals, "
                "reasons, decision, score, required_verifications, rules_version) VALUES "
                "(:id, 'a1', 'signup', :trigger, :t, :t, '{}', '{}', '[]', 'allow', 0, '[]', 'sha256:x')"),
                {**AT, "id": ev, "trigger": trigger})
    upgrade_database(empty_url)
    assert "ix_evaluations_usage_created" in index_names(empty_url, "evaluations")
    with engine.begin() as conn:
        assert conn.execute(text("SELECT id FROM evaluations WHERE trigger = 'usage' ORDER BY created_at, id")
                            ).scalars().all() == ["ev_2"]
    engine.dispose()
    command.downgrade(alembic_config(empty_url), "0014")
    assert "ix_evaluations_usage_created" not in index_names(empty_url, "evaluations")
    engine = create_engine(empty_url)
    with engine.begin() as conn:
        assert conn.execute(text("SELECT count(*) FROM evaluations")).scalar_one() == 2
    engine.dispose()
