"""idempotent_answers: kyc's answer to a call sent with an Idempotency-Key, kept a day
(kyc/idempotency.py)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('idempotent_answers',
    sa.Column('key_hash', sa.String(length=64), nullable=False),
    sa.Column('body_hash', sa.String(length=64), nullable=False),
    sa.Column('answer', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('key_hash')
    )
    op.create_index('ix_idempotent_answers_created_at', 'idempotent_answers', ['created_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_idempotent_answers_created_at', table_name='idempotent_answers')
    op.drop_table('idempotent_answers')
