"""Migration 0010 (accounts.cluster_id dropped: cluster membership is the one source): on an
empty database and on one holding data, both backends."""

from __future__ import annotations

from sqlalchemy import create_engine, inspect, text

from kyc.runtime import upgrade_database


def _account_columns(url: str) -> tuple[set[str], set[str]]:
    engine = create_engine(url)
    try:
        found = inspect(engine)
        return ({c["name"] for c in found.get_columns("accounts")},
                {i["name"] for i in found.get_indexes("accounts")})
    finally:
        engine.dispose()


def test_upgrade_on_an_empty_database(empty_url):
    upgrade_database(empty_url)
    columns, indexes = _account_columns(empty_url)
    assert "cluster_id" not in columns and "ix_accounts_cluster_id" not in indexes
    assert {"id", "decision", "subjects", "label", "state_version"} <= columns


def test_upgrade_keeps_accounts_and_memberships_and_downgrades(empty_url):
    from alembic import command

    from kyc.runtime import alembic_config

    upgrade_database(empty_url, "0009")
    engine = create_engine(empty_url)
    at = {"t": "2026-11-24 21:00:00+00:00"}
    with engine.begin() as conn:
        for account, stale in (("a1", "cl_old"), ("a2", None)):
            conn.execute(text(
                "INSERT INTO accounts (id, created_at, first_seen_at, last_seen_at, decision, score, reasons, "
                "required_verifications, subjects, cluster_id, label, state_version, updated_at) VALUES "
                "(:id, :t, :t, :t, 'review', 40, '[]', '[]', '{}', :stale, 'fraud', 3, :t)"),
                {**at, "id": account, "stale": stale})
        conn.execute(text("INSERT INTO clusters (id, size, first_seen_at, blocked, labeled_fraud, disposable, voip, "
                          "hosting, headless, created_at, updated_at) VALUES ('cl_1', 2, :t, 0, 2, 0, 0, 0, 0, :t, :t)"),
                     at)
        for account in ("a1", "a2"):
            conn.execute(text("INSERT INTO cluster_members (account_id, cluster_id, joined_at, blocked, labeled_fraud, "
                              "disposable, voip, hosting, headless) VALUES (:a, 'cl_1', :t, false, true, false, "
                              "false, false, false)"), {**at, "a": account})
    upgrade_database(empty_url)
    with engine.begin() as conn:
        rows = conn.execute(text("SELECT id, decision, score, label, state_version FROM accounts ORDER BY id")).all()
        members = conn.execute(text("SELECT account_id, cluster_id FROM cluster_members ORDER BY account_id")).all()
    assert [tuple(r) for r in rows] == [("a1", "review", 40, "fraud", 3), ("a2", "review", 40, "fraud", 3)]
    assert [tuple(m) for m in members] == [("a1", "cl_1"), ("a2", "cl_1")]
    assert "cluster_id" not in _account_columns(empty_url)[0]
    engine.dispose()

    command.downgrade(alembic_config(empty_url), "0009")
    columns, indexes = _account_columns(empty_url)
    assert "cluster_id" in columns and "ix_accounts_cluster_id" in indexes
    engine = create_engine(empty_url)
    with engine.begin() as conn:
        # Filled back from the memberships, the one place that was right.
        assert conn.execute(text("SELECT id, cluster_id FROM accounts ORDER BY id")).all() == [("a1", "cl_1"),
                                                                                              ("a2", "cl_1")]
    engine.dispose()
