"""evaluations: a partial index of usage re-evaluations by when they were made, which the
backtest windows them by (a usage re-evaluation keeps its signup's event time but reads the facts
of the report that made it; windowed by event time, a backtest ending before the report replayed
facts from after its end)

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op


revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_evaluations_usage_created', 'evaluations', ['created_at', 'id'], unique=False,
                    postgresql_where=sa.text("trigger = 'usage'"), sqlite_where=sa.text("trigger = 'usage'"))


def downgrade() -> None:
    op.drop_index('ix_evaluations_usage_created', table_name='evaluations')
