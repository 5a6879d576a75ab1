"""Conversation memory in PostgreSQL: sessions and messages (SQLAlchemy, schema by Alembic).

The prompt sees a sliding window of the latest messages, a summary of the session once it passes
30 messages (kept with the session), and older messages picked by relevance to the new question."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, DateTime, ForeignKey, Integer, String, Text, create_engine, delete, func, select, text, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from assets.sparse import analyze

WINDOW = 40
SUMMARY_AFTER = 30
KEEP_UNSUMMARIZED = 10
RELEVANT_OLDER = 3


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON().with_variant(JSONB(), "postgresql")}


def _now() -> datetime:
    return datetime.now(UTC)


class ChatSession(Base):
    __tablename__ = "kb_sessions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=lambda: str(uuid.uuid4()))
    user: Mapped[str] = mapped_column(String(200), index=True)
    title: Mapped[str] = mapped_column(String(200))
    model: Mapped[str] = mapped_column(String(200))
    summary: Mapped[str | None] = mapped_column(Text, nullable=True)
    summary_upto: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now, onupdate=_now)
    # Set when the user opened more sessions than allowed: read-only from then on.
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    messages: Mapped[list[Message]] = relationship(back_populates="session", order_by="Message.seq", cascade="all, delete-orphan")


class Message(Base):
    __tablename__ = "kb_messages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("kb_sessions.id", ondelete="CASCADE"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    sources: Mapped[dict[str, Any]] = mapped_column(default=dict)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    session: Mapped[ChatSession] = relationship(back_populates="messages")


def migrate(database_url: str) -> None:
    """Bring the schema to the newest Alembic revision."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    config.set_main_option("sqlalchemy.url", sqlalchemy_url(database_url))
    command.upgrade(config, "head")


def sqlalchemy_url(database_url: str) -> str:
    return database_url.replace("postgresql://", "postgresql+psycopg://", 1).replace("postgres://", "postgresql+psycopg://", 1)


@dataclass(frozen=True)
class Context:
    """What the prompt gets from the session."""

    summary: str | None
    messages: list[tuple[str, str]]  # (role, content), oldest first


