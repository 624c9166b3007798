"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-24
"""

from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    
    op.create_table('accounts',
    sa.Column('id', sa.String(length=128), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('first_seen_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_seen_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('decision', sa.String(length=16), nullable=False),
    sa.Column('score', sa.Integer(), nullable=False),
    sa.Column('reasons', sa.JSON(), nullable=False),
    sa.Column('required_verifications', sa.JSON(), nullable=False),
    sa.Column('last_evaluation_id', sa.String(length=40), nullable=True),
    sa.Column('subjects', sa.JSON(), nullable=False),
    sa.Column('cluster_id', sa.String(length=40), nullable=True),
    sa.Column('label', sa.String(length=16), nullable=True),
    sa.Column('state_version', sa.Integer(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('accounts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_accounts_cluster_id'), ['cluster_id'], unique=False)
        batch_op.create_index('ix_accounts_last_seen_at', ['last_seen_at'], unique=False)

    op.create_table('api_keys',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('prefix', sa.String(length=16), nullable=False),
    sa.Column('key_hash', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('note', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('key_hash')
    )
    op.create_table('evaluations',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('account_id', sa.String(length=128), nullable=False),
    sa.Column('subject', sa.String(length=32), nullable=False),
    sa.Column('trigger', sa.String(length=32), nullable=False),
    sa.Column('occurred_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('input', sa.JSON(), nullable=False),
    sa.Column('signals', sa.JSON(), nullable=False),
    sa.Column('reasons', sa.JSON(), nullable=False),
    sa.Column('decision', sa.String(length=16), nullable=False),
    sa.Column('score', sa.Integer(), nullable=False),
    sa.Column('required_verifications', sa.JSON(), nullable=False),
    sa.Column('rules_version', sa.String(length=80), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('evaluations', schema=None) as batch_op:
        batch_op.create_index('ix_evaluations_account_occurred', ['account_id', 'occurred_at'], unique=False)
        batch_op.create_index('ix_evaluations_occurred_at', ['occurred_at'], unique=False)

    op.create_table('sightings',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('value_hash', sa.String(length=32), nullable=False),
    sa.Column('account_id', sa.String(length=128), nullable=False),
    sa.Column('evaluation_id', sa.String(length=40), nullable=False),
    sa.Column('occurred_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('sightings', schema=None) as batch_op:
        batch_op.create_index('ix_sightings_account', ['account_id'], unique=False)
        batch_op.create_index('ix_sightings_key_time', ['kind', 'value_hash', 'occurred_at'], unique=False)




def downgrade() -> None:
    
    with op.batch_alter_table('sightings', schema=None) as batch_op:
        batch_op.drop_index('ix_sightings_key_time')
        batch_op.drop_index('ix_sightings_account')

    op.drop_table('sightings')
    with op.batch_alter_table('evaluations', schema=None) as batch_op:
        batch_op.drop_index('ix_evaluations_occurred_at')
        batch_op.drop_index('ix_evaluations_account_occurred')

    op.drop_table('evaluations')
    op.drop_table('api_keys')
    with op.batch_alter_table('accounts', schema=None) as batch_op:
        batch_op.drop_index('ix_accounts_last_seen_at')
        batch_op.drop_index(batch_op.f('ix_accounts_cluster_id'))

    op.drop_table('accounts')

