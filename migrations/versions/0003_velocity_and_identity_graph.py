"""velocity marks, identity graph (nodes, edges, clusters, members), account labels

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('velocity_marks',
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('value_hash', sa.String(length=32), nullable=False),
    sa.Column('account_id', sa.String(length=128), nullable=False),
    sa.Column('last_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('kind', 'value_hash', 'account_id')
    )
    op.create_index('ix_velocity_marks_key_time', 'velocity_marks', ['kind', 'value_hash', 'last_at'], unique=False)

    op.create_table('graph_nodes',
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('value_hash', sa.String(length=32), nullable=False),
    sa.Column('accounts', sa.Integer(), nullable=False),
    sa.Column('super_node', sa.Boolean(), nullable=False),
    sa.Column('first_seen_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('kind', 'value_hash')
    )
    op.create_table('graph_edges',
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('value_hash', sa.String(length=32), nullable=False),
    sa.Column('account_id', sa.String(length=128), nullable=False),
    sa.PrimaryKeyConstraint('kind', 'value_hash', 'account_id')
    )
    op.create_index('ix_graph_edges_account', 'graph_edges', ['account_id'], unique=False)

    op.create_table('clusters',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('first_seen_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('blocked', sa.Integer(), nullable=False),
    sa.Column('labeled_fraud', sa.Integer(), nullable=False),
    sa.Column('disposable', sa.Integer(), nullable=False),
    sa.Column('voip', sa.Integer(), nullable=False),
    sa.Column('hosting', sa.Integer(), nullable=False),
    sa.Column('headless', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_clusters_size', 'clusters', ['size'], unique=False)

    op.create_table('cluster_members',
    sa.Column('account_id', sa.String(length=128), nullable=False),
    sa.Column('cluster_id', sa.String(length=40), nullable=False),
    sa.Column('joined_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('blocked', sa.Boolean(), nullable=False),
    sa.Column('labeled_fraud', sa.Boolean(), nullable=False),
    sa.Column('disposable', sa.Boolean(), nullable=False),
    sa.Column('voip', sa.Boolean(), nullable=False),
    sa.Column('hosting', sa.Boolean(), nullable=False),
    sa.Column('headless', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], ),
    sa.PrimaryKeyConstraint('account_id')
    )
    op.create_index('ix_cluster_members_cluster_joined', 'cluster_members', ['cluster_id', 'joined_at'], unique=False)

    op.create_table('account_labels',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('account_id', sa.String(length=128), nullable=False),
    sa.Column('label', sa.String(length=16), nullable=False),
    sa.Column('note', sa.Text(), nullable=True),
    sa.Column('source', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_account_labels_account_id'), 'account_labels', ['account_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_account_labels_account_id'), table_name='account_labels')
    op.drop_table('account_labels')
    op.drop_index('ix_cluster_members_cluster_joined', table_name='cluster_members')
    op.drop_table('cluster_members')
    op.drop_index('ix_clusters_size', table_name='clusters')
    op.drop_table('clusters')
    op.drop_index('ix_graph_edges_account', table_name='graph_edges')
    op.drop_table('graph_edges')
    op.drop_table('graph_nodes')
    op.drop_index('ix_velocity_marks_key_time', table_name='velocity_marks')
    op.drop_table('velocity_marks')
