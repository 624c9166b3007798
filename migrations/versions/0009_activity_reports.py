"""activity reports as sent (identifiers hashed), the usage totals of each account's day, and
who used which prompt template when (lockstep detection)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

_DAY_COLUMNS = (
    ('refused', sa.BigInteger(), '0'),
    ('tokens_in', sa.BigInteger(), '0'),
    ('tokens_out', sa.BigInteger(), '0'),
    ('hours', sa.JSON(), None),
    ('cv_sum', sa.Float(), '0'),
    ('cv_requests', sa.BigInteger(), '0'),
    ('models', sa.JSON(), None),
    ('fingerprints', sa.JSON(), None),
    ('tier', sa.String(length=64), None),
    ('baseline', sa.Float(), '0'),
    ('history_days', sa.Integer(), '0'),
    ('first_used_at', sa.DateTime(timezone=True), None),
)


def upgrade() -> None:
    op.create_table('activity_reports',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('account_id', sa.String(length=128), nullable=False),
    sa.Column('occurred_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('window_seconds', sa.Integer(), nullable=False),
    sa.Column('requests', sa.BigInteger(), nullable=False),
    sa.Column('refused', sa.BigInteger(), nullable=True),
    sa.Column('ip_hash', sa.String(length=32), nullable=True),
    sa.Column('api_key_hash', sa.String(length=32), nullable=True),
    sa.Column('tier', sa.String(length=64), nullable=True),
    sa.Column('user_agent', sa.String(length=1024), nullable=True),
    sa.Column('tokens_in', sa.BigInteger(), nullable=True),
    sa.Column('tokens_out', sa.BigInteger(), nullable=True),
    sa.Column('models', sa.JSON(), nullable=True),
    sa.Column('prompt_fingerprints', sa.JSON(), nullable=True),
    sa.Column('interval_cv', sa.Float(), nullable=True),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('activity_reports', schema=None) as batch_op:
        batch_op.create_index('ix_activity_reports_account_time', ['account_id', 'occurred_at'], unique=False)
    # Days recorded before this revision keep their requests; the new totals start at zero
    # (a server default fills them, and any writer that does not know the new columns).
    with op.batch_alter_table('activity_days', schema=None) as batch_op:
        for name, type_, default in _DAY_COLUMNS:
            batch_op.add_column(sa.Column(name, type_, nullable=default is None,
                                          server_default=sa.text(default) if default is not None else None))


    op.create_table('prompt_uses',
    sa.Column('value_hash', sa.String(length=32), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('account_id', sa.String(length=128), nullable=False),
    sa.Column('hours', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('value_hash', 'day', 'account_id')
    )
    with op.batch_alter_table('prompt_uses', schema=None) as batch_op:
        batch_op.create_index('ix_prompt_uses_account_day', ['account_id', 'day'], unique=False)
    op.create_table('prompt_days',
    sa.Column('value_hash', sa.String(length=32), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('accounts', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('value_hash', 'day')
    )


def downgrade() -> None:
    op.drop_table('prompt_days')
    op.drop_table('prompt_uses')
    with op.batch_alter_table('activity_days', schema=None) as batch_op:
        for name, _, _ in reversed(_DAY_COLUMNS):
            batch_op.drop_column(name)
    with op.batch_alter_table('activity_reports', schema=None) as batch_op:
        batch_op.drop_index('ix_activity_reports_account_time')
    op.drop_table('activity_reports')