class SessionStore:
    def __init__(self, database_url: str) -> None:
        self.engine: Engine = create_engine(sqlalchemy_url(database_url), pool_pre_ping=True)

    def create(self, user: str, title: str, model: str, max_open: int | None = None) -> str:
        """A new session; with `max_open`, the user's least recently active open sessions beyond it are
        closed (kept, readable and exportable, but no longer continued)."""
        with Session(self.engine) as db, db.begin():
            # One user's concurrent creations must not both see room for one more.
            db.execute(text("SELECT pg_advisory_xact_lock(hashtext(:user))"), {"user": f"kb-sessions:{user}"})
            chat = ChatSession(user=user, title=title[:200] or "New conversation", model=model)
            db.add(chat)
            db.flush()
            if max_open is not None:
                keep = select(ChatSession.id).where(ChatSession.user == user, ChatSession.closed_at.is_(None))
                keep = keep.order_by(ChatSession.updated_at.desc(), ChatSession.created_at.desc()).limit(max_open)
                db.execute(
                    update(ChatSession)
                    .where(ChatSession.user == user, ChatSession.closed_at.is_(None), ChatSession.id.not_in(keep))
                    .values(closed_at=_now(), updated_at=ChatSession.updated_at)
                )
            return chat.id

    def exists(self, session_id: str) -> bool:
        with Session(self.engine) as db:
            return db.get(ChatSession, session_id) is not None

    def owner(self, session_id: str) -> tuple[str, bool] | None:
        """(user, closed) of a session, or None when there is none."""
        with Session(self.engine) as db:
            chat = db.get(ChatSession, session_id)
            return None if chat is None else (chat.user, chat.closed_at is not None)

    def add(self, session_id: str, role: str, content: str, sources: list[dict[str, Any]] | None = None,
            prompt_tokens: int = 0, completion_tokens: int = 0) -> int:  # fmt: skip
        """Append a message; returns its sequence number. Each message commits on its own, so what a user
        sent is stored before any answer is attempted."""
        with Session(self.engine) as db, db.begin():
            chat = db.get(ChatSession, session_id, with_for_update=True)
            if chat is None:
                raise KeyError(session_id)
            seq = (db.scalar(select(func.max(Message.seq)).where(Message.session_id == session_id)) or 0) + 1
            db.add(Message(session_id=session_id, seq=seq, role=role, content=content, sources={"items": sources or []},
                           prompt_tokens=prompt_tokens, completion_tokens=completion_tokens))  # fmt: skip
            chat.updated_at = _now()
            return seq

    def get(self, session_id: str) -> dict[str, Any] | None:
        with Session(self.engine) as db:
            chat = db.get(ChatSession, session_id)
            return None if chat is None else _session_dict(chat, with_messages=True)

    def list(self, user: str | None = None, limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
        with Session(self.engine) as db:
            query = select(ChatSession).order_by(ChatSession.updated_at.desc()).limit(limit).offset(offset)
            if user:
                query = query.where(ChatSession.user == user)
            return [_session_dict(c, with_messages=False) for c in db.scalars(query)]

    def delete(self, session_id: str) -> bool:
        with Session(self.engine) as db, db.begin():
            return bool(db.execute(delete(ChatSession).where(ChatSession.id == session_id)).rowcount)  # type: ignore[attr-defined]

    def search(self, query: str, user: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        """Full-text search over message contents (PostgreSQL tsvector, 'simple' configuration: any language)."""
        sql = text(
            """SELECT m.session_id, m.seq, m.role, ts_headline('simple', m.content, q) AS snippet, ts_rank(m.search, q) AS rank
               FROM kb_messages m JOIN kb_sessions s ON s.id = m.session_id, websearch_to_tsquery('simple', :query) q
               WHERE m.search @@ q AND (CAST(:user AS text) IS NULL OR s."user" = CAST(:user AS text))
               ORDER BY rank DESC LIMIT :limit"""
        )
        with self.engine.connect() as conn:
            rows = conn.execute(sql, {"query": query, "user": user, "limit": limit}).mappings().all()
        return [dict(r) for r in rows]

    def context(self, session_id: str, question: str) -> Context:
        """The sliding window, the stored summary, and up to three older messages relevant to the question."""
        with Session(self.engine) as db:
            chat = db.get(ChatSession, session_id)
            if chat is None:
                raise KeyError(session_id)
            messages = [(m.role, m.content) for m in chat.messages]
            summary = chat.summary
        window = messages[-WINDOW:]
        older = messages[:-WINDOW] if len(messages) > WINDOW else []
        terms = set(analyze(question))
        if older and terms:
            scored = sorted(((len(terms & set(analyze(c))), i) for i, (_, c) in enumerate(older)), reverse=True)
            picked = sorted(i for score, i in scored[:RELEVANT_OLDER] if score > 0)
            window = [older[i] for i in picked] + window
        return Context(summary, window)

    def needs_summary(self, session_id: str) -> list[tuple[str, str]] | None:
        """Messages to fold into the summary, once a session passes 30 messages and the summary is behind."""
        with Session(self.engine) as db:
            chat = db.get(ChatSession, session_id)
            if chat is None:
                return None
            count = len(chat.messages)
            if count <= SUMMARY_AFTER or count - KEEP_UNSUMMARIZED - chat.summary_upto < KEEP_UNSUMMARIZED:
                return None
            return [(m.role, m.content) for m in chat.messages[chat.summary_upto : count - KEEP_UNSUMMARIZED]]

    def save_summary(self, session_id: str, summary: str, upto_added: int) -> None:
        with Session(self.engine) as db, db.begin():
            chat = db.get(ChatSession, session_id)
            if chat is not None:
                chat.summary = summary
                chat.summary_upto += upto_added

    def export(self, session_id: str, fmt: str) -> str | None:
        chat = self.get(session_id)
        if chat is None:
            return None
        if fmt == "json":
            return json.dumps(chat, ensure_ascii=False, indent=2, default=str)
        lines = [f"# {chat['title']}", "", f"- session: {chat['id']}", f"- user: {chat['user']}", f"- model: {chat['model']}", ""]
        for m in chat["messages"]:
            lines += [f"## {m['role']} ({m['created_at']})", "", m["content"], ""]
            for s in m["sources"]:
                lines.append(
                    f"- [{s.get('n')}] {s.get('collection')}/{s.get('path')}" + (f" § {s['section']}" if s.get("section") else "")
                )
            lines.append("")
        return "\n".join(lines)


def summary_prompt(previous: str | None, messages: Sequence[tuple[str, str]]) -> str:
    transcript = "\n".join(f"{role}: {content}" for role, content in messages)
    head = f"Summary so far:\n{previous}\n\n" if previous else ""
    return (f"{head}Conversation:\n{transcript}\n\nWrite an updated summary of this conversation between an engineer and the "
            "knowledge assistant in at most 150 words. Keep facts, names, numbers, decisions and open questions.")  # fmt: skip


def _session_dict(chat: ChatSession, with_messages: bool) -> dict[str, Any]:
    data: dict[str, Any] = {"id": chat.id, "user": chat.user, "title": chat.title, "model": chat.model, "summary": chat.summary,
                            "created_at": chat.created_at, "updated_at": chat.updated_at, "closed": chat.closed_at is not None,
                            "closed_at": chat.closed_at}  # fmt: skip
    if with_messages:
        data["messages"] = [
            {"seq": m.seq, "role": m.role, "content": m.content, "sources": (m.sources or {}).get("items", []),
             "prompt_tokens": m.prompt_tokens, "completion_tokens": m.completion_tokens, "created_at": m.created_at}
            for m in chat.messages
        ]  # fmt: skip
    return data
