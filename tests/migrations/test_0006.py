"""Migration 0006 (drop ix_sightings_account): on an empty database and on one holding data, both backends."""

from __future__ import annotations

from sqlalchemy import create_engine, text

from kyc.runtime import upgrade_database
from tests.migrations import index_names


def test_upgrade_on_an_empty_database(empty_url):
    upgrade_database(empty_url)
    indexes = index_names(empty_url, "sightings")
    assert "ix_sightings_account" not in indexes and "ix_sightings_account_kind_time" in indexes


def test_upgrade_keeps_existing_sightings_and_downgrades(empty_url):
    from alembic import command

    from kyc.runtime import alembic_config

    upgrade_database(empty_url, "0005")
    assert "ix_sightings_account" in index_names(empty_url, "sightings")
    engine = create_engine(empty_url)
    at = {"t": "2026-11-24 21:00:00+00:00"}
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO accounts (id, created_at, first_seen_at, last_seen_at, decision, score, reasons, "
            "required_verifications, subjects, state_version, updated_at) VALUES ('a1', :t, :t, :t, 'allow', 0, "
            "'[]', '[]', '{}', 1, :t)"), at)
        conn.execute(text("INSERT INTO sightings (kind, value_hash, account_id, evaluation_id, occurred_at) "
                          "VALUES ('device', 'h1', 'a1', 'ev_1', :t)"), at)
    upgrade_database(empty_url)
    assert "ix_sightings_account" not in index_names(empty_url, "sightings")
    with engine.begin() as conn:
        assert conn.execute(text("SELECT kind, value_hash FROM sightings WHERE account_id = 'a1'")).one() == (
            "device", "h1")
    engine.dispose()
    command.downgrade(alembic_config(empty_url), "0005")
    assert "ix_sightings_account" in index_names(empty_url, "sightings")
