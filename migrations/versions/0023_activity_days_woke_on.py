"""activity_days.woke_on: the day of the account's latest wake, carried forward by each new day,
so that lockstep counts an account that woke yesterday as woken today too (a farm waking in the
last hour of a UTC day was woken only for that hour's reports: kyc/usage/lockstep.py).

Filled for the days that ended a dormancy longer than the default KYC_DORMANT_DAYS (30) and the
day after each; a later day carries the wake forward from the next new day on.

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op


revision = '0023'
down_revision = '0022'
branch_labels = None
depends_on = None

DEFAULT_DORMANT_DAYS = 30


def upgrade() -> None:
    with op.batch_alter_table('activity_days') as batch:
        batch.add_column(sa.Column('woke_on', sa.Date(), nullable=True))
    op.execute(f"UPDATE activity_days SET woke_on = day WHERE dormant_days > {DEFAULT_DORMANT_DAYS}")
    # The day after a wake (the account's next day of usage, if it is the calendar day after:
    # the only one lockstep reads a carried wake on). Written as a comparison both backends
    # read alike: the wake day is the latest earlier day, and one day before.
    dialect = op.get_bind().dialect.name
    next_day = "woke.day + 1" if dialect == "postgresql" else "date(woke.day, '+1 day')"
    op.execute("UPDATE activity_days SET woke_on = (SELECT woke.day FROM activity_days AS woke "
               "WHERE woke.account_id = activity_days.account_id AND woke.woke_on = woke.day "
               f"AND {next_day} = activity_days.day) "
               "WHERE woke_on IS NULL AND EXISTS (SELECT 1 FROM activity_days AS woke "
               "WHERE woke.account_id = activity_days.account_id AND woke.woke_on = woke.day "
               f"AND {next_day} = activity_days.day)")


def downgrade() -> None:
    with op.batch_alter_table('activity_days') as batch:
        batch.drop_column('woke_on')
