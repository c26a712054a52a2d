"""Provider objects customers created through Payware (Responses, Conversations) and their owners.

Revision ID: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "owned_objects",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("customer", sa.String(128), nullable=False),
        sa.Column("provider", sa.String(128), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("context_tokens", sa.BigInteger, nullable=False),
        sa.Column("created_us", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_owned_objects_customer", "owned_objects", ["customer"])


def downgrade() -> None:
    op.drop_index("ix_owned_objects_customer", "owned_objects")
    op.drop_table("owned_objects")
