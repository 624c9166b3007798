"""rescore_batches: ix_rescore_batches_unstarted, the batches no job has begun (partial). Settling
rescore asks reads them to leave out the accounts they will rescore anyway
(kyc.rescore.background.settle_asks): a few rows among every batch ever worked.

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op


revision = '0024'
down_revision = '0023'
branch_labels = None
depends_on = None

WHERE = sa.text("started_at IS NULL")


def upgrade() -> None:
    op.create_index('ix_rescore_batches_unstarted', 'rescore_batches', ['run_id'], unique=False,
                    postgresql_where=WHERE, sqlite_where=WHERE)


def downgrade() -> None:
    op.drop_index('ix_rescore_batches_unstarted', table_name='rescore_batches')
