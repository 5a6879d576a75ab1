"""Clients that keep their own chats (Open WebUI, LibreChat) on the real embedded PostgreSQL, through the real app:
a forwarded chat id, or else the history the client sends back, maps one chat to one session; a regenerated answer
replaces the stored one; an edited question replaces the branch after it; housekeeping never opens a session.

The index is empty and there is no LLM: every answer is the knowledge base's refusal, which goes through the same
session handling as an answered question (the e2e tests drive that with the real model)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.routes.chat import CHAT_ID_HEADER
from assets.collections import CollectionSpec
from kb.access.keys import KeyStore
from query_engine.memory import SessionStore
from tests.conftest import no_llm_app_state

Q1, Q2, Q3 = "How do I reset consumer offsets on payments.events?", "And on the audit topic?", "Who owns the ledger?"


class Client:
    def __init__(self, http: TestClient, key: str) -> None:
        self.http, self.key = http, key

    def chat(self, messages: list[dict[str, str]], chat_id: str | None = None, **extra: Any) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.key}", **({CHAT_ID_HEADER: chat_id} if chat_id else {})}
        response = self.http.post(
            "/v1/chat/completions", headers=headers, json={"model": "default", "messages": messages, **extra}
        )
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture
def setup(
    database: str, tmp_path: Path, embedder: Any, sample_specs: list[CollectionSpec]
) -> Iterator[tuple[Client, SessionStore]]:
    keys = KeyStore(database)
    key = keys.create("ana", "viewer")[0]
    docs = [s for s in sample_specs if s.name == "technical_docs"]
    state = no_llm_app_state(database, tmp_path, embedder, docs, b"client-chats-test-audit-key-32by")
    try:
        with TestClient(create_app(state)) as http:
            yield Client(http, key), state.sessions
    finally:
        state.index.close()
        keys.close()
        state.sessions.engine.dispose()


def sessions_of(database: str, user: str = "ana") -> list[tuple[str, list[tuple[str, str]]]]:
    """The user's sessions, oldest first, each with its (role, content) messages in order."""
    with psycopg.connect(database) as conn:
        ids = [r[0] for r in conn.execute('SELECT id FROM kb_sessions WHERE "user" = %s ORDER BY created_at', (user,))]
        query = "SELECT role, content FROM kb_messages WHERE session_id = %s ORDER BY seq"
        return [(i, [(r[0], r[1]) for r in conn.execute(query, (i,))]) for i in ids]


def test_a_forwarded_chat_id_keeps_one_chat_in_one_session(setup: tuple[Client, SessionStore], database: str) -> None:
    client, _ = setup
    first = client.chat([{"role": "user", "content": Q1}], chat_id="owui-chat-1")
    answer = first["choices"][0]["message"]["content"]
    second = client.chat([{"role": "user", "content": Q1}, {"role": "assistant", "content": answer},
                          {"role": "user", "content": Q2}], chat_id="owui-chat-1")  # fmt: skip
    assert second["session_id"] == first["session_id"]
    other = client.chat([{"role": "user", "content": Q1}], chat_id="owui-chat-2")
    assert other["session_id"] != first["session_id"]
    stored = dict(sessions_of(database))
    assert [r for r, _ in stored[first["session_id"]]] == ["user", "assistant", "user", "assistant"]


def test_without_a_chat_id_the_history_sent_back_finds_the_session(setup: tuple[Client, SessionStore], database: str) -> None:
    client, _ = setup
    first = client.chat([{"role": "user", "content": Q1}])
    answer = first["choices"][0]["message"]["content"]
    # The client sends its own copy back (a system prompt of its own, whitespace of its rendering): still the same chat.
    second = client.chat([{"role": "system", "content": "You are helpful."}, {"role": "user", "content": Q1},
                          {"role": "assistant", "content": answer + "\n"}, {"role": "user", "content": Q2}])  # fmt: skip
    assert second["session_id"] == first["session_id"]
    assert len(sessions_of(database)) == 1


