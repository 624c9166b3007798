"""Migration 0012 (idempotent_answers: answers kept under an Idempotency-Key): on an empty
database and on one holding data, both backends, and back down."""

from __future__ import annotations

from alembic import command
from sqlalchemy import create_engine, text

from kyc.runtime import alembic_config, upgrade_database
from tests.migrations import insert_account, table_names

AT = {"t": "2026-11-24 21:00:00+00:00"}


def test_upgrade_on_an_empty_database_keeps_one_answer_a_key(empty_url):
    upgrade_database(empty_url)
    engine = create_engine(empty_url)
    insert = text("INSERT INTO idempotent_answers (key_hash, body_hash, answer, created_at) VALUES ('k', :b, '[]', :t)")
    with engine.begin() as conn:
        conn.execute(insert, {**AT, "b": "b1"})
    try:
        with engine.begin() as conn:
            conn.execute(insert, {**AT, "b": "b2"})
        raised = False
    except Exception:  # noqa: BLE001 - the dialect's IntegrityError
        raised = True
    assert raised
    engine.dispose()


def test_upgrade_keeps_accounts_and_usage_and_downgrades(empty_url):
    upgrade_database(empty_url, "0011")
    engine = create_engine(empty_url)
    with engine.begin() as conn:
        insert_account(conn)
        conn.execute(text("INSERT INTO activity_days (account_id, day, requests, first_at, last_at, dormant_days) "
                          "VALUES ('a1', '2026-11-24', 40, :t, :t, 0)"), AT)
    upgrade_database(empty_url)
    assert "idempotent_answers" in table_names(empty_url)
    with engine.begin() as conn:
        assert conn.execute(text("SELECT id, decision, score FROM accounts")).all() == [("a1", "allow", 5)]
        assert conn.execute(text("SELECT requests FROM activity_days")).scalar_one() == 40
    engine.dispose()

    command.downgrade(alembic_config(empty_url), "0011")
    tables = table_names(empty_url)
    assert "idempotent_answers" not in tables and "accounts" in tables and "activity_days" in tables
