"""activity_days, activity_reports and sightings without their foreign key to accounts: every row
they get is written by a transaction that holds its account's row locked (an activity batch
locks its accounts and refuses the whole batch, writing nothing, if any is unknown:
kyc.usage.reports.record_reports; a signup or payment method creates or locks its account
first), and no account is ever deleted, so the check each row paid proved nothing: a bulk call
of 1,000 first-of-day reports (1,000 reports, ~985 days, ~6,000 sightings) 434 -> 397 ms of
PostgreSQL CPU, the same accounts again 171 -> 154 (means of 20 alternated rolled-back calls
each way, 1,000,000 accounts stored, load ~4-9). Like prompt_uses and graph_edges, which never
had one.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-05
"""

from alembic import op


revision = '0020'
down_revision = '0019'
branch_labels = None
depends_on = None

TABLES = ('activity_days', 'activity_reports', 'sightings')
# SQLite's foreign keys have no name: batch mode names the reflected one by this convention.
NAMING = {"fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s"}


def _name(table: str) -> str:
    if op.get_bind().dialect.name == "postgresql":
        return f"{table}_account_id_fkey"          # PostgreSQL's own name for it (migrations 0002, 0003, 0009)
    return f"fk_{table}_account_id_accounts"


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, schema=None, naming_convention=NAMING) as batch_op:
            batch_op.drop_constraint(_name(table), type_='foreignkey')


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.create_foreign_key(_name(table), 'accounts', ['account_id'], ['id'])
