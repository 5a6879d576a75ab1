"""OpenAI-compatible chat: POST /v1/chat/completions (SSE when stream=true) and GET /v1/models."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import StreamingResponse
from llama_index.core.llms import ChatMessage, MessageRole
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from api.auth import CallerDep, readable_collections
from api.citations import url_citations
from api.deps import StateDep
from api.housekeeping import UTILITY_MAX_TOKENS, UTILITY_MODEL, housekeeping_kind
from api.metrics import REQUESTS, SESSIONS_CREATED, observe, observe_answer
from api.schemas import ChatCompletionRequest
from api.sources import source_dicts
from api.state import AppState
from assets.mask import mask_secrets
from query_engine.agent import AgentAnswer, StepEvent
from query_engine.engine import Answer, Delta, LLMUnavailable
from query_engine.feedback import FeedbackStore
from query_engine.memory import conversation_chain, normalized, summary_prompt
from query_engine.routing import resolve_model

router = APIRouter(tags=["chat"])

# The header Open WebUI forwards its chat id in (ENABLE_FORWARD_USER_INFO_HEADERS): one chat, one session.
CHAT_ID_HEADER = "X-OpenWebUI-Chat-Id"


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
        ]
        + [
            {
                "id": UTILITY_MODEL,
                "object": "model",
                "created": 0,
                "owned_by": "kb",
                "description": "Plain model for a client's housekeeping (titles, tags, follow-ups): no retrieval, no session.",
            }
        ],  # fmt: skip
        "routes": routes,
    }


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, state: StateDep, caller: CallerDep
) -> dict[str, Any] | StreamingResponse:
    """Answer the last user message from the knowledge base, with [n] citations, a `sources` field and OpenAI-style
    `url_citation` annotations; a client's housekeeping prompts get a plain short answer instead."""
    if body.model != UTILITY_MODEL and body.model not in state.model_names:
        raise HTTPException(404, f"unknown model {body.model!r}; available: {', '.join([*state.model_names, UTILITY_MODEL])}")
    kind = housekeeping_kind(body.messages) or ("utility" if body.model == UTILITY_MODEL else None)
    if kind is not None:  # never retrieval, never the session store
        return await _housekeeping(state, body, kind)
    readable = readable_collections(caller, body.collections)
    user, groups = caller.user(body.user), caller.access.groups
    # A secret pasted into a question is masked before it is stored, logged, audited or put in a prompt.
    question = mask_secrets(next((m.text() for m in reversed(body.messages) if m.role == "user"), "").strip()).text
    if not question:
        raise HTTPException(400, "the conversation has no user message with text")
    given = [(m.role, mask_secrets(m.text()).text) for m in body.messages[:-1] if m.role in ("user", "assistant")]
    chat_id = (request.headers.get(CHAT_ID_HEADER) or "").strip()[:200] or None
    opened = await run_in_threadpool(_open_session, state, body, question, user, given, chat_id)
    session_id = opened.session_id
    try:
        if not opened.regenerate:
            await run_in_threadpool(state.sessions.add, session_id, "user", question)  # stored before any answer is tried
        context = await run_in_threadpool(state.sessions.context, session_id, question)
    except KeyError:  # deleted (or its user's data erased) since it was opened
        raise HTTPException(404, f"unknown session {session_id!r}") from None
    history = [ChatMessage(role=MessageRole(r), content=c) for r, c in context.messages[:-1]]
    summary = context.summary
    model, task = resolve_model(body.model, question, state.llm_settings.route_table(), state.llm_settings.model)
    llm = state.llm_for(model)
    events: AsyncIterator[Any]
    if state.agent is not None and not body.collections and not body.filters:
        # Live connectors are on: the agent answers from them and the knowledge base, as far as the caller may read.
        agent = state.agent.scoped(readable, groups, caller.access.connectors)
        events = agent.astream(question, history, user, llm=llm)
    else:
        events = state.engine.astream(question, history, summary, readable, body.filters, llm=llm, groups=groups)
    await run_in_threadpool(state.audit.record, user, "chat", target=session_id,
                            detail={"question": question, "collections": readable, "model": model,
                                    **caller.forwarded_by()})  # fmt: skip
    try:
        first = await anext(events)  # retrieval and the LLM's first token happen here, so failures are still a status code
    except LLMUnavailable as exc:
        REQUESTS.labels("chat", "llm_unavailable").inc()
        raise HTTPException(503, f"the language model is unavailable ({exc}); POST /v1/query still returns sources") from exc
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from exc
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    base_url, route = state.api.public_url or str(request.base_url), {"task": task, "model": model}
    if body.stream:
        return StreamingResponse(
            _sse(state, body.model, completion_id, session_id, first, events, base_url, route),
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
    extra["route"] = route
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.model,
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {
                    "role": "assistant",
                    "content": answer.text,
                    "annotations": url_citations(answer.text, sources, base_url),
                },
            }
        ],  # fmt: skip
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


@dataclass(frozen=True)
class OpenedSession:
    session_id: str
    regenerate: bool = False  # the request asks again for the last answer: it replaces the stored one


