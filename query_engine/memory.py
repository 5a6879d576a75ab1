"""Conversation memory in PostgreSQL: sessions and messages (SQLAlchemy, schema by Alembic).

The prompt sees a sliding window of the latest messages, a summary of the session once it passes
30 messages (kept with the session), and older messages picked by relevance to the new question.

Retention (the operators' guide; pipelines/retention.py runs it daily): a session a user deletes is hidden at once
and purged after a grace; sessions idle 30 to 90 days get a summary of the whole conversation (their messages stay);
sessions idle longer move to `kb_session_archive`, out of every listing and search; a user's erasure removes all of
their sessions, archived ones included, at once."""

from __future__ import annotations

import builtins
import hashlib
import json
import math
import re
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import JSON, DateTime, ForeignKey, Integer, String, Text, create_engine, delete, func, select, text, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, selectinload

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
    # Set when the user deleted it: gone from every read at once, its rows purged after the grace.
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    summary_method: Mapped[str | None] = mapped_column(String(16), nullable=True)  # 'llm' or 'extractive'
    summarized_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)  # by retention
    # The chat id a client that keeps its own chats forwarded (Open WebUI's X-OpenWebUI-Chat-Id); unique per user.
    client_chat_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
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
    # chain_hash of the conversation up to and including this message: how a client's history finds its session.
    chain: Mapped[str | None] = mapped_column(String(64), nullable=True)
    session: Mapped[ChatSession] = relationship(back_populates="messages")


class ArchivedSession(Base):
    """A session idle past the archive limit, moved out of kb_sessions and kb_messages whole."""

    __tablename__ = "kb_session_archive"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    user: Mapped[str] = mapped_column(String(200), index=True)
    title: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    archived_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    run_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    message_count: Mapped[int] = mapped_column(Integer)
    session: Mapped[dict[str, Any]] = mapped_column()


class RetentionError(RuntimeError):
    """A retention step found its own work inconsistent and rolled it back."""


Stage = Literal["keep", "summarize", "archive", "grace", "purge"]


@dataclass(frozen=True)
class RetentionPolicy:
    """How long sessions and audit rows are kept (the operators' guide's defaults)."""

    summarize_after: timedelta = timedelta(days=30)
    archive_after: timedelta = timedelta(days=90)
    deletion_grace: timedelta = timedelta(days=30)
    audit_for: timedelta = timedelta(days=365)

    def __post_init__(self) -> None:
        for name in ("summarize_after", "archive_after", "deletion_grace", "audit_for"):
            if getattr(self, name) <= timedelta(0):
                raise ValueError(f"the retention's {name} must be positive")
        if self.summarize_after >= self.archive_after:
            raise ValueError("sessions must be summarized before they are archived (summarize_after < archive_after)")

    def stage(self, updated_at: datetime, deleted_at: datetime | None, now: datetime) -> Stage:
        """What the policy does with a session at `now`: the one definition the SQL below and the checks follow."""
        if deleted_at is not None:
            return "purge" if now - deleted_at > self.deletion_grace else "grace"
        idle = now - updated_at
        if idle > self.archive_after:
            return "archive"
        return "summarize" if idle >= self.summarize_after else "keep"

    def summarize_before(self, now: datetime) -> datetime:
        """Sessions last active at or before this are summarized (down to archive_before)."""
        return now - self.summarize_after

    def archive_before(self, now: datetime) -> datetime:
        """Sessions last active before this are archived."""
        return now - self.archive_after

    def purge_before(self, now: datetime) -> datetime:
        """Sessions deleted before this are past the grace."""
        return now - self.deletion_grace


@dataclass(frozen=True)
class PendingSummary:
    """A session whose summary does not cover all its messages: fold `messages` into `previous`."""

    session_id: str
    updated_at: datetime
    previous: str | None
    messages: list[tuple[str, str]]
    total: int  # messages in the session; the new summary covers them all


