"""Clients that keep their own chats (Open WebUI, LibreChat): one of their chats is one session, and gateway keys.

- kb_sessions.client_chat_id: the chat id a client forwards (X-OpenWebUI-Chat-Id), unique per user.
- kb_messages.chain: a hash of the conversation up to and including the message, as a client would send it back;
  a client that sends only the history (no chat id) finds its session by it, and a regenerated answer is told
  from a new question.
- kb_api_keys.gateway: the key of a trusted gateway, whose forwarded user headers set the acting user.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"


def upgrade() -> None:
    op.add_column("kb_sessions", sa.Column("client_chat_id", sa.String(200), nullable=True))
    op.create_index("kb_sessions_client_chat", "kb_sessions", ["user", "client_chat_id"], unique=True,
                    postgresql_where=sa.text("client_chat_id IS NOT NULL"))  # fmt: skip
    op.add_column("kb_messages", sa.Column("chain", sa.String(64), nullable=True))
    op.create_index("kb_messages_chain", "kb_messages", ["chain"], postgresql_where=sa.text("chain IS NOT NULL"))
    op.add_column("kb_api_keys", sa.Column("gateway", sa.Boolean, nullable=False, server_default=sa.false()))


def downgrade() -> None:
    op.drop_column("kb_api_keys", "gateway")
    op.drop_index("kb_messages_chain", table_name="kb_messages")
    op.drop_column("kb_messages", "chain")
    op.drop_index("kb_sessions_client_chat", table_name="kb_sessions")
    op.drop_column("kb_sessions", "client_chat_id")
