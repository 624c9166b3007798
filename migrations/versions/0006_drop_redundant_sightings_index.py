"""drop ix_sightings_account: ix_sightings_account_kind_time leads with account_id and serves
every lookup by account, so the single-column index only cost an insertion per sighting

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25
"""

from alembic import op


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('sightings', schema=None) as batch_op:
        batch_op.drop_index('ix_sightings_account')


def downgrade() -> None:
    with op.batch_alter_table('sightings', schema=None) as batch_op:
        batch_op.create_index('ix_sightings_account', ['account_id'], unique=False)
