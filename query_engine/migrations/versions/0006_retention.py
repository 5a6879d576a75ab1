"""Retention: sessions a user deleted (hidden at once, purged after the grace), how a summary was written, and the
archive of sessions idle past the limit (moved out of kb_sessions and kb_messages, out of every listing and search).

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    op.add_column("kb_sessions", sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True))
    # 'llm' or 'extractive' (the retention job's fallback while the LLM is unreachable, redone once it answers).
    op.add_column("kb_sessions", sa.Column("summary_method", sa.String(16), nullable=True))
    op.add_column("kb_sessions", sa.Column("summarized_at", sa.DateTime(timezone=True), nullable=True))
    # The retention job scans by idle time and by deletion time; user listings stay on the user index.
    op.create_index("kb_sessions_updated_at", "kb_sessions", ["updated_at"])
    op.create_index("kb_sessions_deleted_at", "kb_sessions", ["deleted_at"], postgresql_where=sa.text("deleted_at IS NOT NULL"))
    op.create_table(
        "kb_session_archive",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("user", sa.String(200), nullable=False, index=True),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("archived_at", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("run_id", sa.String(64), nullable=True, index=True),
        sa.Column("message_count", sa.Integer, nullable=False),
        # The whole session as GET /v1/sessions/{id} showed it, messages and sources included (TOAST compresses it).
        sa.Column("session", postgresql.JSONB, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("kb_session_archive")
    op.drop_index("kb_sessions_deleted_at", table_name="kb_sessions")
    op.drop_index("kb_sessions_updated_at", table_name="kb_sessions")
    op.drop_column("kb_sessions", "summarized_at")
    op.drop_column("kb_sessions", "summary_method")
    op.drop_column("kb_sessions", "deleted_at")
