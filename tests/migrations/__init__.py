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
