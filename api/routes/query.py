"""POST /v1/query: answer, sources with scores, per-stage timings; GET /v1/documents/…: an indexed document."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from starlette.concurrency import run_in_threadpool

from api.deps import StateDep
from api.metrics import REQUESTS, observe
from api.schemas import QueryRequest, QueryResponse
from api.sources import source_dicts
from api.state import AppState
from query_engine.agent import AgentAnswer
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
    if body.agent:
        return await _agent_answer(state, body)
    try:
        answer = await state.engine.answer(body.question, collections=body.collections, filters=body.filters)
    except LLMUnavailable as exc:
        return await _sources_only(state, body, "llm_unavailable", str(exc))
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from exc
    sources = source_dicts(answer.sources)
    observe(answer.timings, sources)
    REQUESTS.labels("query", "ok").inc()
    return QueryResponse(answer=answer.text, answerable=bool(answer.sources), sources=sources, grounding=answer.grounding,
                         timings=answer.timings, language=answer.language)  # fmt: skip


async def _agent_answer(state: AppState, body: QueryRequest) -> QueryResponse:
    """The agent's answer with its tool steps; 400 when no live connector is configured."""
    if state.agent is None:
        raise HTTPException(400, "agent: true needs a live connector in connectors.yaml (and an LLM)")
    final: AgentAnswer | None = None
    try:
        async for event in state.agent.astream(body.question, user=body.user or "anonymous"):
            if isinstance(event, AgentAnswer):
                final = event
    except LLMUnavailable as exc:
        raise HTTPException(503, f"the language model is unavailable ({exc})") from exc
    assert final is not None
    sources = source_dicts(final.sources)
    observe(final.timings, sources)
    REQUESTS.labels("query_agent", "ok").inc()
    return QueryResponse(answer=final.text, answerable=True, sources=sources, grounding=final.grounding, timings=final.timings,
                         language=final.language, steps=[s.step() for s in final.steps])  # fmt: skip


@router.get("/v1/documents/{collection}/{path:path}")
async def document(collection: str, path: str, state: StateDep) -> dict[str, object]:
    """The indexed (masked) chunks of one document, in order: where a source link points."""
    if collection not in {s.name for s in state.specs}:
        raise HTTPException(404, f"unknown collection {collection!r}")
    hits = await run_in_threadpool(state.index.document_chunks, collection, path)
    if not hits:
        raise HTTPException(404, f"{collection}/{path} is not indexed")
    return {"collection": collection, "path": path, "chunks": [{"text": h.text, "metadata": h.metadata} for h in hits]}
