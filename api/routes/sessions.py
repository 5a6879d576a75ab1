"""/v1/sessions: list, get, rename, delete, full-text search, export as Markdown or JSON.

A deleted session answers 404 everywhere at once; the retention job (pipelines/retention.py) purges its rows after
the grace. Erasing all of a user's data is DELETE /v1/me/data (api/routes/auth.py).

Users see only their own sessions. A role with `read_others_sessions` (auditor) reads anyone's, and each
such read is recorded in the audit log; a session that is not the caller's and not readable by them
is answered 404, like one that does not exist, so ids cannot be probed."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from api.auth import Caller, CallerDep
from api.deps import StateDep
from api.state import AppState
from assets.mask import mask_secrets

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])


class SessionUpdate(BaseModel):
    """What a user may change on a session: its title (the web client's rename)."""

    model_config = ConfigDict(extra="forbid")

    title: str = Field(min_length=1, max_length=200, description="The new title; at most 200 characters, not blank.")


def _whose(caller: Caller, requested: str | None) -> str | None:
    """The user whose sessions a listing shows: the caller's own, unless they may read others'."""
    if caller.access.read_others_sessions:
        return requested
    own = caller.user(requested)
    if requested is not None and requested != own and caller.identity.method != "local":
        raise HTTPException(403, "you may list only your own sessions")
    return own


async def _readable(state: AppState, caller: Caller, session_id: str, write: bool = False) -> None:
    """404 unless the session exists and is the caller's (or, to read, the caller may read others')."""
    found = await run_in_threadpool(state.sessions.owner, session_id)
    if found is None:
        raise HTTPException(404, f"unknown session {session_id!r}")
    owner, _closed = found
    if caller.identity.method == "local" or owner == caller.user():
        return
    if write or not caller.access.read_others_sessions:
        raise HTTPException(404, f"unknown session {session_id!r}")
    await run_in_threadpool(state.audit.record, caller.user(), "session_read", target=session_id,
                            detail={"owner": owner, "roles": list(caller.access.roles)})  # fmt: skip


@router.get("")
async def list_sessions(state: StateDep, caller: CallerDep, user: Annotated[str | None, Query(max_length=200)] = None,
                        limit: Annotated[int, Query(ge=1, le=200)] = 50,
                        offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0) -> dict[str, Any]:  # fmt: skip
    """Your sessions, most recently active first (an auditor: anyone's, or one `user`'s)."""
    whose = _whose(caller, user)
    if caller.access.read_others_sessions and whose != caller.user():
        await run_in_threadpool(state.audit.record, caller.user(), "session_list", target=whose or "*")
    return {"data": await run_in_threadpool(state.sessions.list, whose, limit, offset)}


@router.get("/search")
async def search_sessions(
    state: StateDep, caller: CallerDep, q: Annotated[str, Query(min_length=1, max_length=500)],
    user: Annotated[str | None, Query(max_length=200)] = None,
) -> dict[str, Any]:  # fmt: skip
    """Full-text search over your messages (an auditor: anyone's)."""
    whose = _whose(caller, user)
    if caller.access.read_others_sessions and whose != caller.user():
        await run_in_threadpool(state.audit.record, caller.user(), "session_search", target=whose or "*", detail={"query": q})
    hits = await run_in_threadpool(state.sessions.search, q, whose)
    # Each hit names its conversation, so a client can list hits without fetching every session.
    titles = await run_in_threadpool(state.sessions.titles, [h["session_id"] for h in hits])
    return {"data": [{**h, "title": titles.get(h["session_id"], "")} for h in hits]}


@router.get("/{session_id}")
async def get_session(session_id: str, state: StateDep, caller: CallerDep) -> dict[str, Any]:
    """One session with its messages and their sources."""
    await _readable(state, caller, session_id)
    chat = await run_in_threadpool(state.sessions.get, session_id)
    if chat is None:
        raise HTTPException(404, f"unknown session {session_id!r}")
    return chat


@router.patch("/{session_id}")
async def rename_session(session_id: str, body: SessionUpdate, state: StateDep, caller: CallerDep) -> dict[str, Any]:
    """Rename one of your sessions (a closed one too: it stays read-only); the session without its messages."""
    await _readable(state, caller, session_id, write=True)
    # Typed by the user, shown in every listing and export: masked like a question.
    title = mask_secrets(" ".join(body.title.split())).text
    if not title:
        raise HTTPException(400, "the title must not be blank")
    renamed = await run_in_threadpool(state.sessions.rename, session_id, title)
    if renamed is None:  # deleted since it was looked up
        raise HTTPException(404, f"unknown session {session_id!r}")
    await run_in_threadpool(state.audit.record, caller.user(), "session_rename", target=session_id,
                            detail={"title_chars": len(title)})  # fmt: skip
    return renamed


@router.delete("/{session_id}", status_code=204)
async def delete_session(session_id: str, state: StateDep, caller: CallerDep) -> None:
    """Delete one of your sessions: gone at once for everyone; its messages are purged after the grace (30 days)."""
    await _readable(state, caller, session_id, write=True)
    if not await run_in_threadpool(state.sessions.delete, session_id):
        raise HTTPException(404, f"unknown session {session_id!r}")
    await run_in_threadpool(state.audit.record, caller.user(), "session_delete", target=session_id)


@router.get("/{session_id}/export", response_class=PlainTextResponse)
async def export_session(
    session_id: str, state: StateDep, caller: CallerDep, format: Literal["md", "json"] = "md"
) -> PlainTextResponse:
    """The conversation as Markdown (with its sources) or JSON."""
    await _readable(state, caller, session_id)
    text = await run_in_threadpool(state.sessions.export, session_id, format)
    if text is None:
        raise HTTPException(404, f"unknown session {session_id!r}")
    media = "application/json" if format == "json" else "text/markdown; charset=utf-8"
    return PlainTextResponse(
        text, media_type=media, headers={"Content-Disposition": f'attachment; filename="{session_id}.{format}"'}
    )
