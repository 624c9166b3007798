"""prompt_starts: the UTC day each account began on each prompt template, which tells a farm
(its accounts begin on their shared templates together) from a tool's users (they adopt it
over weeks) (kyc.usage.lockstep, usage.lockstep_began_together); filled from prompt_uses

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op


revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('prompt_starts',
    sa.Column('value_hash', sa.String(length=32), nullable=False),
    sa.Column('account_id', sa.String(length=128), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.PrimaryKeyConstraint('value_hash', 'account_id')
    )
    # What is known already: the first day each account's uses of a template were kept.
    op.execute("INSERT INTO prompt_starts (value_hash, account_id, day) "
               "SELECT value_hash, account_id, min(day) FROM prompt_uses GROUP BY value_hash, account_id")


def downgrade() -> None:
    op.drop_table('prompt_starts')
