"""/v1/sessions: list, get, delete, full-text search, export as Markdown or JSON."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import PlainTextResponse
from starlette.concurrency import run_in_threadpool

from api.deps import StateDep

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])


@router.get("")
async def list_sessions(state: StateDep, user: str | None = None, limit: Annotated[int, Query(ge=1, le=200)] = 50,
                        offset: Annotated[int, Query(ge=0)] = 0) -> dict[str, Any]:  # fmt: skip
    """Sessions, most recently active first."""
    return {"data": await run_in_threadpool(state.sessions.list, user, limit, offset)}


@router.get("/search")
async def search_sessions(
    state: StateDep, q: Annotated[str, Query(min_length=1, max_length=500)], user: str | None = None
) -> dict[str, Any]:
    """Full-text search over every stored message."""
    return {"data": await run_in_threadpool(state.sessions.search, q, user)}


@router.get("/{session_id}")
async def get_session(session_id: str, state: StateDep) -> dict[str, Any]:
    """One session with its messages and their sources."""
    chat = await run_in_threadpool(state.sessions.get, session_id)
    if chat is None:
        raise HTTPException(404, f"unknown session {session_id!r}")
    return chat


@router.delete("/{session_id}", status_code=204)
async def delete_session(session_id: str, state: StateDep) -> None:
    """Delete a session and its messages."""
    if not await run_in_threadpool(state.sessions.delete, session_id):
        raise HTTPException(404, f"unknown session {session_id!r}")


@router.get("/{session_id}/export", response_class=PlainTextResponse)
async def export_session(session_id: str, state: StateDep, format: Literal["md", "json"] = "md") -> PlainTextResponse:
    """The conversation as Markdown (with its sources) or JSON."""
    text = await run_in_threadpool(state.sessions.export, session_id, format)
    if text is None:
        raise HTTPException(404, f"unknown session {session_id!r}")
    media = "application/json" if format == "json" else "text/markdown; charset=utf-8"
    return PlainTextResponse(
        text, media_type=media, headers={"Content-Disposition": f'attachment; filename="{session_id}.{format}"'}
    )
