"""The running platform over HTTP, as chat clients use it: the openai SDK and plain HTTP (the browser: test_web_client.py)."""

from __future__ import annotations

import json
import re
import time

import httpx
import openai
import pytest

from api.security import sign
from query_engine.memory import SessionStore
from query_engine.prompts import NOT_FOUND
from tests.e2e.conftest import WEBHOOK_SECRET, RunningPlatform

pytestmark = pytest.mark.e2e
QUESTION = "How do I roll back a bad gateway-core deploy?"


def client(platform: RunningPlatform, user: str = "e2e") -> openai.OpenAI:
    """The openai SDK with an API key of `user` (made with `kb keys create`), as chat clients connect."""
    # Generous: on two shared cores a long prompt can take minutes on a busy machine.
    return openai.OpenAI(base_url=f"{platform.api}/v1", api_key=platform.key_for(user), timeout=900, max_retries=0)


def assert_cited(text: str, sources: list[dict]) -> None:  # type: ignore[type-arg]
    markers = {int(n) for n in re.findall(r"\[(\d+)\]", text)}
    assert markers, text
    assert markers <= {s["n"] for s in sources}
    assert any(s["cited"] for s in sources)


def test_openai_sdk_gets_a_cited_answer_with_sources(platform: RunningPlatform) -> None:
    response = client(platform).chat.completions.create(model="default", messages=[{"role": "user", "content": QUESTION}])
    text = response.choices[0].message.content or ""
    sources = response.model_extra["sources"]
    assert "gateway-high-error-rate.md" in {s["path"] for s in sources}
    assert_cited(text, sources)
    assert any(word in text.lower() for word in ("rollout", "roll back", "rollback", "undo", "roll"))


def test_openai_sdk_streams_the_answer_and_ends_with_sources(platform: RunningPlatform) -> None:
    stream = client(platform).chat.completions.create(
        model="default",
        stream=True,
        messages=[{"role": "user", "content": "What is the retention of the payments.events topic?"}],
    )
    parts, last = [], None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
        last = chunk
    # Streamed sentence by sentence: grounding checks each sentence before it is sent (a sentence stating
    # something no source holds is left out; sentences before the first supported one wait for it), so an
    # answer of several sentences arrives in several pieces.
    text = "".join(parts)
    sentences = [x for x in re.split(r"(?<=[.!?])\s+", text.split("\n\nLeft out")[0].strip()) if x]
    assert len(sentences) >= 1 and (len(sentences) == 1 or len(parts) >= 2)
    assert last is not None and last.choices[0].finish_reason == "stop"
    sources = last.model_extra["sources"]
    assert {"kafka-topic-payments-events.yaml", "adr-0007-kafka-for-payment-events.md"} & {s["path"] for s in sources}
    assert_cited(text, sources)


def test_query_api_returns_answer_sources_and_stage_timings(platform: RunningPlatform) -> None:
    body = platform.http.post(
        f"{platform.api}/v1/query", json={"question": "Which namespace runs fraud-scoring?"}, timeout=300
    ).json()
    assert body["answer"] and body["sources"]
    assert {"embed_ms", "search_ms", "fuse_ms", "rerank_ms", "llm_first_token_ms", "total_ms"} <= set(body["timings"])
    top = body["sources"][0]
    assert top["url"].startswith("/v1/documents/")
    document = platform.http.get(f"{platform.api}{top['url']}", timeout=30)
    assert document.status_code == 200 and document.json()["chunks"]


def test_a_question_the_knowledge_base_cannot_answer_gets_a_refusal(platform: RunningPlatform) -> None:
    body = platform.http.post(
        f"{platform.api}/v1/query", json={"question": "Who won the 1998 football world cup final?"}, timeout=300
    ).json()
    assert body["answerable"] is False
    assert body["answer"] == "I could not find this in the knowledge base."


