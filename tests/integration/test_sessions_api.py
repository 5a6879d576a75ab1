"""The session routes the web client uses, on the real embedded PostgreSQL through the real app (sign-in on,
roles.yaml): rename (PATCH), export as JSON and Markdown, full-text search naming each hit's conversation, and the
4xx answers with a message for bad input and for sessions that are not the caller's."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from assets.collections import CollectionSpec
from kb.access.keys import KeyStore
from query_engine.memory import SessionStore
from tests.conftest import no_llm_app_state

SOURCES = [{"n": 1, "collection": "runbooks", "path": "kafka-lag.md", "section": "Scaling", "score": 0.81, "cited": True}]
TOKEN = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"


@dataclass
class Platform:
    client: TestClient
    store: SessionStore
    database: str
    keys: dict[str, str]

    def auth(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[user]}"}


@pytest.fixture
def platform(database: str, tmp_path: Path, embedder: Any, sample_specs: list[CollectionSpec]) -> Iterator[Platform]:
    """The app with sign-in on: ana and bob are viewers, audrey an auditor (reads others' sessions)."""
    keys = KeyStore(database)
    tokens = {user: keys.create(user, role)[0] for user, role in (("ana", "viewer"), ("bob", "viewer"), ("audrey", "auditor"))}
    docs = [s for s in sample_specs if s.name == "technical_docs"]  # a viewer reads it; nothing is indexed in it
    state = no_llm_app_state(database, tmp_path, embedder, docs, b"sessions-test-audit-key-32-bytes")
    store, index = state.sessions, state.index
    try:
        with TestClient(create_app(state)) as client:
            yield Platform(client, store, database, tokens)
    finally:
        index.close()
        keys.close()
        store.engine.dispose()


def conversation(store: SessionStore, user: str, question: str, answer: str) -> str:
    session_id = store.create(user, question, "default")
    store.add(session_id, "user", question)
    store.add(session_id, "assistant", answer, SOURCES)
    return session_id


def audit_actions(database: str, action: str) -> list[tuple[str, str, dict[str, Any]]]:
    with psycopg.connect(database) as conn:
        rows = conn.execute("SELECT actor, target, detail FROM kb_audit WHERE action = %s ORDER BY seq", (action,)).fetchall()
    return [(r[0], r[1], r[2]) for r in rows]


def error(response: Any) -> str:
    message: str = response.json()["error"]["message"]
    return message


def test_the_owner_renames_a_session_without_moving_it_in_the_listing(platform: Platform) -> None:
    older = conversation(platform.store, "ana", "How do I fix consumer lag?", "Scale the consumers [1].")
    newer = conversation(platform.store, "ana", "When does the certificate expire?", "In March [1].")
    before = platform.client.get("/v1/sessions", headers=platform.auth("ana")).json()["data"]
    assert [s["id"] for s in before] == [newer, older]

    renamed = platform.client.patch(f"/v1/sessions/{older}", json={"title": "  Kafka   lag\n on payments  "},
                                    headers=platform.auth("ana"))  # fmt: skip
    assert renamed.status_code == 200, renamed.text
    body = renamed.json()
    assert body["id"] == older and body["title"] == "Kafka lag on payments" and "messages" not in body
    after = platform.client.get("/v1/sessions", headers=platform.auth("ana")).json()["data"]
    # A new name is not activity: same order, same idle clock.
    assert [s["id"] for s in after] == [newer, older]
    assert after[1]["updated_at"] == before[1]["updated_at"] and after[1]["title"] == "Kafka lag on payments"
    assert platform.client.get(f"/v1/sessions/{older}", headers=platform.auth("ana")).json()["title"] == "Kafka lag on payments"
    assert audit_actions(platform.database, "session_rename") == [("ana", older, {"title_chars": 21})]

    # Shown in every listing and export, a title is masked like a question; 200 characters fit the column.
    masked = platform.client.patch(f"/v1/sessions/{older}", json={"title": f"token {TOKEN}"}, headers=platform.auth("ana"))
    assert masked.status_code == 200 and TOKEN not in masked.json()["title"] and "[MASKED:" in masked.json()["title"]
    longest = platform.client.patch(f"/v1/sessions/{older}", json={"title": "x" * 200}, headers=platform.auth("ana"))
    assert longest.status_code == 200 and longest.json()["title"] == "x" * 200


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"title": "   \n\t "}, 400, "must not be blank"),
        ({"title": ""}, 422, "title"),
        ({"title": "x" * 201}, 422, "title"),
        ({}, 422, "title"),
        ({"title": "fine", "user": "bob"}, 422, "user"),
        ({"title": 42}, 422, "title"),
    ],
)
def test_a_bad_rename_is_answered_4xx_with_a_message(platform: Platform, body: dict[str, Any], status: int, says: str) -> None:
    session_id = conversation(platform.store, "ana", "How do I fix consumer lag?", "Scale the consumers [1].")
    response = platform.client.patch(f"/v1/sessions/{session_id}", json=body, headers=platform.auth("ana"))
    assert response.status_code == status, response.text
    assert says in error(response)
    assert platform.store.get(session_id)["title"] == "How do I fix consumer lag?"  # type: ignore[index]


