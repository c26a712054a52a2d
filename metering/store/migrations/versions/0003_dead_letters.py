"""Events the ledger refused, kept aside with the reason (see Ledger.write).

Revision ID: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("customer", sa.String(128), nullable=False),
        sa.Column("ts_us", sa.BigInteger, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("billed", sa.Boolean, nullable=False),
        sa.Column("event", sa.Text, nullable=False),
    )
    op.create_index("ix_dead_letters_customer", "dead_letters", ["customer"])


def downgrade() -> None:
    op.drop_index("ix_dead_letters_customer", "dead_letters")
    op.drop_table("dead_letters")
