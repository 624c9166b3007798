"""Migration 0008 (phone_claims): on an empty database and on one holding verified phones, both backends."""

from __future__ import annotations

from sqlalchemy import create_engine, inspect, text

from kyc.runtime import alembic_config, upgrade_database

T = "2026-11-24 21:00:00+00:00"


def test_upgrade_on_an_empty_database(empty_url):
    upgrade_database(empty_url)
    engine = create_engine(empty_url)
    try:
        assert inspect(engine).get_pk_constraint("phone_claims")["constrained_columns"] == ["target_hash"]
    finally:
        engine.dispose()


def test_upgrade_gives_each_verified_number_to_its_first_account_and_downgrades(empty_url):
    from alembic import command

    upgrade_database(empty_url, "0007")
    engine = create_engine(empty_url)
    with engine.begin() as conn:
        for account in ("a1", "a2", "a3"):
            conn.execute(text(
                "INSERT INTO accounts (id, created_at, first_seen_at, last_seen_at, decision, score, reasons, "
                "required_verifications, subjects, state_version, updated_at) VALUES (:id, :t, :t, :t, 'allow', 0, "
                "'[]', '[]', '{}', 1, :t)"), {"id": account, "t": T})
        # h1 verified by a2 first, then by a1 (uniqueness was off); h2 only pending; h3 by a3.
        for vid, account, target, status, done in [
                ("vf_1", "a1", "h1", "verified", "2026-11-24 22:00:00+00:00"),
                ("vf_2", "a2", "h1", "verified", "2026-11-24 21:30:00+00:00"),
                ("vf_3", "a1", "h2", "pending", None),
                ("vf_4", "a3", "h3", "verified", "2026-11-24 21:10:00+00:00"),
                ("vf_5", "a3", "h3", "verified", "2026-11-25 21:10:00+00:00")]:
            conn.execute(text(
                "INSERT INTO verifications (id, account_id, kind, status, target_hash, attempts, sends, expires_at, "
                "created_at, completed_at) VALUES (:id, :a, 'phone', :s, :h, 1, 1, :t, :t, :d)"),
                {"id": vid, "a": account, "s": status, "h": target, "t": T, "d": done})
    upgrade_database(empty_url)
    with engine.begin() as conn:
        claims = conn.execute(text("SELECT target_hash, account_id, verification_id FROM phone_claims "
                                   "ORDER BY target_hash")).all()
    assert [tuple(c) for c in claims] == [("h1", "a2", "vf_2"), ("h3", "a3", "vf_4")]
    engine.dispose()
    command.downgrade(alembic_config(empty_url), "0007")
    engine = create_engine(empty_url)
    try:
        assert "phone_claims" not in inspect(engine).get_table_names()
    finally:
        engine.dispose()