def test_only_the_owner_renames_and_others_get_404_like_for_a_missing_session(platform: Platform) -> None:
    session_id = conversation(platform.store, "ana", "How do I fix consumer lag?", "Scale the consumers [1].")
    for user in ("bob", "audrey"):  # an auditor reads others' sessions but does not change them
        response = platform.client.patch(f"/v1/sessions/{session_id}", json={"title": "mine now"}, headers=platform.auth(user))
        assert response.status_code == 404 and session_id in error(response)
    missing = platform.client.patch("/v1/sessions/no-such-session", json={"title": "x"}, headers=platform.auth("ana"))
    assert missing.status_code == 404 and "unknown session" in error(missing)
    assert platform.client.patch(f"/v1/sessions/{session_id}", json={"title": "x"}).status_code == 401
    assert platform.client.delete(f"/v1/sessions/{session_id}", headers=platform.auth("ana")).status_code == 204
    gone = platform.client.patch(f"/v1/sessions/{session_id}", json={"title": "x"}, headers=platform.auth("ana"))
    assert gone.status_code == 404
    assert platform.store.rename(session_id, "x") is None
    assert audit_actions(platform.database, "session_rename") == []


def test_a_session_exports_as_json_and_markdown_and_a_bad_format_is_422(platform: Platform) -> None:
    session_id = conversation(platform.store, "ana", "How do I fix consumer lag?", "Scale the consumers to 48 [1].")
    as_json = platform.client.get(f"/v1/sessions/{session_id}/export?format=json", headers=platform.auth("ana"))
    assert as_json.status_code == 200 and as_json.headers["content-type"].startswith("application/json")
    assert as_json.headers["content-disposition"] == f'attachment; filename="{session_id}.json"'
    exported = json.loads(as_json.text)
    assert exported["id"] == session_id and exported["title"] == "How do I fix consumer lag?"
    assert [(m["role"], m["content"]) for m in exported["messages"]] == [
        ("user", "How do I fix consumer lag?"), ("assistant", "Scale the consumers to 48 [1].")]  # fmt: skip
    assert exported["messages"][1]["sources"] == SOURCES and isinstance(exported["messages"][1]["id"], int)

    as_md = platform.client.get(f"/v1/sessions/{session_id}/export", headers=platform.auth("ana"))
    assert as_md.status_code == 200 and as_md.headers["content-type"].startswith("text/markdown")
    assert as_md.text.startswith("# How do I fix consumer lag?") and "- [1] runbooks/kafka-lag.md § Scaling" in as_md.text

    bad = platform.client.get(f"/v1/sessions/{session_id}/export?format=pdf", headers=platform.auth("ana"))
    assert bad.status_code == 422 and "format" in error(bad)
    assert platform.client.get(f"/v1/sessions/{session_id}/export?format=json", headers=platform.auth("bob")).status_code == 404


def test_search_hits_name_their_conversation_and_only_the_callers(platform: Platform) -> None:
    mine = conversation(platform.store, "ana", "Where is the zanzibar runbook?", "In runbooks [1].")
    platform.store.rename(mine, "Zanzibar questions")
    theirs = conversation(platform.store, "bob", "Zanzibar deploy steps?", "See the runbook [1].")
    hits = platform.client.get("/v1/sessions/search", params={"q": "zanzibar"}, headers=platform.auth("ana")).json()["data"]
    assert {h["session_id"] for h in hits} == {mine} and {h["title"] for h in hits} == {"Zanzibar questions"}
    assert all("<b>" in h["snippet"].lower() for h in hits)  # ts_headline marks the match
    bobs = platform.client.get("/v1/sessions/search", params={"q": "zanzibar"}, headers=platform.auth("bob")).json()["data"]
    assert {(h["session_id"], h["title"]) for h in bobs} == {(theirs, "Zanzibar deploy steps?")}
    empty = platform.client.get("/v1/sessions/search", params={"q": ""}, headers=platform.auth("ana"))
    assert empty.status_code == 422 and "q" in error(empty)
    assert platform.store.titles([]) == {} and platform.store.titles([mine, "nope"]) == {mine: "Zanzibar questions"}
