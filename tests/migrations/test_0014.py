"""Migration 0014 (rescore_asks: the rescoring a transaction asks for, committed with it): on an
empty database and on one holding data, both backends, and back down."""

from __future__ import annotations

from alembic import command
from sqlalchemy import create_engine, text

from kyc.runtime import alembic_config, upgrade_database
from tests.migrations import insert_account, table_names

AT = {"t": "2026-12-05 06:00:00+00:00"}


def test_upgrade_on_an_empty_database_takes_an_ask(empty_url):
    upgrade_database(empty_url)
    engine = create_engine(empty_url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO rescore_asks (accounts, clusters, created_at) VALUES (:a, :c, :t)"),
                     {**AT, "a": '["a1"]', "c": '{"cl_1": "a2"}'})
        assert conn.execute(text("SELECT count(*) FROM rescore_asks")).scalar_one() == 1
    engine.dispose()


def test_upgrade_keeps_accounts_and_downgrades(empty_url):
    upgrade_database(empty_url, "0013")
    engine = create_engine(empty_url)
    with engine.begin() as conn:
        insert_account(conn)
    upgrade_database(empty_url)
    assert "rescore_asks" in table_names(empty_url)
    with engine.begin() as conn:
        assert conn.execute(text("SELECT id, decision, score FROM accounts")).all() == [("a1", "allow", 5)]
    engine.dispose()

    command.downgrade(alembic_config(empty_url), "0013")
    tables = table_names(empty_url)
    assert "rescore_asks" not in tables and "accounts" in tables
