"""activity_days.networks: the networks (/24, /64) an account's reports came from on the day, as
a set of hashed buckets (kyc.usage.reports.network_bit), for usage.networks_today and the lockstep
fact usage.woke_together_roaming (kyc/usage/lockstep.py).

Days stored before it hold 0: their reports kept only the day's last address, so how many
networks they came from is not known; a day's next report starts the set.

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op


revision = '0025'
down_revision = '0024'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('activity_days') as batch:
        batch.add_column(sa.Column('networks', sa.BigInteger(), nullable=False, server_default='0'))


def downgrade() -> None:
    with op.batch_alter_table('activity_days') as batch:
        batch.drop_column('networks')
