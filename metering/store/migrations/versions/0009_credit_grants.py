"""Prepaid credit grants (amount, priority, expiry, reason), once per idempotency key.

Revision ID: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "credit_grants",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("customer", sa.String(128), nullable=False),
        sa.Column("amount", sa.String(64), nullable=False),
        sa.Column("priority", sa.Integer, nullable=False),
        sa.Column("expires_us", sa.BigInteger, nullable=True),
        sa.Column("reason", sa.String(256), nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=False),
        sa.Column("created_us", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("customer", "idempotency_key", name="uq_credit_grants_key"),
    )
    op.create_index("ix_credit_grants_customer", "credit_grants", ["customer"])


def downgrade() -> None:
    op.drop_index("ix_credit_grants_customer", "credit_grants")
    op.drop_table("credit_grants")