@dataclass(frozen=True)
class MovedSessions:
    """What one retention step removed from kb_sessions: ids, message rows, and the newest time the policy judged."""

    sessions: int = 0
    messages: int = 0
    ids: list[str] = field(default_factory=list)
    newest: datetime | None = None  # archive: the newest updated_at moved; purge: the newest deleted_at purged

    def plus(self, other: MovedSessions) -> MovedSessions:
        newest = max((t for t in (self.newest, other.newest) if t is not None), default=None)
        return MovedSessions(self.sessions + other.sessions, self.messages + other.messages, self.ids + other.ids, newest)


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

    def create(self, user: str, title: str, model: str, max_open: int | None = None, client_chat_id: str | None = None) -> str:
        """A new session; with `max_open`, the user's least recently active open sessions beyond it are
        closed (kept, readable and exportable, but no longer continued)."""
        with Session(self.engine) as db, db.begin():
            # One user's concurrent creations must not both see room for one more.
            db.execute(text("SELECT pg_advisory_xact_lock(hashtext(:user))"), {"user": f"kb-sessions:{user}"})
            if client_chat_id:  # the chat's earlier session was closed or deleted here: the chat goes on in this one
                db.execute(
                    update(ChatSession)
                    .where(
                        ChatSession.user == user,
                        ChatSession.client_chat_id == client_chat_id,
                        (ChatSession.closed_at.is_not(None)) | (ChatSession.deleted_at.is_not(None)),
                    )  # fmt: skip
                    .values(client_chat_id=None, updated_at=ChatSession.updated_at)
                )
            chat = ChatSession(user=user, title=title[:200] or "New conversation", model=model, client_chat_id=client_chat_id)
            db.add(chat)
            db.flush()
            if max_open is not None:
                open_ = (ChatSession.user == user, ChatSession.closed_at.is_(None), ChatSession.deleted_at.is_(None))
                keep = select(ChatSession.id).where(*open_)
                keep = keep.order_by(ChatSession.updated_at.desc(), ChatSession.created_at.desc()).limit(max_open)
                db.execute(
                    update(ChatSession)
                    .where(*open_, ChatSession.id.not_in(keep))
                    .values(closed_at=_now(), updated_at=ChatSession.updated_at)
                )
            return chat.id

    def exists(self, session_id: str) -> bool:
        with Session(self.engine) as db:
            return _live(db, session_id) is not None

    def owner(self, session_id: str) -> tuple[str, bool] | None:
        """(user, closed) of a session, or None when there is none (or it was deleted)."""
        with Session(self.engine) as db:
            chat = _live(db, session_id)
            return None if chat is None else (chat.user, chat.closed_at is not None)

    def add(self, session_id: str, role: str, content: str, sources: list[dict[str, Any]] | None = None,
            prompt_tokens: int = 0, completion_tokens: int = 0) -> int:  # fmt: skip
        """Append a message; returns its sequence number. Each message commits on its own, so what a user
        sent is stored before any answer is attempted."""
        with Session(self.engine) as db, db.begin():
            chat = _live(db, session_id, lock=True)
            if chat is None:
                raise KeyError(session_id)
            last = db.execute(
                select(Message.seq, Message.chain).where(Message.session_id == session_id).order_by(Message.seq.desc()).limit(1)
            ).first()
            seq = (last.seq if last else 0) + 1
            previous = last.chain if last else None
            if last and previous is None:  # a session from before chains: hash what it holds so far
                previous = conversation_chain([(m.role, m.content) for m in chat.messages])
            db.add(Message(session_id=session_id, seq=seq, role=role, content=content, sources={"items": sources or []},
                           prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                           chain=chain_hash(previous, role, content)))  # fmt: skip
            chat.updated_at = _now()
            return seq

    def client_chat(self, user: str, client_chat_id: str) -> str | None:
        """The user's live, open session for a client's chat id, if one was opened."""
        query = select(ChatSession.id).where(ChatSession.user == user, ChatSession.client_chat_id == client_chat_id,
                                             ChatSession.deleted_at.is_(None), ChatSession.closed_at.is_(None))  # fmt: skip
        with Session(self.engine) as db:
            return db.scalar(query)

    def find_chain(self, user: str, chain: str, session_id: str | None = None) -> tuple[str, int] | None:
        """(session, seq) of the user's most recent live, open message whose conversation hashes to `chain`: where a
        client's history left off. With `session_id`, only within that session."""
        query = (
            select(Message.session_id, Message.seq)
            .join(ChatSession, ChatSession.id == Message.session_id)
            .where(
                Message.chain == chain,
                ChatSession.user == user,
                ChatSession.deleted_at.is_(None),
                ChatSession.closed_at.is_(None),
            )  # fmt: skip
            .order_by(ChatSession.updated_at.desc(), Message.seq.desc())
            .limit(1)
        )
        if session_id is not None:
            query = query.where(Message.session_id == session_id)
        with Session(self.engine) as db:
            row = db.execute(query).first()
        return None if row is None else (row.session_id, row.seq)

    def tail(self, session_id: str, after_seq: int) -> builtins.list[tuple[int, str, str]]:
        """(seq, role, content) of the session's messages after `after_seq`, in order."""
        query = select(Message.seq, Message.role, Message.content).where(
            Message.session_id == session_id, Message.seq > after_seq
        )
        with Session(self.engine) as db:
            return [(r.seq, r.role, r.content) for r in db.execute(query.order_by(Message.seq))]

    def truncate(self, session_id: str, after_seq: int) -> int:
        """Drop the messages after `after_seq` (a regenerated answer replaces the one it regenerates; their feedback
        goes with them); how many went."""
        with Session(self.engine) as db, db.begin():
            if _live(db, session_id, lock=True) is None:
                raise KeyError(session_id)
            done = db.execute(delete(Message).where(Message.session_id == session_id, Message.seq > after_seq))
            return _rowcount(done)

    def get(self, session_id: str) -> dict[str, Any] | None:
        with Session(self.engine) as db:
            chat = _live(db, session_id)
            return None if chat is None else _session_dict(chat, with_messages=True)

    def list(self, user: str | None = None, limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
        with Session(self.engine) as db:
            query = select(ChatSession).where(ChatSession.deleted_at.is_(None))
            query = query.order_by(ChatSession.updated_at.desc()).limit(limit).offset(offset)
            if user:
                query = query.where(ChatSession.user == user)
            return [_session_dict(c, with_messages=False) for c in db.scalars(query)]

    def delete(self, session_id: str) -> bool:
        """The user's delete: the session leaves every read at once; the retention job purges its rows after the
        grace (so an operator can still restore a mistaken delete). False when there is no such live session."""
        with Session(self.engine) as db, db.begin():
            done = db.execute(
                update(ChatSession)
                .where(ChatSession.id == session_id, ChatSession.deleted_at.is_(None))
                .values(deleted_at=_now(), updated_at=ChatSession.updated_at)
            )
            return bool(done.rowcount)  # type: ignore[attr-defined]

    def rename(self, session_id: str, title: str) -> dict[str, Any] | None:
        """Give a live session a new title (cut to the column's 200 characters); the session without its messages,
        or None when there is no such live session. The idle clock (updated_at) does not move: a new name is not
        activity, so neither the listing's order nor retention changes."""
        with Session(self.engine) as db, db.begin():
            chat = _live(db, session_id, lock=True)
            if chat is None:
                return None
            db.execute(
                update(ChatSession)
                .where(ChatSession.id == session_id)
                .values(title=title[:200], updated_at=ChatSession.updated_at)
            )
            db.refresh(chat)
            return _session_dict(chat, with_messages=False)

    def titles(self, session_ids: Sequence[str]) -> dict[str, str]:
        """id → title of the live sessions among `session_ids` (what a search hit shows next to its snippet)."""
        if not session_ids:
            return {}
        query = select(ChatSession.id, ChatSession.title).where(
            ChatSession.id.in_(set(session_ids)), ChatSession.deleted_at.is_(None)
        )
        with Session(self.engine) as db:
            return {row.id: row.title for row in db.execute(query)}

    def restore(self, session_id: str) -> bool:
        """Undo a delete still in its grace (an operator's tool); False when there is nothing to restore."""
        with Session(self.engine) as db, db.begin():
            done = db.execute(
                update(ChatSession)
                .where(ChatSession.id == session_id, ChatSession.deleted_at.is_not(None))
                .values(deleted_at=None, updated_at=ChatSession.updated_at)
            )
            return bool(done.rowcount)  # type: ignore[attr-defined]

    def search(self, query: str, user: str | None = None, limit: int = 20) -> builtins.list[dict[str, Any]]:
        """Full-text search over message contents (PostgreSQL tsvector, 'simple' configuration: any language)."""
        sql = text(
            """SELECT m.session_id, m.seq, m.role, ts_headline('simple', m.content, q) AS snippet, ts_rank(m.search, q) AS rank
               FROM kb_messages m JOIN kb_sessions s ON s.id = m.session_id, websearch_to_tsquery('simple', :query) q
               WHERE m.search @@ q AND s.deleted_at IS NULL AND (CAST(:user AS text) IS NULL OR s."user" = CAST(:user AS text))
               ORDER BY rank DESC LIMIT :limit"""
        )
        with self.engine.connect() as conn:
            rows = conn.execute(sql, {"query": query, "user": user, "limit": limit}).mappings().all()
        return [dict(r) for r in rows]

    def context(self, session_id: str, question: str) -> Context:
        """The sliding window, the stored summary, and up to three older messages relevant to the question."""
        with Session(self.engine) as db:
            chat = _live(db, session_id)
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

    def needs_summary(self, session_id: str) -> builtins.list[tuple[str, str]] | None:
        """Messages to fold into the summary, once a session passes 30 messages and the summary is behind."""
        with Session(self.engine) as db:
            chat = _live(db, session_id)
            if chat is None:
                return None
            count = len(chat.messages)
            if count <= SUMMARY_AFTER or count - KEEP_UNSUMMARIZED - chat.summary_upto < KEEP_UNSUMMARIZED:
                return None
            return [(m.role, m.content) for m in chat.messages[chat.summary_upto : count - KEEP_UNSUMMARIZED]]

    def save_summary(self, session_id: str, summary: str, upto_added: int) -> None:
        with Session(self.engine) as db, db.begin():
            chat = _live(db, session_id)
            if chat is not None:
                chat.summary = summary
                chat.summary_upto += upto_added
                chat.summary_method = "llm"

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

    # Retention (pipelines/retention.py): each step judges sessions by `now`, the job's clock, never the wall clock.

    def pending_summaries(self, policy: RetentionPolicy, now: datetime, *, redo_extractive: bool,
                          limit: int) -> builtins.list[PendingSummary]:  # fmt: skip
        """Sessions idle between the summary and archive limits whose summary misses messages (or, with
        `redo_extractive`, was only extractive), least recently active first."""
        counts = select(Message.session_id, func.count().label("n")).group_by(Message.session_id).subquery()
        stale = ChatSession.summary_upto < counts.c.n
        if redo_extractive:
            stale = stale | (ChatSession.summary_method == "extractive")
        query = (
            select(ChatSession)
            .join(counts, counts.c.session_id == ChatSession.id)
            .where(ChatSession.deleted_at.is_(None), ChatSession.updated_at <= policy.summarize_before(now),
                   ChatSession.updated_at >= policy.archive_before(now), stale)
            .order_by(ChatSession.updated_at)
            .limit(limit)
            .options(selectinload(ChatSession.messages))
        )  # fmt: skip
        with Session(self.engine) as db:
            return [_pending(chat, redo_extractive) for chat in db.scalars(query)]

    def save_retention_summary(self, pending: PendingSummary, summary: str, method: str, now: datetime) -> bool:
        """Store a summary covering every message, unless the session changed meanwhile (then False: a newer turn
        is the chat's to summarize). The idle clock (updated_at) does not move."""
        with Session(self.engine) as db, db.begin():
            done = db.execute(
                update(ChatSession)
                .where(ChatSession.id == pending.session_id, ChatSession.updated_at == pending.updated_at,
                       ChatSession.deleted_at.is_(None))
                .values(summary=summary, summary_upto=pending.total, summary_method=method, summarized_at=now,
                        updated_at=ChatSession.updated_at)
            )  # fmt: skip
            return bool(done.rowcount)  # type: ignore[attr-defined]

    def archive_idle(self, policy: RetentionPolicy, now: datetime, run_id: str | None, batch: int = 200) -> MovedSessions:
        """Move every live session idle past the archive limit into kb_session_archive, `batch` sessions per
        transaction: the archive row and the deletion commit together, so a session is never in both or neither."""
        moved = MovedSessions()
        while True:
            step = self._archive_batch(policy.archive_before(now), now, run_id, batch)
            moved = moved.plus(step)
            if step.sessions < batch:
                return moved

    def _archive_batch(self, before: datetime, now: datetime, run_id: str | None, batch: int) -> MovedSessions:
        with Session(self.engine) as db, db.begin():
            # SKIP LOCKED: a session a chat is writing to right now is not idle; the next run sees it again.
            chats = db.scalars(
                select(ChatSession)
                .where(ChatSession.deleted_at.is_(None), ChatSession.updated_at < before)
                .order_by(ChatSession.updated_at)
                .limit(batch)
                .with_for_update(skip_locked=True)
                .options(selectinload(ChatSession.messages))
            ).all()
            if not chats:
                return MovedSessions()
            ids = [c.id for c in chats]
            expected = sum(len(c.messages) for c in chats)
            db.add_all(
                ArchivedSession(id=c.id, user=c.user, title=c.title, created_at=c.created_at, updated_at=c.updated_at,
                                archived_at=now, run_id=run_id, message_count=len(c.messages), session=_archived_dict(c))
                for c in chats
            )  # fmt: skip
            db.flush()
            messages = _rowcount(db.execute(delete(Message).where(Message.session_id.in_(ids)), execution_options=_UNSYNCED))
            sessions = _rowcount(db.execute(delete(ChatSession).where(ChatSession.id.in_(ids)), execution_options=_UNSYNCED))
            if (sessions, messages) != (len(ids), expected):
                raise RetentionError(f"archiving {len(ids)} sessions with {expected} messages deleted {sessions} sessions "
                                     f"and {messages} messages: rolled back")  # fmt: skip
            return MovedSessions(sessions, messages, ids, max(c.updated_at for c in chats))

    def purge_deleted(self, policy: RetentionPolicy, now: datetime) -> MovedSessions:
        """Delete for good the sessions deleted longer ago than the grace (their messages cascade)."""
        gone = ChatSession.deleted_at.is_not(None) & (ChatSession.deleted_at < policy.purge_before(now))
        with Session(self.engine) as db, db.begin():
            messages = db.scalar(select(func.count()).select_from(Message).join(ChatSession).where(gone)) or 0
            rows = db.execute(
                delete(ChatSession).where(gone).returning(ChatSession.id, ChatSession.deleted_at), execution_options=_UNSYNCED
            ).all()
        return MovedSessions(len(rows), messages, [r[0] for r in rows], max((r[1] for r in rows if r[1]), default=None))

    def erase_user(self, user: str) -> dict[str, int]:
        """The right to erasure: every session of `user` (open, closed, deleted in grace, archived), its messages,
        the user's feedback and rows of the tool-call log, in one transaction. The audit log keeps its rows (legal hold)."""
        with Session(self.engine) as db, db.begin():
            # create()'s lock: no session of this user is created halfway through.
            db.execute(text("SELECT pg_advisory_xact_lock(hashtext(:user))"), {"user": f"kb-sessions:{user}"})
            owned = ChatSession.user == user
            # The user's votes on other people's answers too (those on their own sessions go with the messages).
            feedback = _rowcount(db.execute(text('DELETE FROM kb_feedback WHERE "user" = :user'), {"user": user}))
            messages = db.scalar(select(func.count()).select_from(Message).join(ChatSession).where(owned)) or 0
            sessions = _rowcount(db.execute(delete(ChatSession).where(owned), execution_options=_UNSYNCED))
            archived = _rowcount(
                db.execute(delete(ArchivedSession).where(ArchivedSession.user == user), execution_options=_UNSYNCED)
            )
            tool_calls = _rowcount(db.execute(text("DELETE FROM kb_tool_calls WHERE user_name = :user"), {"user": user}))
        return {"sessions": sessions, "messages": messages, "archived_sessions": archived, "tool_calls": tool_calls,
                "feedback": feedback}  # fmt: skip

    def archived(self, user: str | None = None, run_id: str | None = None) -> builtins.list[dict[str, Any]]:
        """Archived sessions (as GET showed them, plus archived_at and run_id), oldest activity first."""
        query = select(ArchivedSession).order_by(ArchivedSession.updated_at)
        if user is not None:
            query = query.where(ArchivedSession.user == user)
        if run_id is not None:
            query = query.where(ArchivedSession.run_id == run_id)
        with Session(self.engine) as db:
            return [{**a.session, "archived_at": a.archived_at, "run_id": a.run_id, "message_count": a.message_count}
                    for a in db.scalars(query)]  # fmt: skip

    def stored(self, session_id: str) -> bool:
        """Whether kb_sessions still holds the row, deleted or not (the archive's check: moved, not copied)."""
        with Session(self.engine) as db:
            return db.get(ChatSession, session_id) is not None

    def purge_tool_calls(self, before: datetime) -> int:
        """Drop kb_tool_calls rows older than `before`: the connectors' own record of calls the audit log also holds,
        kept as long as the audit log keeps its copy."""
        with self.engine.begin() as conn:
            return _rowcount(conn.execute(text("DELETE FROM kb_tool_calls WHERE at < :before"), {"before": before}))

    def stages(self, policy: RetentionPolicy, now: datetime) -> Counter[Stage]:
        """How many sessions each policy stage holds at `now` (what the job's checks expect to be left)."""
        query = select(ChatSession.updated_at, ChatSession.deleted_at)
        with Session(self.engine) as db:
            return Counter(policy.stage(updated, deleted, now) for updated, deleted in db.execute(query))


_UNSYNCED = {"synchronize_session": False}


def normalized(content: str) -> str:
    """Message text as compared across a client's round trip: whitespace runs are one space, ends trimmed."""
    return " ".join(content.split())


def chain_hash(previous: str | None, role: str, content: str) -> str:
    """The hash of a conversation extended by one message; role and normalized text, chained from the previous."""
    return hashlib.sha256(f"{previous or ''}\x1f{role}\x1f{normalized(content)}".encode()).hexdigest()


def conversation_chain(messages: Sequence[tuple[str, str]]) -> str | None:
    """chain_hash over (role, content) messages, oldest first; None for no messages."""
    chain: str | None = None
    for role, content in messages:
        chain = chain_hash(chain, role, content)
    return chain


def _live(db: Session, session_id: str, *, lock: bool = False) -> ChatSession | None:
    """The session unless it is missing or deleted: every read and write of the API goes through here."""
    chat = db.get(ChatSession, session_id, with_for_update=lock)
    return chat if chat is not None and chat.deleted_at is None else None


def _rowcount(result: Any) -> int:
    return int(result.rowcount)


def _pending(chat: ChatSession, redo_extractive: bool) -> PendingSummary:
    """What to fold: the messages past the summary, or all of them when an extractive summary is redone."""
    messages = [(m.role, m.content) for m in chat.messages]
    if redo_extractive and chat.summary_method == "extractive":
        return PendingSummary(chat.id, chat.updated_at, None, messages, len(messages))
    return PendingSummary(chat.id, chat.updated_at, chat.summary, messages[chat.summary_upto :], len(messages))


def _archived_dict(chat: ChatSession) -> dict[str, Any]:
    """The session with its messages as JSON values (times in ISO 8601)."""
    data: dict[str, Any] = json.loads(json.dumps(_session_dict(chat, with_messages=True), default=_iso, ensure_ascii=False))
    return data


def _iso(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def summary_prompt(previous: str | None, messages: Sequence[tuple[str, str]]) -> str:
    transcript = "\n".join(f"{role}: {content}" for role, content in messages)
    head = f"Summary so far:\n{previous}\n\n" if previous else ""
    return (f"{head}Conversation:\n{transcript}\n\nWrite an updated summary of this conversation between an engineer and the "
            "knowledge assistant in at most 150 words. Keep facts, names, numbers, decisions and open questions.")  # fmt: skip


def fold_summary(complete: Callable[[str], str], previous: str | None, messages: Sequence[tuple[str, str]],
                 budget_chars: int, message_chars: int = 2_000) -> str:  # fmt: skip
    """A summary of a conversation of any length: messages folded into the summary a prompt-sized batch at a
    time (each message cut to `message_chars`), with summary_prompt, as the chat does past 30 messages."""
    summary = previous
    for batch in _batches([(r, c[:message_chars]) for r, c in messages], budget_chars):
        summary = complete(summary_prompt(summary, batch)).strip() or summary
    return summary or ""


def _batches(messages: Sequence[tuple[str, str]], budget_chars: int) -> list[list[tuple[str, str]]]:
    batches: list[list[tuple[str, str]]] = [[]]
    used = 0
    for role, content in messages:
        size = len(role) + len(content) + 3
        if batches[-1] and used + size > budget_chars:
            batches.append([])
            used = 0
        batches[-1].append((role, content))
        used += size
    return [b for b in batches if b]


LEAD_WORDS = 40
LABEL_WORDS = 3  # "Asked:" and "Key points:"
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+|\n+")


def extractive_summary(previous: str | None, messages: Sequence[tuple[str, str]], max_words: int = 150) -> str:
    """A summary without an LLM: the first question, then the sentences whose terms the conversation repeats most
    (term frequencies, damped by sentence length), in their order, up to `max_words`; a previous summary leads."""
    sentences = [(i, s.strip()) for i, (_, content) in enumerate(messages) for s in _SENTENCE_END.split(content) if s.strip()]
    if not sentences:
        return previous or ""
    frequency = Counter(term for _, s in sentences for term in set(analyze(s)))
    first_question = next((i for i, (role, _) in enumerate(messages) if role == "user"), 0)
    lead = " ".join(next((s for i, s in sentences if i >= first_question), sentences[0][1]).split()[:LEAD_WORDS])

    def weight(sentence: str) -> float:
        terms = set(analyze(sentence))
        return sum(frequency[t] for t in terms) / math.sqrt(len(terms)) if terms else 0.0

    budget = max_words - len((previous or "").split()) - len(lead.split()) - LABEL_WORDS
    picked: set[int] = set()
    for n, (_, sentence) in sorted(enumerate(sentences), key=lambda item: -weight(item[1][1])):
        words = len(sentence.split())
        if sentence != lead and words <= budget:
            picked.add(n)
            budget -= words
    body = " ".join(s for n, (_, s) in enumerate(sentences) if n in picked)
    text_ = f"Asked: {lead}" + (f" Key points: {body}" if body else "")
    return f"{previous}\n{text_}" if previous else text_


def _session_dict(chat: ChatSession, with_messages: bool) -> dict[str, Any]:
    data: dict[str, Any] = {"id": chat.id, "user": chat.user, "title": chat.title, "model": chat.model, "summary": chat.summary,
                            "summary_method": chat.summary_method, "created_at": chat.created_at,
                            "updated_at": chat.updated_at, "closed": chat.closed_at is not None,
                            "closed_at": chat.closed_at}  # fmt: skip
    if with_messages:
        data["messages"] = [
            {"id": m.id, "seq": m.seq, "role": m.role, "content": m.content, "sources": (m.sources or {}).get("items", []),
             "prompt_tokens": m.prompt_tokens, "completion_tokens": m.completion_tokens, "created_at": m.created_at}
            for m in chat.messages
        ]  # fmt: skip
    return data
