"""sightings by evaluation and by account and kind: cards per device and per account (card testing)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""

from alembic import op


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('sightings', schema=None) as batch_op:
        batch_op.create_index('ix_sightings_evaluation_kind', ['evaluation_id', 'kind'], unique=False)
        batch_op.create_index('ix_sightings_account_kind_time', ['account_id', 'kind', 'occurred_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('sightings', schema=None) as batch_op:
        batch_op.drop_index('ix_sightings_account_kind_time')
        batch_op.drop_index('ix_sightings_evaluation_kind')
