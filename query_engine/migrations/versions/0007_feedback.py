"""Feedback on answers: a thumbs up or down and an optional comment per user and assistant message.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"


def upgrade() -> None:
    op.create_table(
        "kb_feedback",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        # Goes with its message: deleting or erasing a session takes its feedback along.
        sa.Column("message_id", sa.Integer, sa.ForeignKey("kb_messages.id", ondelete="CASCADE"), nullable=False, index=True),
        sa.Column("user", sa.String(200), nullable=False, index=True),
        sa.Column("rating", sa.SmallInteger, nullable=False),  # +1 up, -1 down
        sa.Column("comment", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("rating IN (-1, 1)", name="kb_feedback_rating"),
        # One opinion per user and answer: a second vote replaces the first.
        sa.UniqueConstraint("message_id", "user", name="kb_feedback_message_user"),
    )
    op.create_index("kb_feedback_created_at", "kb_feedback", ["created_at"])


def downgrade() -> None:
    op.drop_index("kb_feedback_created_at", table_name="kb_feedback")
    op.drop_table("kb_feedback")
