"""The ledger's first schema: usage events and customers' own caps.

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op

from metering.store.ledger import ExactDecimal

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "usage_events",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("ts_us", sa.BigInteger, nullable=False),
        sa.Column("customer", sa.String(128), nullable=False),
        sa.Column("key_id", sa.String(64)),
        sa.Column("metric", sa.String(128), nullable=False),
        sa.Column("quantity", ExactDecimal(), nullable=False),
        sa.Column("period", sa.String(40), nullable=False),
        sa.Column("model", sa.String(128)),
        sa.Column("upstream_model", sa.String(128)),
        sa.Column("provider", sa.String(128)),
        sa.Column("endpoint", sa.String(32)),
        sa.Column("stream", sa.Boolean, nullable=False),
        sa.Column("input_tokens", sa.BigInteger, nullable=False),
        sa.Column("cached_input_tokens", sa.BigInteger, nullable=False),
        sa.Column("output_tokens", sa.BigInteger, nullable=False),
        sa.Column("reasoning_tokens", sa.BigInteger, nullable=False),
        sa.Column("cost", ExactDecimal(), nullable=False),
        sa.Column("amount", ExactDecimal(), nullable=False),
        sa.Column("currency", sa.String(8), nullable=False),
        sa.Column("session", sa.String(256)),
        sa.Column("feature", sa.String(256)),
        sa.Column("meta", sa.JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("estimated", sa.Boolean, nullable=False),
        sa.Column("latency_ms", sa.Integer, nullable=False),
        sa.Column("pricing", sa.JSON, nullable=False),
        sa.Column("usage_source", sa.JSON, nullable=False),
        sa.Column("raw_usage", sa.JSON),
    )
    for column in ("ts_us", "customer", "period", "session"):
        op.create_index(f"ix_usage_events_{column}", "usage_events", [column])
    op.create_table(
        "customer_caps",
        sa.Column("customer", sa.String(128), primary_key=True),
        sa.Column("amount", ExactDecimal(), nullable=False),
        sa.Column("updated_us", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("customer_caps")
    op.drop_table("usage_events")
