"""phone_claims: one row per verified phone number (its keyed hash), the first account to verify
it; its primary key keeps KYC_PHONE_UNIQUE under concurrent confirmations. Filled from the
verified phone verifications (the earliest per number owns it).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('phone_claims',
    sa.Column('target_hash', sa.String(length=32), nullable=False),
    sa.Column('account_id', sa.String(length=128), nullable=False),
    sa.Column('verification_id', sa.String(length=40), nullable=False),
    sa.Column('claimed_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], ),
    sa.PrimaryKeyConstraint('target_hash')
    )
    op.execute(
        "INSERT INTO phone_claims (target_hash, account_id, verification_id, claimed_at) "
        "SELECT v.target_hash, v.account_id, v.id, v.completed_at FROM verifications v "
        "WHERE v.kind = 'phone' AND v.status = 'verified' AND v.target_hash IS NOT NULL "
        "AND v.completed_at IS NOT NULL AND v.id = ("
        "  SELECT first.id FROM verifications first WHERE first.kind = 'phone' AND first.status = 'verified' "
        "  AND first.target_hash = v.target_hash AND first.completed_at IS NOT NULL "
        "  ORDER BY first.completed_at, first.id LIMIT 1)")


def downgrade() -> None:
    op.drop_table('phone_claims')
