"""Reconciliation runs against the provider's usage report, and statements settled to Stripe.

Revision ID: 0008
"""

import sqlalchemy as sa
from alembic import op

from metering.store.ledger import ExactDecimal

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reconciliations",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("provider", sa.String(128), nullable=False, index=True),
        sa.Column("created_us", sa.BigInteger, nullable=False, index=True),
        sa.Column("start_day", sa.String(10), nullable=False),
        sa.Column("end_day", sa.String(10), nullable=False),
        sa.Column("body", sa.JSON, nullable=False),
    )
    op.create_table(
        "settlements",
        sa.Column("customer", sa.String(128), primary_key=True),
        sa.Column("period", sa.String(40), primary_key=True),
        sa.Column("target", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("external_customer", sa.String(255)),
        sa.Column("invoice_id", sa.String(255)),
        sa.Column("total", ExactDecimal(), nullable=False),
        sa.Column("currency", sa.String(8), nullable=False),
        sa.Column("created_us", sa.BigInteger, nullable=False),
        sa.Column("updated_us", sa.BigInteger, nullable=False),
        sa.Column("detail", sa.JSON, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("settlements")
    op.drop_table("reconciliations")
