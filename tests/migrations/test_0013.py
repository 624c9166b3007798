"""Migration 0013 (velocity_marks' key-and-time index carries account_id on PostgreSQL): on an
empty database and on one holding data, both backends, and back down; and what it is for, a
velocity count read from the index alone."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from alembic import command
from sqlalchemy import create_engine, inspect, text

from kyc.runtime import alembic_config, upgrade_database
from kyc.store import _COUNT_EACH_KEY, _count_params

AT = {"t": "2026-11-24 21:00:00+00:00"}


def _carried(url: str) -> list[str] | None:
    """The columns ix_velocity_marks_key_time carries besides its key (None: the backend has no INCLUDE)."""
    engine = create_engine(url)
    try:
        if engine.dialect.name != "postgresql":
            return None
        (index,) = [i for i in inspect(engine).get_indexes("velocity_marks") if i["name"] == "ix_velocity_marks_key_time"]
        assert index["column_names"] == ["kind", "value_hash", "last_at"]
        return index["dialect_options"].get("postgresql_include", [])
    finally:
        engine.dispose()


def test_upgrade_on_an_empty_database_carries_the_account_in_the_index(empty_url):
    upgrade_database(empty_url)
    assert _carried(empty_url) in (None, ["account_id"])


def test_upgrade_keeps_the_marks_and_downgrades(empty_url):
    upgrade_database(empty_url, "0012")
    engine = create_engine(empty_url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO velocity_marks (kind, value_hash, account_id, last_at) VALUES "
                          "('ip', 'h1', 'a1', :t), ('ip', 'h1', 'a2', :t)"), AT)
    upgrade_database(empty_url)
    assert _carried(empty_url) in (None, ["account_id"])
    with engine.begin() as conn:
        assert conn.execute(text("SELECT account_id FROM velocity_marks ORDER BY 1")).scalars().all() == ["a1", "a2"]
    engine.dispose()
    command.downgrade(alembic_config(empty_url), "0012")
    assert _carried(empty_url) in (None, [])
    engine = create_engine(empty_url)
    with engine.begin() as conn:
        assert conn.execute(text("SELECT count(*) FROM velocity_marks")).scalar_one() == 2
    engine.dispose()


def test_a_popular_key_is_counted_from_the_index_alone(empty_url):
    upgrade_database(empty_url)
    engine = create_engine(empty_url)
    if engine.dialect.name != "postgresql":
        engine.dispose()
        return
    now = datetime(2026, 11, 24, 21, tzinfo=timezone.utc)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO velocity_marks (kind, value_hash, account_id, last_at) "
                          "SELECT 'email_domain', 'gmail', 'a' || g, :t - g * interval '1 minute' "
                          "FROM generate_series(1, 3000) g"), {"t": now})
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE velocity_marks"))       # autovacuum's work, done now
    params = _count_params([("email_domain", "gmail")], now + timedelta(seconds=1), "a1", True)
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL enable_seqscan = off"))
        compiled = _COUNT_EACH_KEY.compile(dialect=engine.dialect, column_keys=sorted(params))
        plan = "\n".join(conn.exec_driver_sql("EXPLAIN " + compiled.string, compiled.construct_params(params)).scalars())
        counts = conn.execute(_COUNT_EACH_KEY, params).one()
    engine.dispose()
    assert "Index Only Scan" in plan and "ix_velocity_marks_key_time" in plan, plan
    assert counts[0] == 0 and max(counts[1:]) == 1000          # the newest COUNT_CAP other accounts
