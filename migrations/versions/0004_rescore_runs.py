"""rescore runs and batches: resumable background rescoring

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rescore_runs",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("selector", sa.String(length=32), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("rules_version", sa.String(length=80), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("batches", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("rescore_runs", schema=None) as batch_op:
        batch_op.create_index("ix_rescore_runs_selector_created", ["selector", "created_at"], unique=False)

    op.create_table(
        "rescore_batches",
        sa.Column("run_id", sa.String(length=40), nullable=False),
        sa.Column("batch_no", sa.Integer(), nullable=False),
        sa.Column("account_ids", sa.JSON(), nullable=False),
        sa.Column("cursor", sa.Integer(), nullable=False),
        sa.Column("changes", sa.JSON(), nullable=False),
        sa.Column("escalated", sa.Integer(), nullable=False),
        sa.Column("held", sa.Integer(), nullable=False),
        sa.Column("missing", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["rescore_runs.id"]),
        sa.PrimaryKeyConstraint("run_id", "batch_no"),
    )


def downgrade() -> None:
    op.drop_table("rescore_batches")
    with op.batch_alter_table("rescore_runs", schema=None) as batch_op:
        batch_op.drop_index("ix_rescore_runs_selector_created")
    op.drop_table("rescore_runs")
