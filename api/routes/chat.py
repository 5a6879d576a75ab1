"""OpenAI-compatible chat: POST /v1/chat/completions (SSE when stream=true) and GET /v1/models."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.responses import StreamingResponse
from llama_index.core.llms import ChatMessage, MessageRole
from starlette.concurrency import run_in_threadpool

from api.auth import CallerDep, readable_collections
from api.deps import StateDep
from api.metrics import REQUESTS, SESSIONS_CREATED, observe, observe_answer
from api.schemas import ChatCompletionRequest
from api.sources import source_dicts
from api.state import AppState
from assets.mask import mask_secrets
from query_engine.agent import AgentAnswer, StepEvent
from query_engine.engine import Answer, Delta, LLMUnavailable
from query_engine.feedback import FeedbackStore
from query_engine.memory import summary_prompt
from query_engine.routing import resolve_model

router = APIRouter(tags=["chat"])


@router.get("/v1/models")
def list_models(state: StateDep, _: CallerDep) -> dict[str, Any]:
    """Models this API answers with; 'default' is the configured default model."""
    routes = state.llm_settings.route_table()
    return {
        "object": "list",
        "data": [
            {
                "id": name,
                "object": "model",
                "created": 0,
                "owned_by": "kb",
                **({"routes_to": routes[name]} if name in routes else {}),
            }
            for name in state.model_names
        ],  # fmt: skip
        "routes": routes,
    }


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(body: ChatCompletionRequest, state: StateDep, caller: CallerDep) -> dict[str, Any] | StreamingResponse:
    """Answer the last user message from the knowledge base, with [n] citations and a `sources` field."""
    readable = readable_collections(caller, body.collections)
    user, groups = caller.user(body.user), caller.access.groups
    if body.model not in state.model_names:
        raise HTTPException(404, f"unknown model {body.model!r}; available: {', '.join(state.model_names)}")
    # A secret pasted into a question is masked before it is stored, logged, audited or put in a prompt.
    question = mask_secrets(next((m.text() for m in reversed(body.messages) if m.role == "user"), "").strip()).text
    if not question:
        raise HTTPException(400, "the conversation has no user message with text")
    session_id = await run_in_threadpool(_open_session, state, body, question, user)
    try:
        await run_in_threadpool(state.sessions.add, session_id, "user", question)  # stored before any answer is tried
        context = await run_in_threadpool(state.sessions.context, session_id, question)
    except KeyError:  # deleted (or its user's data erased) since it was opened
        raise HTTPException(404, f"unknown session {session_id!r}") from None
    stored = [ChatMessage(role=MessageRole(r), content=c) for r, c in context.messages[:-1]]
    given = [
        ChatMessage(role=MessageRole(m.role), content=mask_secrets(m.text()).text)
        for m in body.messages[:-1]
        if m.role in ("user", "assistant")
    ]
    history = stored if body.session_id else given
    model, task = resolve_model(body.model, question, state.llm_settings.route_table(), state.llm_settings.model)
    llm = state.llm_for(model)
    events: AsyncIterator[Any]
    if state.agent is not None and not body.collections and not body.filters:
        # Live connectors are on: the agent answers from them and the knowledge base, as far as the caller may read.
        agent = state.agent.scoped(readable, groups, caller.access.connectors)
        events = agent.astream(question, history, user, llm=llm)
    else:
        events = state.engine.astream(question, history, context.summary, readable, body.filters, llm=llm, groups=groups)
    await run_in_threadpool(state.audit.record, user, "chat", target=session_id,
                            detail={"question": question, "collections": readable, "model": model})  # fmt: skip
    try:
        first = await anext(events)  # retrieval and the LLM's first token happen here, so failures are still a status code
    except LLMUnavailable as exc:
        REQUESTS.labels("chat", "llm_unavailable").inc()
        raise HTTPException(503, f"the language model is unavailable ({exc}); POST /v1/query still returns sources") from exc
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from exc
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    if body.stream:
        return StreamingResponse(
            _sse(state, body.model, completion_id, session_id, first, events),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    answer = first if isinstance(first, Answer) else None
    async for event in events:
        if isinstance(event, Answer):
            answer = event
    assert answer is not None
    sources, message_id = await _finish(state, session_id, answer)
    extra = {"steps": [s.step() for s in answer.steps]} if isinstance(answer, AgentAnswer) else {}
    extra["route"] = {"task": task, "model": model}
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": answer.prompt_tokens,
            "completion_tokens": answer.completion_tokens,
            "total_tokens": answer.prompt_tokens + answer.completion_tokens,
        },
        "sources": sources,
        "grounding": answer.grounding,
        "timings": answer.timings,
        "session_id": session_id,
        "message_id": message_id,  # what POST /v1/messages/{id}/feedback rates
        **extra,
    }


def _open_session(state: AppState, body: ChatCompletionRequest, question: str, user: str) -> str:
    """The session to continue (the caller's own, still open) or a new one; the user's oldest open sessions
    beyond roles.yaml's `max_open_sessions` are closed."""
    if body.session_id:
        found = state.sessions.owner(body.session_id)
        if found is None or (found[0] != user and state.auth.mode != "off"):
            raise HTTPException(404, f"unknown session {body.session_id!r}")
        if found[1]:
            raise HTTPException(409, f"session {body.session_id} is closed (more than {state.role_config.max_open_sessions} "
                                "were open); start a new one")  # fmt: skip
        return body.session_id
    created = state.sessions.create(user, question[:80], state.llm_settings.model, max_open=state.role_config.max_open_sessions)
    SESSIONS_CREATED.inc()
    return created


async def _finish(state: AppState, session_id: str, answer: Answer) -> tuple[list[dict[str, Any]], int | None]:
    """Store the answer and count it; its sources and stored message id (None if its user was erased meanwhile)."""
    sources = source_dicts(answer.sources)
    seq = await run_in_threadpool(
        state.sessions.add, session_id, "assistant", answer.text, sources, answer.prompt_tokens, answer.completion_tokens
    )
    message_id = await run_in_threadpool(FeedbackStore(state.sessions.engine).message_id, session_id, seq)
    observe(answer.timings, sources)
    observe_answer("chat", answer)
    REQUESTS.labels("chat", "ok").inc()
    await _maybe_summarize(state, session_id)
    return sources, message_id


async def _maybe_summarize(state: AppState, session_id: str) -> None:
    """Fold older messages into the session's summary once it passes 30 messages."""
    pending = await run_in_threadpool(state.sessions.needs_summary, session_id)
    if not pending or state.engine.llm is None:
        return
    chat = await run_in_threadpool(state.sessions.get, session_id)
    try:
        reply = await state.engine.llm.acomplete(summary_prompt(chat["summary"] if chat else None, pending))
    except Exception as exc:  # a failed summary is retried after the next message; the answer already went out
        logging.getLogger(__name__).warning("summary of session %s failed: %s", session_id, exc)
        return
    await run_in_threadpool(state.sessions.save_summary, session_id, reply.text.strip(), len(pending))


def _chunk(completion_id: str, model: str, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
    payload = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


async def _sse(
    state: AppState, model: str, completion_id: str, session_id: str, first: Any, events: AsyncIterator[Any]
) -> AsyncIterator[str]:
    yield _chunk(completion_id, model, {"role": "assistant", "content": ""})
    pending: list[Any] = [first]
    try:
        while True:
            event = pending.pop() if pending else await anext(events)
            if isinstance(event, StepEvent):  # progress while the tools run: an extra field, no content
                yield _chunk(completion_id, model, {}, progress=event.as_dict())
                continue
            if isinstance(event, Delta):
                if event.text:
                    yield _chunk(completion_id, model, {"content": event.text})
                continue
            sources, message_id = await _finish(state, session_id, event)
            extra = {"steps": [s.step() for s in event.steps]} if isinstance(event, AgentAnswer) else {}
            yield _chunk(completion_id, model, {}, "stop", sources=sources, grounding=event.grounding, timings=event.timings,
                         session_id=session_id, message_id=message_id, **extra)  # fmt: skip
            break
    except StopAsyncIteration:
        pass
    except LLMUnavailable as exc:  # the server went away mid-answer: say so in the stream
        yield f"data: {json.dumps({'error': {'message': str(exc), 'type': 'llm_unavailable'}})}\n\n"
    yield "data: [DONE]\n\n"
