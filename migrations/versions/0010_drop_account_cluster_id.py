"""drop accounts.cluster_id: written with each evaluation and by a rebuild, never read; cluster
membership (cluster_members) is where an account's cluster is

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('accounts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_accounts_cluster_id'))
        batch_op.drop_column('cluster_id')


def downgrade() -> None:
    with op.batch_alter_table('accounts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('cluster_id', sa.String(length=40), nullable=True))
        batch_op.create_index(batch_op.f('ix_accounts_cluster_id'), ['cluster_id'], unique=False)
    # As it was: each account's cluster, from its membership.
    op.execute("UPDATE accounts SET cluster_id = (SELECT cluster_id FROM cluster_members "
               "WHERE cluster_members.account_id = accounts.id)")
