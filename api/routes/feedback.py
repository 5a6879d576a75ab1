"""Feedback on answers: POST/DELETE /v1/messages/{id}/feedback, GET /v1/sessions/{id}/feedback, and the export
GET /v1/feedback/export (JSON lines or CSV) for admins and auditors.

A message is rated by whoever may read its session (sessions.py's rule: the owner, or a role with
`read_others_sessions`); anything else is answered 404, like a message that does not exist, so ids cannot be probed.
Every vote, take-back and export is recorded in the audit log; comments are masked before they are stored."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from api.auth import Caller, CallerDep
from api.deps import StateDep
from api.metrics import FEEDBACK
from api.routes.sessions import _readable
from api.schemas import FeedbackOut, FeedbackRequest
from api.state import AppState
from query_engine.feedback import DOWN, UP, FeedbackStore, MessageTarget, NotAnAnswer

router = APIRouter(tags=["feedback"])

MessageId = Annotated[int, Path(ge=1, le=2_147_483_647, description="A message id from GET /v1/sessions/{id} or a chat answer.")]
RATINGS = {"up": UP, "down": DOWN}
EXPORT_COLUMNS = ("id", "message_id", "session_id", "session_user", "user", "rating", "comment", "created_at", "updated_at",
                  "question", "answer", "answered_at", "collections", "paths", "cited_paths", "top_score")  # fmt: skip
# A spreadsheet runs a cell that starts like a formula (OWASP: CSV injection); comments and questions are anyone's text.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def feedback_store(state: AppState) -> FeedbackStore:
    """The feedback table on the sessions' engine: the same connection pool, nothing of its own to close."""
    return FeedbackStore(state.sessions.engine)


def require_exporter(caller: CallerDep) -> Caller:
    """An export holds other users' questions: admins, and roles that read others' sessions (auditor)."""
    if not (caller.access.admin or caller.access.read_others_sessions):
        raise HTTPException(403, "exporting feedback needs the admin role or one that reads others' sessions (auditor)")
    return caller


ExporterDep = Annotated[Caller, Depends(require_exporter)]


async def _rateable(state: AppState, caller: Caller, message_id: int) -> MessageTarget:
    """The message, if the caller may read its session; 404 otherwise, naming the message and not its session."""
    target = await run_in_threadpool(feedback_store(state).target, message_id)
    unknown = HTTPException(404, f"unknown message {message_id}")
    if target is None:
        raise unknown
    try:
        await _readable(state, caller, target.session_id)
    except HTTPException as exc:
        raise unknown from exc
    return target


def _rater(caller: Caller, target: MessageTarget) -> str:
    """Whose vote it is: the signed-in user; with sign-in off, the conversation's own user."""
    return target.owner if caller.identity.method == "local" else caller.user()


@router.post("/v1/messages/{message_id}/feedback")
async def give_feedback(message_id: MessageId, body: FeedbackRequest, state: StateDep, caller: CallerDep) -> FeedbackOut:
    """Rate an answer up or down, with an optional comment; a second vote replaces the first."""
    target = await _rateable(state, caller, message_id)
    if target.role != "assistant":
        raise HTTPException(422, f"message {message_id} is a {target.role} message; feedback goes on answers")
    user = _rater(caller, target)
    try:
        stored = await run_in_threadpool(feedback_store(state).give, message_id, user, RATINGS[body.rating], body.comment)
    except LookupError:  # deleted since it was looked up
        raise HTTPException(404, f"unknown message {message_id}") from None
    except NotAnAnswer as exc:
        raise HTTPException(422, str(exc)) from exc
    FEEDBACK.labels(rating=body.rating).inc()
    await run_in_threadpool(state.audit.record, user, "feedback_give", target=str(message_id),
                            detail={"session_id": target.session_id, "rating": body.rating, "replaced": stored["replaced"],
                                    "comment_chars": len(stored["comment"] or "")})  # fmt: skip
    return FeedbackOut.model_validate(stored)


@router.delete("/v1/messages/{message_id}/feedback", status_code=204)
async def remove_feedback(message_id: MessageId, state: StateDep, caller: CallerDep) -> Response:
    """Take back your feedback on an answer; 404 when you gave none."""
    target = await _rateable(state, caller, message_id)
    user = _rater(caller, target)
    if not await run_in_threadpool(feedback_store(state).remove, message_id, user):
        raise HTTPException(404, f"no feedback of yours on message {message_id}")
    await run_in_threadpool(state.audit.record, user, "feedback_remove", target=str(message_id),
                            detail={"session_id": target.session_id})  # fmt: skip
    return Response(status_code=204)


@router.get("/v1/sessions/{session_id}/feedback")
async def session_feedback(session_id: Annotated[str, Path(max_length=64)], state: StateDep,
                           caller: CallerDep) -> dict[str, list[FeedbackOut]]:  # fmt: skip
    """Your votes on a session's answers (with `read_others_sessions`, or sign-in off: everyone's), in message order."""
    await _readable(state, caller, session_id)
    everyone = caller.identity.method == "local" or caller.access.read_others_sessions
    votes = await run_in_threadpool(feedback_store(state).for_session, session_id, None if everyone else caller.user())
    return {"data": [FeedbackOut.model_validate(v) for v in votes]}


@router.get("/v1/feedback/export", response_class=StreamingResponse)
async def export_feedback(
    state: StateDep, caller: ExporterDep, format: Literal["jsonl", "csv"] = "jsonl",
    since: Annotated[datetime | None, Query(description="Votes last given at or after this (ISO 8601; UTC if no zone).")] = None,
    until: Annotated[datetime | None, Query(description="Votes last given before this.")] = None,
) -> StreamingResponse:  # fmt: skip
    """Every vote with its question, answer, sources, session and users, oldest first, streamed (masked)."""
    if since is not None and until is not None and _aware(since) >= _aware(until):
        raise HTTPException(400, "`since` must be before `until`")
    await run_in_threadpool(state.audit.record, caller.user(), "feedback_export", target=format,
                            detail={"since": since.isoformat() if since else None,
                                    "until": until.isoformat() if until else None})  # fmt: skip
    rows = feedback_store(state).export(since, until)
    body, media = (_jsonl(rows), "application/x-ndjson") if format == "jsonl" else (_csv(rows), "text/csv; charset=utf-8")
    return StreamingResponse(body, media_type=media, headers={"Content-Disposition": f'attachment; filename="feedback.{format}"'})


def _aware(at: datetime) -> datetime:
    """Comparable whether or not the client gave a zone (a time without one is UTC, as the store reads it); never
    shifted into UTC, which overflows at year 1 or 9999."""
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _jsonl(rows: Iterable[dict[str, Any]]) -> Iterator[str]:
    for row in rows:
        yield json.dumps(row, ensure_ascii=False, default=_iso) + "\n"


def _csv(rows: Iterable[dict[str, Any]]) -> Iterator[str]:
    """A header, then one line per vote; lists joined by '; ', texts guarded against formula injection."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(EXPORT_COLUMNS)
    for row in rows:
        writer.writerow([_cell(row[column]) for column in EXPORT_COLUMNS])
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    if buffer.tell():  # no rows: the header alone
        yield buffer.getvalue()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        value = "; ".join(str(v) for v in value)
    if isinstance(value, datetime):
        return value.isoformat()
    text = str(value)
    return "'" + text if isinstance(value, str) and text.startswith(_FORMULA_START) else text


def _iso(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
