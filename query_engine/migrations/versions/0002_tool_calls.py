"""Every tool call the agent makes: who, which connector and tool, arguments (masked), outcome, time.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.create_table(
        "kb_tool_calls",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now(), index=True),
        sa.Column("user_name", sa.String(200), nullable=False, index=True),
        sa.Column("connector", sa.String(100), nullable=False),
        sa.Column("tool", sa.String(200), nullable=False),
        sa.Column("arguments", postgresql.JSONB, nullable=False),
        sa.Column("outcome", sa.String(20), nullable=False),
        sa.Column("ms", sa.Float, nullable=False),
        sa.Column("cached", sa.Boolean, nullable=False),
        sa.Column("output_chars", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("kb_tool_calls")
