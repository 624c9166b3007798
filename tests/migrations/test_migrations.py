"""Migrations: upgrade an empty database and one holding data; models and migrations agree."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text

from kyc.db import Base
from kyc.runtime import alembic_config, upgrade_database


def _revisions(url: str) -> list[str]:
    script = ScriptDirectory.from_config(alembic_config(url))
    return [r.revision for r in reversed(list(script.walk_revisions()))]


def test_single_head():
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    assert len(script.get_heads()) == 1, script.get_heads()


def test_upgrade_empty_database_matches_models(empty_url):
    upgrade_database(empty_url)
    engine = create_engine(empty_url)
    with engine.connect() as conn:
        assert set(Base.metadata.tables) <= set(inspect(conn).get_table_names())
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    # Index/type drift between models and migrations would show here.
    assert diff == [], diff


def test_upgrade_keeps_existing_data(empty_url):
    revisions = _revisions(empty_url)
    upgrade_database(empty_url, revisions[0])
    engine = create_engine(empty_url)
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO accounts (id, created_at, first_seen_at, last_seen_at, decision, score, reasons, "
            "required_verifications, subjects, state_version, updated_at) VALUES ('acct_old', "
            "'2026-01-01 00:00:00+00', '2026-01-01 00:00:00+00', '2026-01-01 00:00:00+00', 'verify', 40, '[]', "
            "'[\"phone\"]', '{}', 3, '2026-01-01 00:00:00+00')"))
    upgrade_database(empty_url)
    with engine.connect() as conn:
        row = conn.execute(text("SELECT decision, score, state_version FROM accounts WHERE id = 'acct_old'")).one()
    engine.dispose()
    assert tuple(row) == ("verify", 40, 3)


def test_embedded_default_upgrades_an_older_sqlite_file_at_start(tmp_path, make_config):
    from kyc.runtime import Runtime

    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade_database(url, _revisions(url)[0])                  # a file made by the first release
    runtime = Runtime.start(make_config(url))                  # migrate=None: the embedded default
    with runtime.engine.connect() as conn:
        assert set(Base.metadata.tables) <= set(inspect(conn).get_table_names())
    runtime.engine.dispose()
