"""Migration 0007 (key roles, overrides and the review queue, audit, decision webhooks): empty and with data."""

from __future__ import annotations

from sqlalchemy import create_engine, inspect, text

from kyc.runtime import upgrade_database


def test_upgrade_on_an_empty_database(empty_url):
    upgrade_database(empty_url)
    engine = create_engine(empty_url)
    tables = set(inspect(engine).get_table_names())
    columns = {c["name"] for c in inspect(engine).get_columns("accounts")}
    engine.dispose()
    assert {"audit_events", "decision_webhooks"} <= tables and {"override", "review_since"} <= columns


def test_existing_keys_become_admin_and_held_accounts_enter_the_queue(empty_url):
    from alembic import command

    from kyc.runtime import alembic_config

    upgrade_database(empty_url, "0006")
    engine = create_engine(empty_url)
    at = {"t": "2026-11-24 21:00:00+00:00"}
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO api_keys (name, prefix, key_hash, created_at) VALUES ('old', 'kyc_x', 'h', :t)"),
                     at)
        for account, decision in (("a_review", "review"), ("a_allow", "allow")):
            conn.execute(text(
                "INSERT INTO accounts (id, created_at, first_seen_at, last_seen_at, decision, score, reasons, "
                "required_verifications, subjects, state_version, updated_at) VALUES (:id, :t, :t, :t, :d, 0, "
                "'[]', '[]', '{}', 1, :t)"), {"id": account, "d": decision, **at})
    upgrade_database(empty_url)
    with engine.begin() as conn:
        assert conn.execute(text("SELECT role FROM api_keys WHERE name = 'old'")).scalar_one() == "admin"
        queued = conn.execute(text("SELECT id FROM accounts WHERE review_since IS NOT NULL")).scalars().all()
        assert queued == ["a_review"]
    engine.dispose()
    command.downgrade(alembic_config(empty_url), "0006")
    engine = create_engine(empty_url)
    assert "audit_events" not in inspect(engine).get_table_names()
    assert "role" not in {c["name"] for c in inspect(engine).get_columns("api_keys")}
    engine.dispose()