def _open_session(state: AppState, body: ChatCompletionRequest, question: str, user: str, given: list[tuple[str, str]],
                  chat_id: str | None) -> OpenedSession:  # fmt: skip
    """The session this request continues: the one it names (appended to), the one its client's chat id maps to, or
    the one the history it sends back left off in; else a new one, which first stores that history, so that the
    chat's next request finds it. In a client's chat, the question after the history replaces what followed it there:
    a regenerated answer (or an edited question) replaces the old one instead of adding to the session."""
    if body.session_id:
        found = state.sessions.owner(body.session_id)
        if found is None or (found[0] != user and state.auth.mode != "off"):
            raise HTTPException(404, f"unknown session {body.session_id!r}")
        if found[1]:
            raise HTTPException(409, f"session {body.session_id} is closed (more than {state.role_config.max_open_sessions} "
                                "were open); start a new one")  # fmt: skip
        return OpenedSession(body.session_id)
    chain = conversation_chain(given)
    if chat_id and (session_id := state.sessions.client_chat(user, chat_id)):
        hit = state.sessions.find_chain(user, chain, session_id) if chain else (session_id, 0)
        return _follow_client(state, session_id, hit[1] if hit else None, question)
    if not chat_id and chain and (hit := state.sessions.find_chain(user, chain)):
        return _follow_client(state, hit[0], hit[1], question)
    try:
        created = state.sessions.create(user, question[:80], state.llm_settings.model,
                                        max_open=state.role_config.max_open_sessions, client_chat_id=chat_id)  # fmt: skip
    except IntegrityError:  # the same chat's first two requests raced: the other one opened it
        return OpenedSession(state.sessions.client_chat(user, chat_id or "") or "")
    SESSIONS_CREATED.inc()
    for role, content in given:  # the chat so far, as the client kept it (a chat this product had not seen)
        state.sessions.add(created, role, content)
    return OpenedSession(created)


def _follow_client(state: AppState, session_id: str, anchor: int | None, question: str) -> OpenedSession:
    """Continue a client's chat whose history ends at message `anchor` of the session (None: a history we cannot
    place, such as one the client edited, is appended to). Stored messages after the anchor are the branch the client
    left: the same question again is a regeneration (its old answer goes), another one replaces that branch."""
    if anchor is None:
        return OpenedSession(session_id)
    tail = state.sessions.tail(session_id, anchor)
    if not tail:
        return OpenedSession(session_id)
    if tail[0][1] == "user" and normalized(tail[0][2]) == normalized(question):
        state.sessions.truncate(session_id, tail[0][0])
        return OpenedSession(session_id, regenerate=True)
    state.sessions.truncate(session_id, anchor)
    return OpenedSession(session_id)


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
    state: AppState,
    model: str,
    completion_id: str,
    session_id: str,
    first: Any,
    events: AsyncIterator[Any],
    base_url: str,
    route: dict[str, Any],
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
            # Open WebUI reads citations from a delta's `annotations`; the text they point into is what was streamed.
            delta = {"annotations": url_citations(event.text, sources, base_url)}
            yield _chunk(completion_id, model, delta, "stop", sources=sources, grounding=event.grounding, timings=event.timings,
                         session_id=session_id, message_id=message_id, route=route, **extra)  # fmt: skip
            break
    except StopAsyncIteration:
        pass
    except LLMUnavailable as exc:  # the server went away mid-answer: say so in the stream
        yield f"data: {json.dumps({'error': {'message': str(exc), 'type': 'llm_unavailable'}})}\n\n"
    yield "data: [DONE]\n\n"


async def _housekeeping(state: AppState, body: ChatCompletionRequest, kind: str) -> dict[str, Any] | StreamingResponse:
    """A plain, short completion of the client's own prompt: no retrieval, no session, masked like every answer."""
    llm = state.engine.llm
    if llm is None:
        raise HTTPException(503, "the language model is unavailable")
    messages = [ChatMessage(role=MessageRole(m.role), content=mask_secrets(m.text()).text)
                for m in body.messages if m.role in ("system", "user", "assistant")]  # fmt: skip
    limit = min(body.max_tokens or UTILITY_MAX_TOKENS, UTILITY_MAX_TOKENS)
    started = time.perf_counter()
    try:
        reply = await llm.achat(messages, max_tokens=limit)
    except Exception as exc:
        REQUESTS.labels("housekeeping", "llm_unavailable").inc()
        raise HTTPException(503, f"the language model is unavailable ({exc})") from exc
    text = mask_secrets(reply.message.content or "").text.strip()
    REQUESTS.labels("housekeeping", "ok").inc()
    completion_id, extra = (
        f"chatcmpl-{uuid.uuid4().hex}",
        {"housekeeping": kind, "timings": {"llm_s": round(time.perf_counter() - started, 3)}},
    )
    if body.stream:  # short enough to send whole: one delta, then the end
        chunks = [_chunk(completion_id, body.model, {"role": "assistant", "content": text}),
                  _chunk(completion_id, body.model, {}, "stop", **extra), "data: [DONE]\n\n"]  # fmt: skip
        return StreamingResponse(iter(chunks), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        **extra,
    }
