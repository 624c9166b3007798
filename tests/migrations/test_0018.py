"""Migration 0018 (drop the activity reports' index by account, which nothing reads): on an empty
database and on one holding reports, both backends, and back down."""

from __future__ import annotations

from alembic import command
from sqlalchemy import create_engine, text

from kyc.runtime import alembic_config, upgrade_database
from tests.migrations import index_names, insert_account

INDEX = "ix_activity_reports_account_time"


def test_upgrade_on_an_empty_database_leaves_reports_without_the_index(empty_url):
    upgrade_database(empty_url)
    assert INDEX not in index_names(empty_url, "activity_reports")


def test_upgrade_keeps_reports_and_downgrades(empty_url):
    upgrade_database(empty_url, "0017")
    assert INDEX in index_names(empty_url, "activity_reports")
    engine = create_engine(empty_url)
    with engine.begin() as conn:
        insert_account(conn)
        conn.execute(text(
            "INSERT INTO activity_reports (account_id, occurred_at, window_seconds, requests, received_at) "
            "VALUES ('a1', '2026-12-05 06:00:00+00:00', 3600, 12, '2026-12-05 06:00:01+00:00')"))
    upgrade_database(empty_url)
    assert INDEX not in index_names(empty_url, "activity_reports")
    with engine.begin() as conn:
        assert conn.execute(text("SELECT requests FROM activity_reports WHERE account_id = 'a1'")).scalar_one() == 12
    engine.dispose()
    command.downgrade(alembic_config(empty_url), "0017")
    assert INDEX in index_names(empty_url, "activity_reports")
    engine = create_engine(empty_url)
    with engine.begin() as conn:
        assert conn.execute(text("SELECT count(*) FROM activity_reports")).scalar_one() == 1
    engine.dispose()
