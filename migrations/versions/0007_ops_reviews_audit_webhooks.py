"""ops: key roles, a person's decision on accounts, the review queue, audit events, decision webhooks outbox

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03

Existing API keys become `admin`, so every integration keeps working; accounts already held at
`review` enter the review queue at their last update.
"""

from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("role", sa.String(length=16), nullable=False, server_default="admin"))

    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("override", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("review_since", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index("ix_accounts_review_since", ["review_since"], unique=False)
    op.execute("UPDATE accounts SET review_since = updated_at WHERE decision = 'review'")

    op.create_table(
        "audit_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("account_id", sa.String(length=128), nullable=True),
        sa.Column("cluster_id", sa.String(length=40), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.create_index("ix_audit_events_account", ["account_id", "id"], unique=False)
        batch_op.create_index("ix_audit_events_cluster", ["cluster_id", "id"], unique=False)
        batch_op.create_index("ix_audit_events_action", ["action", "id"], unique=False)

    op.create_table(
        "decision_webhooks",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(length=40), nullable=False),
        sa.Column("account_id", sa.String(length=128), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("event_id", name="uq_decision_webhooks_event_id"),
    )
    with op.batch_alter_table("decision_webhooks", schema=None) as batch_op:
        batch_op.create_index("ix_decision_webhooks_pending", ["delivered_at", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("decision_webhooks", schema=None) as batch_op:
        batch_op.drop_index("ix_decision_webhooks_pending")
    op.drop_table("decision_webhooks")
    for index in ("ix_audit_events_action", "ix_audit_events_cluster", "ix_audit_events_account"):
        with op.batch_alter_table("audit_events", schema=None) as batch_op:
            batch_op.drop_index(index)
    op.drop_table("audit_events")
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_index("ix_accounts_review_since")
        batch_op.drop_column("review_since")
        batch_op.drop_column("override")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_column("role")
