"""Migration tests: each migration upgraded on an empty database and on one holding data."""

from __future__ import annotations

from contextlib import contextmanager

from alembic import command
from sqlalchemy import create_engine, inspect, text

from kyc.runtime import alembic_config, upgrade_database


@contextmanager
def _inspected(url: str):
    """An inspector of the database at `url` now, its engine disposed on leaving."""
    engine = create_engine(url)
    try:
        yield inspect(engine)
    finally:
        engine.dispose()


def table_names(url: str) -> set[str]:
    """The tables the database at `url` holds now."""
    with _inspected(url) as found:
        return set(found.get_table_names())


def column_names(url: str, table: str) -> set[str]:
    """The names of `table`'s columns in the database at `url` now."""
    with _inspected(url) as found:
        return {column["name"] for column in found.get_columns(table)}


def index_names(url: str, table: str) -> set[str]:
    """The names of `table`'s indexes in the database at `url` now."""
    with _inspected(url) as found:
        return {index["name"] for index in found.get_indexes(table)}


def insert_account(conn, at: str = "2026-11-24 21:00:00+00:00") -> None:
    """Account a1 (allow, score 5) as migrations 0010 and later hold it."""
    conn.execute(text(
        "INSERT INTO accounts (id, created_at, first_seen_at, last_seen_at, decision, score, reasons, "
        "required_verifications, subjects, label, state_version, updated_at) VALUES "
        "('a1', :t, :t, :t, 'allow', 5, '[]', '[]', '{}', NULL, 1, :t)"), {"t": at})


def grow_sightings(url: str, accounts: int = 20_000) -> None:
    """PostgreSQL: sightings of `accounts` accounts, of velocity and linking kinds, and fresh
    statistics: with both of the sightings' partial indexes (migrations 0019, 0021) an empty
    table's plans cost them alike, and the planner tells them apart only from the rows."""
    if url.startswith("sqlite"):
        return
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO sightings (kind, value_hash, account_id, evaluation_id, occurred_at) "
                "SELECT k, md5(k || g), 'grown' || g, 'ev' || g, now() - g * interval '1 second' "
                "FROM generate_series(1, :n) g, unnest(array['ip', 'device', 'card_fingerprint', 'prompt', 'api_key']) k"),
                {"n": accounts})
            conn.execute(text("ANALYZE sightings"))
    finally:
        engine.dispose()


def index_definition(url: str, name: str) -> str | None:
    """The index `name`'s definition (its SQL) in the database at `url` now."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            if url.startswith("sqlite"):
                return conn.execute(text("SELECT sql FROM sqlite_master WHERE name = :n"), {"n": name}).scalar()
            return conn.execute(text("SELECT indexdef FROM pg_indexes WHERE indexname = :n "
                                     "AND schemaname = current_schema()"), {"n": name}).scalar()
    finally:
        engine.dispose()


def sightings_kept_while_index_goes_partial(url: str, before: str, index: str) -> None:
    """Upgrade from `before` with an ip and a prompt sighting stored, then downgrade back: both are
    kept each way, and `index` gains its WHERE (partial on the velocity kinds) and loses it again."""
    upgrade_database(url, before)
    assert "WHERE" not in index_definition(url, index)
    engine = create_engine(url)
    sighting = ("INSERT INTO sightings (kind, value_hash, account_id, evaluation_id, occurred_at) "
                "VALUES (:kind, :h, 'a1', 'ev_1', '2026-12-05 06:00:00+00:00')")
    with engine.begin() as conn:
        insert_account(conn)
        conn.execute(text(sighting), {"kind": "ip", "h": "h1"})
        conn.execute(text(sighting), {"kind": "prompt", "h": "h2"})
    upgrade_database(url)
    assert "WHERE" in index_definition(url, index)
    with engine.begin() as conn:
        assert conn.execute(text("SELECT kind FROM sightings WHERE account_id = 'a1' AND kind = 'ip' "
                                 "AND value_hash = 'h1'")).scalar() == "ip"
        assert conn.execute(text("SELECT count(*) FROM sightings")).scalar_one() == 2
    engine.dispose()
    command.downgrade(alembic_config(url), before)
    assert "WHERE" not in index_definition(url, index)
    engine = create_engine(url)
    with engine.begin() as conn:
        assert conn.execute(text("SELECT count(*) FROM sightings")).scalar_one() == 2
    engine.dispose()


def query_plans(url: str, postgresql: list, sqlite: list) -> list[str]:
    """The plans of `postgresql`'s statements on PostgreSQL, as generic plans (each statement
    prepared: what kyc's forced generic plans run), or of `sqlite`'s on SQLite (its query plans)."""
    from sqlalchemy.dialects.postgresql import asyncpg

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            if url.startswith("sqlite"):
                plans = []
                for statement in sqlite:
                    compiled = statement.compile(dialect=engine.dialect)
                    plans.append(" ".join(str(row[-1]) for row in conn.exec_driver_sql(
                        "EXPLAIN QUERY PLAN " + compiled.string, tuple(compiled.params[k] for k in compiled.positiontup))))
                return plans
            conn.execute(text("SET plan_cache_mode = force_generic_plan"))
            plans = []
            for n, statement in enumerate(postgresql):
                # $n parameters, for PREPARE; a literal list (IN of constants) one parameter each
                compiled = statement.compile(dialect=asyncpg.dialect(), compile_kwargs={"render_postcompile": True})
                conn.exec_driver_sql(f"PREPARE plan_{n} AS {compiled.string}")
                args = ", ".join("NULL" for _ in compiled.positiontup)
                plans.append(" ".join(conn.exec_driver_sql(f"EXPLAIN EXECUTE plan_{n}({args})").scalars()))
            return plans
    finally:
        engine.dispose()
