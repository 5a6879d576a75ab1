"""Successful backups: when each finished, its archive and size (`kb_backup_last_success_timestamp` reads it).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    op.create_table(
        "kb_backups",
        sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
        # The archive's own time (in its name and manifest), and when writing it finished.
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now(), index=True),
        sa.Column("archive", sa.Text, nullable=False),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.Column("encrypted", sa.Boolean, nullable=False),
        sa.Column("seconds", sa.Float, nullable=False),
        # 'cli' (kb backup) or 'dagster' (the daily job)
        sa.Column("trigger", sa.String(32), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("kb_backups")
