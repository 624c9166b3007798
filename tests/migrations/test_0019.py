"""Migration 0019 (ix_sightings_key_time holds the velocity kinds only): on an empty database and
on one holding sightings, both backends, and back down; its readers still read through it, with
PostgreSQL's generic plans (kyc.db._generic_plans), which do not know the kind they are given."""

from __future__ import annotations

from alembic import command
from sqlalchemy import create_engine, text
from sqlalchemy.dialects.postgresql import asyncpg

from kyc.models import VELOCITY_KINDS
from kyc.runtime import alembic_config, upgrade_database
from kyc.signals.velocity import VELOCITY_KEYS
from kyc.store import _CARD_HISTORY, _sighting_count_statement
from tests.migrations import grow_sightings, insert_account

SIGHTING = ("INSERT INTO sightings (kind, value_hash, account_id, evaluation_id, occurred_at) "
            "VALUES (:kind, :h, 'a1', 'ev_1', '2026-12-05 06:00:00+00:00')")


def _key_index(url: str) -> str:
    """ix_sightings_key_time's definition."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            if url.startswith("sqlite"):
                return conn.execute(text("SELECT sql FROM sqlite_master WHERE name = 'ix_sightings_key_time'")
                                    ).scalar()
            return conn.execute(text("SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_sightings_key_time' "
                                     "AND schemaname = current_schema()")).scalar()
    finally:
        engine.dispose()


def _plans(url: str) -> list[str]:
    """The plans of the velocity counts from the sightings and of a card's history: generic plans
    (the statements prepared, the kinds parameters) on PostgreSQL, SQLite's query plans."""
    engine = create_engine(url)
    plans = []
    try:
        with engine.connect() as conn:
            if url.startswith("sqlite"):
                for statement in (_sighting_count_statement(1), _CARD_HISTORY):
                    compiled = statement.compile(dialect=engine.dialect)
                    plans.append(" ".join(str(row[-1]) for row in conn.exec_driver_sql(
                        "EXPLAIN QUERY PLAN " + compiled.string, tuple(compiled.params[k] for k in compiled.positiontup))))
                return plans
            conn.execute(text("SET plan_cache_mode = force_generic_plan"))
            for name, statement in (("counts", _sighting_count_statement(1)), ("cards", _CARD_HISTORY)):
                compiled = statement.compile(dialect=asyncpg.dialect())        # $n parameters, for PREPARE
                conn.exec_driver_sql(f"PREPARE {name} AS {compiled.string}")
                args = ", ".join("NULL" for _ in compiled.positiontup)
                plans.append(" ".join(conn.exec_driver_sql(f"EXPLAIN EXECUTE {name}({args})").scalars()))
            return plans
    finally:
        engine.dispose()


def test_the_kinds_are_velocity_s():
    assert set(VELOCITY_KINDS) == set(VELOCITY_KEYS)


def test_upgrade_on_an_empty_database_keeps_velocity_kinds_only_and_reads_through_it(empty_url):
    upgrade_database(empty_url)
    assert "WHERE" in _key_index(empty_url) and "'prompt'" not in _key_index(empty_url)
    grow_sightings(empty_url)               # planned with rows (0021's index costs the same empty)
    counts, cards = _plans(empty_url)
    assert "ix_sightings_key_time" in counts
    assert "ix_sightings_key_time" in cards           # the device's sightings (anchor)


def test_upgrade_keeps_sightings_and_downgrades(empty_url):
    upgrade_database(empty_url, "0018")
    assert "WHERE" not in _key_index(empty_url)
    engine = create_engine(empty_url)
    with engine.begin() as conn:
        insert_account(conn)
        conn.execute(text(SIGHTING), {"kind": "ip", "h": "h1"})
        conn.execute(text(SIGHTING), {"kind": "prompt", "h": "h2"})
    upgrade_database(empty_url)
    assert "WHERE" in _key_index(empty_url)
    with engine.begin() as conn:
        assert conn.execute(text("SELECT kind FROM sightings WHERE kind = 'ip' AND value_hash = 'h1'")).scalar() == "ip"
        assert conn.execute(text("SELECT count(*) FROM sightings")).scalar_one() == 2
    engine.dispose()
    command.downgrade(alembic_config(empty_url), "0018")
    assert "WHERE" not in _key_index(empty_url)
    engine = create_engine(empty_url)
    with engine.begin() as conn:
        assert conn.execute(text("SELECT count(*) FROM sightings")).scalar_one() == 2
    engine.dispose()
