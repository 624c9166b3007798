"""sightings: ix_sightings_account_kind_time holds the velocity kinds only (partial), as
ix_sightings_key_time does since 0019: its readers (the cards added to an account, the keys an
evaluation counted, what linking finds an account sighted that day) read velocity kinds and say
so, and 4 of an activity report's 6 sightings are of linking kinds (its API key, its templates,
its network that day), each an insertion for nothing now that no foreign key needs the index
either (0020): a bulk call of 1,000 first-of-day reports 397 -> 389 ms of PostgreSQL CPU, the
same accounts again 154 -> 151 (means of 20 alternated rolled-back calls each way in one
process, 1,000,000 accounts stored, load 4-9).

PostgreSQL: built under a new name before the old one is dropped, so readers always have one;
the build holds off writes to sightings until it is done (as any index build in a migration here).

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op


revision = '0021'
down_revision = '0020'
branch_labels = None
depends_on = None

# kyc.models.VELOCITY_SIGHTINGS as of this revision (a later kind needs its own migration).
VELOCITY_SIGHTINGS = ("kind IN ('asn', 'card_bin', 'card_fingerprint', 'device', 'email', 'email_domain', "
                      "'email_template', 'ip', 'ip_prefix', 'phone_range')")
COLUMNS = ['account_id', 'kind', 'occurred_at']


def upgrade() -> None:
    where = sa.text(VELOCITY_SIGHTINGS)
    if op.get_bind().dialect.name == "postgresql":
        op.create_index('ix_sightings_velocity_account_kind_time', 'sightings', COLUMNS, unique=False,
                        postgresql_where=where)
        op.drop_index('ix_sightings_account_kind_time', table_name='sightings')
        op.execute("ALTER INDEX ix_sightings_velocity_account_kind_time RENAME TO ix_sightings_account_kind_time")
    else:
        op.drop_index('ix_sightings_account_kind_time', table_name='sightings')
        op.create_index('ix_sightings_account_kind_time', 'sightings', COLUMNS, unique=False, sqlite_where=where)


def downgrade() -> None:
    op.drop_index('ix_sightings_account_kind_time', table_name='sightings')
    op.create_index('ix_sightings_account_kind_time', 'sightings', COLUMNS, unique=False)