@pytest.mark.parametrize(
    "question",
    ["Какой срок хранения событий в топике payments.events?", "payments.events 主题中的事件保留多长时间?"],
    ids=["ru", "zh"],
)
def test_russian_and_chinese_questions_are_answered_from_english_documents(platform: RunningPlatform, question: str) -> None:
    body = platform.http.post(f"{platform.api}/v1/query", json={"question": question}, timeout=600).json()
    assert body["answerable"] is True, body
    english = {"kafka-topic-payments-events.yaml", "adr-0007-kafka-for-payment-events.md"}
    assert english & {s["path"] for s in body["sources"][:3]}, body["sources"]
    assert body["answer"] not in NOT_FOUND.values()


def test_an_off_topic_question_is_answered_without_citing_the_knowledge_base(platform: RunningPlatform) -> None:
    body = platform.http.post(f"{platform.api}/v1/query", json={"question": "What is the capital of France?"}, timeout=300).json()
    assert body["answerable"] is False
    assert not re.search(r"\[\d+\]", body["answer"])
    assert not any(s["cited"] for s in body["sources"])


def test_bad_requests_get_4xx_with_a_message(platform: RunningPlatform) -> None:
    api = platform.api
    with pytest.raises(openai.NotFoundError, match="unknown model"):
        client(platform).chat.completions.create(model="gpt-nope", messages=[{"role": "user", "content": "hi"}])
    malformed = platform.http.post(f"{api}/v1/chat/completions", json={"model": "default", "messages": "not a list"})
    assert malformed.status_code == 422 and "messages" in malformed.json()["error"]["message"]
    oversized = platform.http.post(
        f"{api}/v1/query", content=b"{" + b" " * 2_000_000 + b"}", headers={"content-type": "application/json"}
    )
    assert oversized.status_code == 413
    unknown = platform.http.post(
        f"{api}/v1/chat/completions",
        json={"model": "default", "session_id": "nope", "messages": [{"role": "user", "content": "x"}]},
    )
    assert unknown.status_code == 404 and "session" in unknown.json()["error"]["message"]
    assert platform.http.get(f"{api}/v1/sessions/does-not-exist").status_code == 404


def test_sessions_are_stored_searchable_and_exportable(platform: RunningPlatform) -> None:
    first = client(platform, "alice").chat.completions.create(model="default", messages=[{"role": "user", "content": QUESTION}])
    session_id = first.model_extra["session_id"]
    alice = platform.http_for("alice")
    chat = alice.get(f"{platform.api}/v1/sessions/{session_id}").json()
    assert [m["role"] for m in chat["messages"]] == ["user", "assistant"] and chat["user"] == "alice"
    found = alice.get(f"{platform.api}/v1/sessions/search", params={"q": "gateway-core deploy"}).json()["data"]
    assert session_id in {row["session_id"] for row in found}
    # Another user neither reads nor finds alice's conversation.
    assert platform.http_for("mallory").get(f"{platform.api}/v1/sessions/{session_id}").status_code == 404
    assert (
        not platform.http_for("mallory")
        .get(f"{platform.api}/v1/sessions/search", params={"q": "gateway-core deploy"})
        .json()["data"]
    )
    markdown = alice.get(f"{platform.api}/v1/sessions/{session_id}/export", params={"format": "md"}).text
    assert QUESTION in markdown and "gateway-high-error-rate.md" in markdown
    exported = json.loads(alice.get(f"{platform.api}/v1/sessions/{session_id}/export", params={"format": "json"}).text)
    assert exported["id"] == session_id
    assert alice.delete(f"{platform.api}/v1/sessions/{session_id}").status_code == 204
    assert alice.get(f"{platform.api}/v1/sessions/{session_id}").status_code == 404


def test_a_long_session_keeps_a_summary_and_stays_in_the_context_window(platform: RunningPlatform) -> None:
    store = SessionStore(platform.database_url)
    session_id = store.create("bob", "long conversation", "qwen2.5-coder-0.5b-instruct")
    for i in range(17):
        store.add(session_id, "user", f"Question {i}: what does the runbook say about step {i} of the Kafka lag procedure? " * 3)
        store.add(session_id, "assistant", f"Answer {i}: scale the consumer and check the group lag [1]. " * 4)
    response = client(platform, "bob").chat.completions.create(
        model="default",
        extra_body={"session_id": session_id},
        messages=[{"role": "user", "content": "How do I reset consumer offsets?"}],
    )
    assert response.choices[0].message.content
    chat = platform.http_for("bob").get(f"{platform.api}/v1/sessions/{session_id}").json()
    assert len(chat["messages"]) == 36
    assert chat["summary"], "a session past 30 messages keeps a summary"
    assert response.usage.prompt_tokens <= 4096 - 256  # the prompt left room for the answer in the 4096-token window


