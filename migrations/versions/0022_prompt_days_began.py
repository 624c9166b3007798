"""prompt_days.began: how many of a template's accounts that day began on it that day (their
first use of it ever). A template is popular (lockstep reads it as telling nothing) when many
accounts used it and most of them had begun on it before: a farm of more accounts than
KYC_USAGE_POPULAR_PROMPT, set going on its templates together, no longer makes them popular
(kyc/usage/lockstep.py).

Filled from prompt_starts: each start counted on its day.

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op


revision = '0022'
down_revision = '0021'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('prompt_days') as batch:
        batch.add_column(sa.Column('began', sa.Integer(), nullable=False, server_default='0'))
    # One grouped pass over prompt_starts (UPDATE .. FROM: PostgreSQL, SQLite 3.33 and later), not a
    # count per row of prompt_days.
    op.execute("UPDATE prompt_days SET began = starts.n FROM (SELECT value_hash, day, count(*) AS n "
               "FROM prompt_starts GROUP BY value_hash, day) AS starts "
               "WHERE starts.value_hash = prompt_days.value_hash AND starts.day = prompt_days.day")


def downgrade() -> None:
    with op.batch_alter_table('prompt_days') as batch:
        batch.drop_column('began')
