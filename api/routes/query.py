"""POST /v1/query: answer, sources with scores, per-stage timings; GET /v1/documents/…: an indexed document."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from starlette.concurrency import run_in_threadpool

from api.auth import Caller, CallerDep, readable_collections
from api.deps import StateDep
from api.metrics import REQUESTS, observe, observe_answer
from api.schemas import QueryRequest, QueryResponse
from api.sources import source_dicts
from api.state import AppState
from assets.mask import mask_secrets
from query_engine.agent import AgentAnswer
from query_engine.engine import LLMUnavailable
from query_engine.prompts import question_language

router = APIRouter(tags=["query"])


async def _sources_only(state: AppState, body: QueryRequest, caller: Caller, outcome: str,
                        error: str | None = None) -> QueryResponse:  # fmt: skip
    """Retrieval without an answer: asked for (answer=false), or the LLM is down."""
    readable = readable_collections(caller, body.collections)
    try:
        retrieval = await run_in_threadpool(state.engine.retrieve, body.question, readable, body.filters, caller.access.groups)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from exc
    observe(retrieval.timings)
    REQUESTS.labels("query", outcome).inc()
    return QueryResponse(answer=None, answerable=retrieval.answerable, sources=source_dicts(retrieval.sources),
                         timings=retrieval.timings, language=question_language(body.question), error=error)  # fmt: skip


@router.post("/v1/query")
async def query(body: QueryRequest, state: StateDep, caller: CallerDep) -> QueryResponse:
    """Retrieve and (unless answer=false) answer; with the LLM down, the sources still come back."""
    readable = readable_collections(caller, body.collections)
    # A secret pasted into a question is masked before it is logged, audited or put in a prompt.
    body = body.model_copy(update={"question": mask_secrets(body.question).text})
    await run_in_threadpool(state.audit.record, caller.user(body.user), "query",
                            detail={"question": body.question, "collections": readable, "agent": body.agent,
                                    **caller.forwarded_by()})  # fmt: skip
    if not body.answer:
        return await _sources_only(state, body, caller, "retrieval_only")
    if body.agent:
        return await _agent_answer(state, body, caller)
    try:
        answer = await state.engine.answer(body.question, collections=readable, filters=body.filters, groups=caller.access.groups)
    except LLMUnavailable as exc:
        return await _sources_only(state, body, caller, "llm_unavailable", str(exc))
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from exc
    sources = source_dicts(answer.sources)
    observe(answer.timings, sources)
    observe_answer("query", answer)
    REQUESTS.labels("query", "ok").inc()
    return QueryResponse(answer=answer.text, answerable=bool(answer.sources), sources=sources, grounding=answer.grounding,
                         timings=answer.timings, language=answer.language)  # fmt: skip


async def _agent_answer(state: AppState, body: QueryRequest, caller: Caller) -> QueryResponse:
    """The agent's answer with its tool steps; 400 when no live connector is configured."""
    if state.agent is None:
        raise HTTPException(400, "agent: true needs a live connector in connectors.yaml (and an LLM)")
    agent = state.agent.scoped(readable_collections(caller, body.collections), caller.access.groups, caller.access.connectors)
    final: AgentAnswer | None = None
    try:
        async for event in agent.astream(body.question, user=caller.user(body.user)):
            if isinstance(event, AgentAnswer):
                final = event
    except LLMUnavailable as exc:
        raise HTTPException(503, f"the language model is unavailable ({exc})") from exc
    assert final is not None
    sources = source_dicts(final.sources)
    observe(final.timings, sources)
    observe_answer("query_agent", final)
    REQUESTS.labels("query_agent", "ok").inc()
    return QueryResponse(answer=final.text, answerable=True, sources=sources, grounding=final.grounding, timings=final.timings,
                         language=final.language, steps=[s.step() for s in final.steps])  # fmt: skip


@router.get("/v1/documents/{collection}/{path:path}")
async def document(collection: str, path: str, state: StateDep, caller: CallerDep) -> dict[str, object]:
    """The indexed (masked) chunks of one document, in order: where a source link points. A collection or
    document the caller may not read is answered like one that is not indexed."""
    if collection not in {s.name for s in state.specs} or collection not in caller.access.collections:
        raise HTTPException(404, f"unknown collection {collection!r}")
    hits = await run_in_threadpool(state.index.document_chunks, collection, path, caller.access.groups)
    await run_in_threadpool(state.audit.record, caller.user(), "document_read", target=f"{collection}/{path}",
                            outcome="ok" if hits else "not_found")  # fmt: skip
    if not hits:
        raise HTTPException(404, f"{collection}/{path} is not indexed")
    return {"collection": collection, "path": path, "chunks": [{"text": h.text, "metadata": h.metadata} for h in hits]}
