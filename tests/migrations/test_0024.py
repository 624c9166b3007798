"""Migration 0024 (ix_rescore_batches_unstarted, the batches no job has begun): on an empty
database and on one holding runs and batches, both backends, and back down."""

from __future__ import annotations

from alembic import command
from sqlalchemy import create_engine, text

from kyc.runtime import alembic_config, upgrade_database
from tests.migrations import index_names

INDEX = "ix_rescore_batches_unstarted"


def test_upgrade_on_an_empty_database_adds_the_index(empty_url):
    upgrade_database(empty_url)
    assert INDEX in index_names(empty_url, "rescore_batches")


def test_upgrade_keeps_the_batches_and_reads_the_unstarted_ones_then_downgrades(empty_url):
    upgrade_database(empty_url, "0023")
    engine = create_engine(empty_url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO rescore_runs (id, selector, params, reason, rules_version, total, batches, "
                          "created_at) VALUES ('run_1', 'ids', '{}', 'cluster standing changed', 'v', 3, 2, "
                          "'2026-12-06 21:00:00+00:00')"))
        conn.execute(text("INSERT INTO rescore_batches (run_id, batch_no, account_ids, cursor, changes, escalated, held, "
                          "missing, attempts, started_at) VALUES "
                          "('run_1', 0, '[\"a1\", \"a2\"]', 2, '{}', 0, 0, 0, 1, '2026-12-06 21:00:01+00:00'), "
                          "('run_1', 1, '[\"a3\"]', 0, '{}', 0, 0, 0, 0, NULL)"))
    engine.dispose()
    upgrade_database(empty_url)
    assert INDEX in index_names(empty_url, "rescore_batches")
    engine = create_engine(empty_url)
    with engine.begin() as conn:
        assert conn.execute(text("SELECT batch_no FROM rescore_batches WHERE started_at IS NULL")).scalars().all() == [1]
        assert conn.execute(text("SELECT count(*) FROM rescore_batches")).scalar_one() == 2
    engine.dispose()
    command.downgrade(alembic_config(empty_url), "0023")
    assert INDEX not in index_names(empty_url, "rescore_batches")
