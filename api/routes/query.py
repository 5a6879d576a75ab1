"""POST /v1/query: answer, sources with scores, per-stage timings; GET /v1/documents/…: an indexed document."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from starlette.concurrency import run_in_threadpool

from api.deps import StateDep
from api.metrics import REQUESTS, observe
from api.schemas import QueryRequest, QueryResponse
from api.sources import source_dicts
from api.state import AppState
from query_engine.engine import LLMUnavailable
from query_engine.prompts import question_language

router = APIRouter(tags=["query"])


async def _sources_only(state: AppState, body: QueryRequest, outcome: str, error: str | None = None) -> QueryResponse:
    """Retrieval without an answer: asked for (answer=false), or the LLM is down."""
    try:
        retrieval = await run_in_threadpool(state.engine.retrieve, body.question, body.collections, body.filters)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from exc
    observe(retrieval.timings)
    REQUESTS.labels("query", outcome).inc()
    return QueryResponse(answer=None, answerable=retrieval.answerable, sources=source_dicts(retrieval.sources),
                         timings=retrieval.timings, language=question_language(body.question), error=error)  # fmt: skip


@router.post("/v1/query")
async def query(body: QueryRequest, state: StateDep) -> QueryResponse:
    """Retrieve and (unless answer=false) answer; with the LLM down, the sources still come back."""
    if not body.answer:
        return await _sources_only(state, body, "retrieval_only")
    try:
        answer = await state.engine.answer(body.question, collections=body.collections, filters=body.filters)
    except LLMUnavailable as exc:
        return await _sources_only(state, body, "llm_unavailable", str(exc))
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from exc
    sources = source_dicts(answer.sources)
    observe(answer.timings, sources)
    REQUESTS.labels("query", "ok").inc()
    return QueryResponse(answer=answer.text, answerable=bool(answer.sources), sources=sources, timings=answer.timings,
                         language=answer.language)  # fmt: skip


@router.get("/v1/documents/{collection}/{path:path}")
async def document(collection: str, path: str, state: StateDep) -> dict[str, object]:
    """The indexed (masked) chunks of one document, in order: where a source link points."""
    if collection not in {s.name for s in state.specs}:
        raise HTTPException(404, f"unknown collection {collection!r}")
    hits = await run_in_threadpool(state.index.document_chunks, collection, path)
    if not hits:
        raise HTTPException(404, f"{collection}/{path} is not indexed")
    return {"collection": collection, "path": path, "chunks": [{"text": h.text, "metadata": h.metadata} for h in hits]}
