"""velocity_marks: the key-and-time index also carries account_id (PostgreSQL), so a velocity
count (kyc.store, newest COUNT_CAP marks of a key but the account's own) reads the index alone

A popular key's count read up to COUNT_CAP heap rows per signup only to test account_id: 8 keys of
a signup, 941 marks, 590 buffers and 0.44-0.52 ms of execution; with the column in the index and
the table vacuumed (autovacuum's work in production), 34 buffers and 0.33-0.39 ms. SQLite has no
INCLUDE: its index stays as it was.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04
"""

from alembic import op


revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index('ix_velocity_marks_key_time', table_name='velocity_marks')
    op.create_index('ix_velocity_marks_key_time', 'velocity_marks', ['kind', 'value_hash', 'last_at'], unique=False,
                    postgresql_include=['account_id'])


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index('ix_velocity_marks_key_time', table_name='velocity_marks')
    op.create_index('ix_velocity_marks_key_time', 'velocity_marks', ['kind', 'value_hash', 'last_at'], unique=False)
