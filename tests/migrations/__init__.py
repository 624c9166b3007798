"""Migration tests: each migration upgraded on an empty database and on one holding data."""

from __future__ import annotations

from sqlalchemy import create_engine, inspect


def table_names(url: str) -> set[str]:
    """The tables the database at `url` holds now."""
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
