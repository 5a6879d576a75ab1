"""The audit log: append-only rows chained by an HMAC, its head (the newest row) and its purge anchor.

Revision ID: 0004
Revises: 0003

Nothing is revoked here: the embedded server has a single superuser. In production the API's database role
should get INSERT and SELECT only on kb_audit (and SELECT, INSERT, UPDATE on kb_audit_head), and the retention
job a separate role with DELETE, so that a compromised API cannot rewrite the log (the chain still detects it).
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    op.create_table(
        "kb_audit",
        # BY DEFAULT, not ALWAYS: the writer draws the number with nextval() first, because the mac covers it.
        sa.Column("seq", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("actor", sa.String(200), nullable=False, index=True),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.Text, nullable=True),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("detail", postgresql.JSONB, nullable=False, server_default="{}"),
        sa.Column("prev", sa.String(64), nullable=False),
        sa.Column("mac", sa.String(64), nullable=False),
    )
    # One row (id 1): the newest row's seq and mac, and the last purged row's (the anchor), under their own mac.
    # A chain alone cannot show that its newest rows were cut off; this row, written in the same transaction as
    # every append, can.
    op.create_table(
        "kb_audit_head",
        sa.Column("id", sa.SmallInteger, primary_key=True),
        sa.Column("last_seq", sa.BigInteger, nullable=False),
        sa.Column("last_mac", sa.String(64), nullable=False),
        sa.Column("anchor_seq", sa.BigInteger, nullable=False),
        sa.Column("anchor_mac", sa.String(64), nullable=False),
        sa.Column("mac", sa.String(64), nullable=False),
        sa.CheckConstraint("id = 1", name="kb_audit_head_single_row"),
    )


def downgrade() -> None:
    op.drop_table("kb_audit_head")
    op.drop_table("kb_audit")
