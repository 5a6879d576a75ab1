"""API keys (stored hashed), closed sessions and per-user rate-limit counters.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.create_table(
        "kb_api_keys",
        sa.Column("id", sa.String(16), primary_key=True),
        sa.Column("hash", sa.String(64), nullable=False, unique=True),
        sa.Column("user", sa.String(200), nullable=False, index=True),
        sa.Column("role", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False, server_default="api_key"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("note", sa.String(200), nullable=True),
        # Sign-in sessions (kind 'session', from LDAP): the directory's groups, mapped to roles per request.
        sa.Column("groups", postgresql.JSONB, nullable=False, server_default="[]"),
    )
    op.add_column("kb_sessions", sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True))
    # Per-user request counts by minute (kb/access/ratelimit.py): shared by every API replica.
    op.create_table(
        "kb_rate_limits",
        sa.Column("key", sa.String(300), primary_key=True),
        sa.Column("window_start", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("count", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("kb_rate_limits")
    op.drop_column("kb_sessions", "closed_at")
    op.drop_table("kb_api_keys")
