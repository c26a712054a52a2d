"""Frozen statements of closed periods.

Revision ID: 0002
"""

import sqlalchemy as sa
from alembic import op

from metering.store.ledger import ExactDecimal

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "statements",
        sa.Column("customer", sa.String(128), primary_key=True),
        sa.Column("period", sa.String(40), primary_key=True),
        sa.Column("closed_us", sa.BigInteger, nullable=False),
        sa.Column("total", ExactDecimal(), nullable=False),
        sa.Column("body", sa.JSON, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("statements")