def _events(platform: RunningPlatform) -> int:
    import psycopg

    with psycopg.connect(platform.database_url) as conn:
        row = conn.execute("SELECT count(*) FROM kb_webhook_events").fetchone()
    return int(row[0]) if row else 0


def test_webhook_with_a_bad_signature_is_refused_and_queues_nothing(platform: RunningPlatform) -> None:
    body = json.dumps({"paths": ["x.md"]}).encode()
    before = _events(platform)
    response = httpx.post(f"{platform.api}/webhooks/incident", content=body, headers={"X-KB-Signature": "sha256=" + "0" * 64})
    assert response.status_code == 401
    assert httpx.post(f"{platform.api}/webhooks/incident", content=body).status_code == 401
    assert _events(platform) == before


def test_signed_webhook_makes_a_changed_document_answerable(platform: RunningPlatform) -> None:
    runbook = platform.knowledge_base / "runbooks" / "zebra-cache-flush.md"
    runbook.write_text(
        "---\nsystem: zebra-cache\n---\n# Runbook: Flush the zebra cache\n\n"
        "Run `zebractl purge --all --region eu-west` to flush the zebra cache, then wait for warm-up.\n"
    )
    question = {"question": "How do I flush the zebra cache?", "answer": False, "collections": ["runbooks"]}
    assert "zebra-cache-flush.md" not in {
        s["path"] for s in platform.http.post(f"{platform.api}/v1/query", json=question).json()["sources"]
    }
    body = json.dumps({"collection": "runbooks", "paths": ["zebra-cache-flush.md"]}).encode()
    response = httpx.post(
        f"{platform.api}/webhooks/incident", content=body, headers={"X-KB-Signature": sign(body, WEBHOOK_SECRET)}
    )
    assert response.status_code == 202 and response.json()["queued"]["runbooks"]["documents"] == ["zebra-cache-flush.md"]
    deadline = time.monotonic() + 300  # the sensor picks the event up and the daemon runs the reindex
    while time.monotonic() < deadline:
        sources = platform.http.post(f"{platform.api}/v1/query", json=question, timeout=60).json()["sources"]
        if sources and sources[0]["path"] == "zebra-cache-flush.md":
            break
        time.sleep(5)
    else:
        pytest.fail("the webhook's document never became retrievable")


def test_the_api_refuses_requests_without_a_key_and_the_first_admin_key_works(platform: RunningPlatform) -> None:
    assert httpx.post(f"{platform.api}/v1/query", json={"question": "retention?", "answer": False}).status_code == 401
    unsigned = openai.OpenAI(base_url=f"{platform.api}/v1", api_key="not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        unsigned.models.list()
    assert platform.http.get(f"{platform.api}/v1/auth/me").json()["roles"] == ["admin"]
    viewer = platform.key_for("e2e-viewer", role="viewer")
    me = httpx.get(f"{platform.api}/v1/auth/me", headers={"Authorization": f"Bearer {viewer}"}).json()
    assert me["collections"] == ["technical_docs"] and me["roles"] == ["viewer"]


def test_health_readiness_and_metrics(platform: RunningPlatform) -> None:
    assert platform.http.get(f"{platform.api}/healthz").json() == {"status": "ok"}
    ready = platform.http.get(f"{platform.api}/readyz", timeout=30).json()
    assert ready["checks"] == {"postgres": "ok", "index": "ok", "llm": "ok"}
    metrics = platform.http.get(f"{platform.api}/metrics").text
    assert 'kb_stage_duration_ms_bucket{le="100.0",stage="search"}' in metrics
