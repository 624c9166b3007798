"""Migration tests: each migration upgraded on an empty database and on one holding data."""

from __future__ import annotations

from sqlalchemy import create_engine, inspect, text


def table_names(url: str) -> set[str]:
    """The tables the database at `url` holds now."""
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def index_names(url: str, table: str) -> set[str]:
    """The names of `table`'s indexes in the database at `url` now."""
    engine = create_engine(url)
    try:
        return {index["name"] for index in inspect(engine).get_indexes(table)}
    finally:
        engine.dispose()


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
