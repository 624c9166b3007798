"""activity_days by day: the first day of usage kyc holds, where it began watching, read in one
index step (kyc.usage.lockstep: a template start that early is not when the account began)

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-05
"""

from alembic import op


revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_activity_days_day', 'activity_days', ['day'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_activity_days_day', table_name='activity_days')
