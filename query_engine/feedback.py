"""Feedback on answers (a thumbs up or down and an optional comment, one per user and assistant message) and the
usage figures /metrics exports, both read from the sessions' PostgreSQL tables.

Feedback lives in `kb_feedback` (migration 0007) and goes with its message: deleting, purging, archiving or erasing
a session takes its feedback along (ON DELETE CASCADE), and a session a user deleted leaves every read at once, the
export included. Comments are masked here, so no writer can store a secret by forgetting to."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import CheckConstraint, DateTime, ForeignKey, Integer, SmallInteger, String, Text, delete, func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Mapped, Session, aliased, mapped_column

from assets.mask import mask_secrets
from query_engine.memory import Base, ChatSession, Message

UP, DOWN = 1, -1
RATING_NAMES = {UP: "up", DOWN: "down"}
MAX_COMMENT_CHARS = 2_000
WINDOWS = ("1d", "7d")  # the usage gauges' windows (active users also over 30 days)
EXPORT_BATCH = 500  # rows fetched from the server-side cursor at a time: an export of any size streams in bounded memory


class Feedback(Base):
    """One user's opinion of one answer; a second vote replaces the first (unique message_id, user)."""

    __tablename__ = "kb_feedback"
    __table_args__ = (CheckConstraint("rating IN (-1, 1)", name="kb_feedback_rating"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("kb_messages.id", ondelete="CASCADE"), index=True)
    user: Mapped[str] = mapped_column(String(200), index=True)
    rating: Mapped[int] = mapped_column(SmallInteger)
    comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class NotAnAnswer(ValueError):
    """Feedback goes on assistant messages only."""


@dataclass(frozen=True)
class MessageTarget:
    """A stored message of a live session, as the feedback routes need it to decide who may rate it."""

    message_id: int
    session_id: str
    role: str
    owner: str


@dataclass(frozen=True)
class UsageSnapshot:
    """What the usage gauges show, read in one go (api/metrics.py caches it between scrapes)."""

    active_users: dict[str, int]  # window ("1d", "7d", "30d") → distinct users with a session active in it
    active_sessions: dict[str, int]  # window ("1d", "7d") → sessions with a message in it
    messages_per_session: dict[str, tuple[int, int, float | None, float | None]]  # window → (sessions, messages, p50, p95)
    feedback_votes: dict[tuple[str, str], int]  # (rating name, window) → standing votes first given in the window


class FeedbackStore:
    """kb_feedback on SessionStore's engine (pass `SessionStore.engine`): it holds no connections of its own."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def target(self, message_id: int) -> MessageTarget | None:
        """The message with its session and owner, or None when there is none or its session was deleted."""
        query = (
            select(Message.id, Message.session_id, Message.role, ChatSession.user)
            .join(ChatSession, ChatSession.id == Message.session_id)
            .where(Message.id == message_id, ChatSession.deleted_at.is_(None))
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).one_or_none()
        return None if row is None else MessageTarget(*row)

    def message_id(self, session_id: str, seq: int) -> int | None:
        """The id of a session's message by its sequence number (what SessionStore.add returns): the id clients
        rate an answer by. Read through the (session_id, seq) unique index."""
        with self.engine.connect() as conn:
            found = conn.scalar(select(Message.id).where(Message.session_id == session_id, Message.seq == seq))
        return int(found) if found is not None else None

    def give(self, message_id: int, user: str, rating: int, comment: str | None = None) -> dict[str, Any]:
        """Store `user`'s vote on an answer, replacing an earlier one (the comment too); returns it, with `replaced`.
        LookupError when the message is gone or its session deleted, NotAnAnswer for a user's own message."""
        if rating not in RATING_NAMES:
            raise ValueError(f"a rating is {UP} (up) or {DOWN} (down), not {rating!r}")
        clean = _clean_comment(comment)
        with Session(self.engine) as db, db.begin():
            # FOR SHARE on the message: a purge or erasure waits for this vote rather than breaking its foreign key.
            found = db.execute(
                select(Message.role, Message.session_id)
                .join(ChatSession, ChatSession.id == Message.session_id)
                .where(Message.id == message_id, ChatSession.deleted_at.is_(None))
                .with_for_update(read=True, of=Message)
            ).one_or_none()
            if found is None:
                raise LookupError(message_id)
            role, session_id = found
            if role != "assistant":
                raise NotAnAnswer(f"message {message_id} is a {role} message; feedback goes on answers")
            mine = (Feedback.message_id == message_id, Feedback.user == user)
            replaced = db.scalar(select(Feedback.id).where(*mine)) is not None
            upsert = insert(Feedback).values(message_id=message_id, user=user, rating=rating, comment=clean)
            upsert = upsert.on_conflict_do_update(
                constraint="kb_feedback_message_user", set_={"rating": rating, "comment": clean, "updated_at": func.now()}
            )
            row = db.execute(upsert.returning(*_FEEDBACK_COLUMNS)).mappings().one()
        return {**_feedback_dict(row), "session_id": session_id, "replaced": replaced}

    def remove(self, message_id: int, user: str) -> bool:
        """Take back `user`'s vote on a message; False when there was none."""
        with Session(self.engine) as db, db.begin():
            gone = db.execute(delete(Feedback).where(Feedback.message_id == message_id, Feedback.user == user))
            return bool(gone.rowcount)  # type: ignore[attr-defined]

    def for_session(self, session_id: str, user: str | None = None) -> list[dict[str, Any]]:
        """The votes on a live session's answers (only `user`'s when given), in message order."""
        query = (
            select(*_FEEDBACK_COLUMNS, Message.session_id)
            .join(Message, Message.id == Feedback.message_id)
            .join(ChatSession, ChatSession.id == Message.session_id)
            .where(Message.session_id == session_id, ChatSession.deleted_at.is_(None))
            .order_by(Message.seq, Feedback.user)
        )
        if user is not None:
            query = query.where(Feedback.user == user)
        with self.engine.connect() as conn:
            return [{**_feedback_dict(row), "session_id": row["session_id"]} for row in conn.execute(query).mappings()]

    def counts(self, since: datetime | None = None, until: datetime | None = None) -> dict[str, int]:
        """Votes standing now, by rating name, last changed in [since, until)."""
        query = select(Feedback.rating, func.count()).group_by(Feedback.rating)
        query = query.where(*_window(Feedback.updated_at, since, until))
        with self.engine.connect() as conn:
            found = dict(conn.execute(query).tuples().all())
        return {name: int(found.get(rating, 0)) for rating, name in RATING_NAMES.items()}

    def export(self, since: datetime | None = None, until: datetime | None = None) -> Iterator[dict[str, Any]]:
        """Every vote last changed in [since, until) (an export picks up changed votes since the previous one), oldest
        first, with its answer, the question before it, the answer's sources, the session and both users. Streamed
        from a server-side cursor; texts are masked again on the way out, so a rule added since they were stored
        applies too."""
        answer, asked = aliased(Message), aliased(Message)
        question = (
            select(asked.content)
            .where(asked.session_id == answer.session_id, asked.seq < answer.seq, asked.role == "user")
            .order_by(asked.seq.desc())
            .limit(1)
            .correlate(answer)
            .scalar_subquery()
        )
        query = (
            select(*_FEEDBACK_COLUMNS, answer.session_id, answer.content.label("answer"), answer.sources,
                   answer.created_at.label("answered_at"), ChatSession.user.label("session_user"), question.label("question"))
            .join(answer, answer.id == Feedback.message_id)
            .join(ChatSession, ChatSession.id == answer.session_id)
            .where(ChatSession.deleted_at.is_(None), *_window(Feedback.updated_at, since, until))
            .order_by(Feedback.updated_at, Feedback.id)
        )  # fmt: skip
        with self.engine.connect() as conn:
            rows = conn.execution_options(stream_results=True, yield_per=EXPORT_BATCH).execute(query).mappings()
            for row in rows:
                yield _export_dict(row)


def read_usage(engine: Engine) -> UsageSnapshot:
    """The usage figures in three statements, each a range scan of an index (kb_sessions.updated_at,
    kb_messages' (session_id, seq), kb_feedback.created_at) over the last days, never a whole table.

    A session's updated_at moves with every message (SessionStore.add), and deleting or summarizing keeps it, so
    "active in a window" means "a message was written in it"; deleted sessions still count as activity."""
    with engine.connect() as conn:
        sessions = conn.execute(text(_SESSIONS_SQL)).mappings().one()
        lengths = conn.execute(text(_LENGTHS_SQL)).mappings().one()
        votes = conn.execute(text(_VOTES_SQL)).mappings().all()
    by_rating = {RATING_NAMES[row["rating"]]: row for row in votes}
    return UsageSnapshot(
        active_users={w: int(sessions[f"users_{w}"]) for w in ("1d", "7d", "30d")},
        active_sessions={w: int(sessions[f"sessions_{w}"]) for w in WINDOWS},
        messages_per_session={w: (int(lengths[f"sessions_{w}"]), int(lengths[f"messages_{w}"] or 0),
                                  _float(lengths[f"p50_{w}"]), _float(lengths[f"p95_{w}"])) for w in WINDOWS},
        feedback_votes={(name, w): int(by_rating[name][f"votes_{w}"]) if name in by_rating else 0
                        for name in RATING_NAMES.values() for w in WINDOWS},
    )  # fmt: skip


_SESSIONS_SQL = """
SELECT count(DISTINCT "user") FILTER (WHERE updated_at >= now() - interval '1 day') AS users_1d,
       count(DISTINCT "user") FILTER (WHERE updated_at >= now() - interval '7 days') AS users_7d,
       count(DISTINCT "user") AS users_30d,
       count(*) FILTER (WHERE updated_at >= now() - interval '1 day') AS sessions_1d,
       count(*) FILTER (WHERE updated_at >= now() - interval '7 days') AS sessions_7d
FROM kb_sessions WHERE updated_at >= now() - interval '30 days'"""

# The length of every conversation active in the window, however old its first message.
_LENGTHS_SQL = """
WITH recent AS (
  SELECT s.updated_at >= now() - interval '1 day' AS in_1d,
         (SELECT count(*) FROM kb_messages m WHERE m.session_id = s.id) AS n
  FROM kb_sessions s WHERE s.updated_at >= now() - interval '7 days' AND s.deleted_at IS NULL
)
SELECT count(*) FILTER (WHERE in_1d) AS sessions_1d, sum(n) FILTER (WHERE in_1d) AS messages_1d,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY n) FILTER (WHERE in_1d) AS p50_1d,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY n) FILTER (WHERE in_1d) AS p95_1d,
       count(*) AS sessions_7d, sum(n) AS messages_7d,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY n) AS p50_7d,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY n) AS p95_7d
FROM recent"""

_VOTES_SQL = """
SELECT rating, count(*) FILTER (WHERE created_at >= now() - interval '1 day') AS votes_1d, count(*) AS votes_7d
FROM kb_feedback WHERE created_at >= now() - interval '7 days' GROUP BY rating"""

_FEEDBACK_COLUMNS = (Feedback.id, Feedback.message_id, Feedback.user, Feedback.rating, Feedback.comment, Feedback.created_at,
                     Feedback.updated_at)  # fmt: skip


def _clean_comment(comment: str | None) -> str | None:
    """Masked, trimmed and capped; an empty comment is none."""
    if comment is None or not comment.strip():
        return None
    return mask_secrets(comment.strip()[:MAX_COMMENT_CHARS]).text


def _window(column: Any, since: datetime | None, until: datetime | None) -> list[Any]:
    """since inclusive, until exclusive (as the audit export); a time without a zone is UTC."""
    bounds = []
    if since is not None:
        bounds.append(column >= _utc(since))
    if until is not None:
        bounds.append(column < _utc(until))
    return bounds


def _utc(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _feedback_dict(row: Any) -> dict[str, Any]:
    return {"id": row["id"], "message_id": row["message_id"], "user": row["user"], "rating": RATING_NAMES[row["rating"]],
            "comment": row["comment"], "created_at": row["created_at"], "updated_at": row["updated_at"]}  # fmt: skip


def _export_dict(row: Any) -> dict[str, Any]:
    sources = [s for s in (row["sources"] or {}).get("items", []) if isinstance(s, dict)]
    scores = [float(s["score"]) for s in sources if isinstance(s.get("score"), int | float)]
    return {
        **_feedback_dict(row),
        "comment": _masked(row["comment"]),
        "session_id": row["session_id"],
        "session_user": row["session_user"],
        "question": _masked(row["question"]),
        "answer": _masked(row["answer"]),
        "answered_at": row["answered_at"],
        "collections": list(dict.fromkeys(str(s.get("collection", "")) for s in sources)),
        "paths": [f"{s.get('collection', '')}/{s.get('path', '')}" for s in sources],
        "cited_paths": [f"{s.get('collection', '')}/{s.get('path', '')}" for s in sources if s.get("cited")],
        "top_score": max(scores, default=None),
    }


def _masked(value: str | None) -> str | None:
    return None if value is None else mask_secrets(value).text