def test_a_regenerated_answer_replaces_the_stored_one(setup: tuple[Client, SessionStore], database: str) -> None:
    client, _ = setup
    first = client.chat([{"role": "user", "content": Q1}], chat_id="owui-regen")
    again = client.chat([{"role": "user", "content": Q1}], chat_id="owui-regen")  # Open WebUI's regenerate: same history
    assert again["session_id"] == first["session_id"]
    [(_, messages)] = sessions_of(database)
    assert [(r, c if r == "user" else "…") for r, c in messages] == [("user", Q1), ("assistant", "…")]
    # Deeper in the chat, over the history alone (no chat id): the last answer is replaced, the earlier ones stay.
    answer = again["choices"][0]["message"]["content"]
    history = [{"role": "user", "content": Q1}, {"role": "assistant", "content": answer}]
    client.chat([*history, {"role": "user", "content": Q2}])
    client.chat([*history, {"role": "user", "content": Q2}])
    [(_, messages)] = sessions_of(database)
    assert [r for r, _ in messages] == ["user", "assistant", "user", "assistant"]


def test_an_edited_question_replaces_the_branch_after_it(setup: tuple[Client, SessionStore], database: str) -> None:
    client, _ = setup
    first = client.chat([{"role": "user", "content": Q1}], chat_id="owui-edit")
    answer = first["choices"][0]["message"]["content"]
    client.chat([{"role": "user", "content": Q1}, {"role": "assistant", "content": answer},
                 {"role": "user", "content": Q2}], chat_id="owui-edit")  # fmt: skip
    client.chat(
        [{"role": "user", "content": Q1}, {"role": "assistant", "content": answer}, {"role": "user", "content": Q3}],
        chat_id="owui-edit",
    )  # the user edited the second question
    [(_, messages)] = sessions_of(database)
    assert [(r, c) for r, c in messages if r == "user"] == [("user", Q1), ("user", Q3)]
    assert len(messages) == 4


def test_a_chat_first_seen_with_history_stores_that_history(setup: tuple[Client, SessionStore], database: str) -> None:
    client, _ = setup
    reply = client.chat([{"role": "user", "content": Q1}, {"role": "assistant", "content": "Use --reset-offsets [1]."},
                         {"role": "user", "content": Q2}], chat_id="owui-older")  # fmt: skip
    [(session_id, messages)] = sessions_of(database)
    assert session_id == reply["session_id"]
    assert messages[:3] == [("user", Q1), ("assistant", "Use --reset-offsets [1]."), ("user", Q2)]


def test_a_named_session_is_appended_to_as_before(setup: tuple[Client, SessionStore], database: str) -> None:
    client, _ = setup
    first = client.chat([{"role": "user", "content": Q1}])
    client.chat([{"role": "user", "content": Q1}], session_id=first["session_id"])  # asking again on purpose
    [(_, messages)] = sessions_of(database)
    assert [r for r, _ in messages] == ["user", "assistant", "user", "assistant"]


def test_housekeeping_opens_no_session_and_the_utility_model_is_listed(setup: tuple[Client, SessionStore], database: str) -> None:
    client, _ = setup
    headers = {"Authorization": f"Bearer {client.key}"}
    models = {m["id"] for m in client.http.get("/v1/models", headers=headers).json()["data"]}
    assert "kb-utility" in models
    title = (
        "### Task:\n"
        "Generate a concise, 3-5 word title summarizing the chat history.\n"
        "### Output:\n"
        'JSON format: { "title": "…" }\n'
        "<chat_history>\n"
        "USER: hi\n"
        "</chat_history>"
    )
    for model in ("default", "kb-utility"):
        response = client.http.post("/v1/chat/completions", headers={**headers, CHAT_ID_HEADER: "owui-task"},
                                    json={"model": model, "messages": [{"role": "user", "content": title}]})  # fmt: skip
        assert response.status_code == 503 and "language model" in response.json()["detail"]  # no LLM here; never retrieval
    assert sessions_of(database) == []
