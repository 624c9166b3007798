"""Migration 0005 (sightings by evaluation) on an empty database and on one holding data,
SQLite and PostgreSQL; and the models agree with the migrated schema."""

from __future__ import annotations

from datetime import datetime, timezone

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, text

from kyc.db import Base
from kyc.runtime import alembic_config, upgrade_database
from tests.migrations import index_names

NEW = {"ix_sightings_evaluation_kind", "ix_sightings_account_kind_time"}


def test_upgrade_on_an_empty_database_matches_the_models(empty_url):
    upgrade_database(empty_url)
    assert NEW <= index_names(empty_url, "sightings")
    engine = create_engine(empty_url)
    try:
        with engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    finally:
        engine.dispose()


def test_upgrade_keeps_existing_data_and_downgrade_removes_only_the_index(empty_url):
    upgrade_database(empty_url, "0001")
    assert not NEW & index_names(empty_url, "sightings")
    at = datetime(2026, 11, 24, 21, tzinfo=timezone.utc)
    engine = create_engine(empty_url)
    try:
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO accounts (id, created_at, first_seen_at, last_seen_at, decision, score, reasons, "
                "required_verifications, subjects, state_version, updated_at) "
                "VALUES ('a1', :at, :at, :at, 'allow', 0, '[]', '[]', '{}', 1, :at)"), {"at": at})
            conn.execute(text(
                "INSERT INTO sightings (kind, value_hash, account_id, evaluation_id, occurred_at) "
                "VALUES ('card_fingerprint', 'h1', 'a1', 'ev_1', :at)"), {"at": at})
        upgrade_database(empty_url)
        assert NEW <= index_names(empty_url, "sightings")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT account_id FROM sightings WHERE evaluation_id = 'ev_1'")).scalar() == "a1"
        command.downgrade(alembic_config(empty_url), "0004")        # 0005's parent: undo it and what follows
        assert not NEW & index_names(empty_url, "sightings")
        assert {"ix_sightings_key_time", "ix_sightings_account"} <= index_names(empty_url, "sightings")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM sightings")).scalar() == 1
    finally:
        engine.dispose()
