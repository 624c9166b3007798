"""Migration 0016 (prompt_starts: the day each account began on each prompt template): on an
empty database and on one holding prompt uses, which it reads the starts from, both backends,
and back down."""

from __future__ import annotations

from datetime import date

from alembic import command
from sqlalchemy import create_engine, text

from kyc.runtime import alembic_config, upgrade_database
from tests.migrations import insert_account, table_names


def test_upgrade_on_an_empty_database_takes_a_start(empty_url):
    upgrade_database(empty_url)
    engine = create_engine(empty_url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO prompt_starts (value_hash, account_id, day) VALUES ('h1', 'a1', '2026-11-24')"))
        assert conn.execute(text("SELECT count(*) FROM prompt_starts")).scalar_one() == 1
    engine.dispose()


def test_upgrade_reads_each_account_s_start_from_its_uses_and_downgrades(empty_url):
    upgrade_database(empty_url, "0015")
    engine = create_engine(empty_url)
    with engine.begin() as conn:
        insert_account(conn)
        for value_hash, account, day in (("h1", "a1", "2026-11-20"), ("h1", "a1", "2026-11-24"),
                                         ("h2", "a1", "2026-11-23"), ("h1", "a2", "2026-11-22"),
                                         ("h1", "a2", "2026-11-21")):
            conn.execute(text("INSERT INTO prompt_uses (value_hash, day, account_id, hours) VALUES (:h, :d, :a, 1)"),
                         {"h": value_hash, "d": day, "a": account})
    upgrade_database(empty_url)
    with engine.begin() as conn:
        starts = {(h, a): d if isinstance(d, date) else date.fromisoformat(d) for h, a, d in conn.execute(
            text("SELECT value_hash, account_id, day FROM prompt_starts"))}
        assert conn.execute(text("SELECT count(*) FROM prompt_uses")).scalar_one() == 5
    engine.dispose()
    assert starts == {("h1", "a1"): date(2026, 11, 20), ("h2", "a1"): date(2026, 11, 23),
                      ("h1", "a2"): date(2026, 11, 21)}

    command.downgrade(alembic_config(empty_url), "0015")
    tables = table_names(empty_url)
    assert "prompt_starts" not in tables and "prompt_uses" in tables
