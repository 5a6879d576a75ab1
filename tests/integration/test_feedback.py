"""Feedback and usage analytics on the real embedded PostgreSQL, through the real app (sign-in on, roles.yaml):
votes are stored, replaced, masked and taken back; only answers the caller may read can be rated; the export
(JSON lines and CSV) is for admins and auditors and masks what it sends; a deleted session takes its feedback along;
chat answers carry the id to rate them by; and the Prometheus counters and the usage collector count all of it.

The index is empty and there is no LLM: every chat answer is the knowledge base's refusal, which needs neither (the
answered path goes through the same `_finish`, which the e2e tests drive with the real model)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from api.main import create_app
from api.metrics import REGISTRY, UsageCollector, answer_outcome, register_usage_collector
from api.routes import feedback as feedback_routes
from assets.collections import CollectionSpec
from kb.access.keys import KeyStore
from query_engine.engine import Answer
from query_engine.feedback import FeedbackStore
from query_engine.memory import RetentionPolicy, SessionStore
from tests.conftest import free_port, no_llm_app_state

SECRET = "password=Hunter2-very-secret-42"
TOKEN = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
KAFKA = [
    ("user", "How do I fix consumer lag on payments.events?"),
    ("assistant", "Scale the payments consumer group to 48 partitions [1]."),
    ("user", "It still lags after the rebalance."),
    ("assistant", "Reset the lagging group's offsets with kafka-consumer-groups --reset-offsets [2]."),
]
SOURCES = [
    {"n": 1, "collection": "runbooks", "path": "kafka-lag.md", "section": "Scaling", "score": 0.81, "cited": True},
    {"n": 2, "collection": "incidents", "path": "2024-03-lag.md", "section": None, "score": 0.42, "cited": False},
]


@dataclass
class Platform:
    client: TestClient
    store: SessionStore
    database: str
    keys: dict[str, str]  # user → bearer header value

    def auth(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[user]}"}


@pytest.fixture
def platform(database: str, tmp_path: Path, embedder: Any, sample_specs: list[CollectionSpec]) -> Iterator[Platform]:
    """The app with sign-in on and roles.yaml: ana and bob are viewers, ada an admin, audrey an auditor."""
    keys = KeyStore(database)
    tokens = {user: keys.create(user, role)[0] for user, role in
              (("ana", "viewer"), ("bob", "viewer"), ("ada", "admin"), ("audrey", "auditor"))}  # fmt: skip
    docs = [s for s in sample_specs if s.name == "technical_docs"]  # a viewer reads it; nothing is indexed in it
    state = no_llm_app_state(database, tmp_path, embedder, docs, b"feedback-test-audit-key-32-bytes")
    store, index = state.sessions, state.index
    app = create_app(state)
    if not any(getattr(r, "path", "").startswith("/v1/messages/") for r in app.routes):  # until api/main.py includes it
        app.include_router(feedback_routes.router)
    try:
        with TestClient(app) as client:
            yield Platform(client, store, database, tokens)
    finally:
        index.close()
        keys.close()
        store.engine.dispose()


def conversation(store: SessionStore, user: str, turns: list[tuple[str, str]] = KAFKA) -> tuple[str, list[int]]:
    """A stored session and its messages' ids, in order (answers with two sources)."""
    session_id = store.create(user, turns[0][1], "default")
    for role, content in turns:
        store.add(session_id, role, content, SOURCES if role == "assistant" else None)
    chat = store.get(session_id)
    assert chat is not None
    return session_id, [m["id"] for m in chat["messages"]]


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def audit_rows(database: str, prefix: str = "feedback_") -> list[tuple[str, str, str, dict[str, Any]]]:
    with psycopg.connect(database) as conn:
        rows = conn.execute("SELECT actor, action, target, detail FROM kb_audit WHERE action LIKE %s ORDER BY seq",
                            (prefix + "%",)).fetchall()  # fmt: skip
    return [(r[0], r[1], r[2], r[3]) for r in rows]


def stored_feedback(database: str) -> list[tuple[int, str, int, str | None]]:
    with psycopg.connect(database) as conn:
        rows = conn.execute('SELECT message_id, "user", rating, comment FROM kb_feedback ORDER BY id').fetchall()
    return [(r[0], r[1], r[2], r[3]) for r in rows]


def test_a_vote_is_stored_replaced_by_a_second_masked_and_taken_back(platform: Platform) -> None:
    session_id, ids = conversation(platform.store, "ana")
    answer = ids[1]
    up, down = counter("kb_feedback_total", rating="up"), counter("kb_feedback_total", rating="down")
    first = platform.client.post(f"/v1/messages/{answer}/feedback", json={"rating": "up"}, headers=platform.auth("ana"))
    assert first.status_code == 200, first.text
    assert first.json() | {"created_at": None, "updated_at": None, "id": None} == {
        "id": None, "message_id": answer, "session_id": session_id, "user": "ana", "rating": "up", "comment": None,
        "created_at": None, "updated_at": None}  # fmt: skip
    changed = platform.client.post(f"/v1/messages/{answer}/feedback", headers=platform.auth("ana"),
                                   json={"rating": "down", "comment": f"Wrong: my {SECRET} and {TOKEN} do not work"})  # fmt: skip
    assert changed.status_code == 200, changed.text
    vote = changed.json()
    assert vote["id"] == first.json()["id"] and vote["rating"] == "down" and vote["created_at"] == first.json()["created_at"]
    assert vote["updated_at"] >= first.json()["updated_at"]
    assert "Hunter2" not in vote["comment"] and TOKEN not in vote["comment"] and "[MASKED:" in vote["comment"]
    assert vote["comment"].startswith("Wrong: my ")
    # One row per user and answer, masked in the table itself.
    assert stored_feedback(platform.database) == [(answer, "ana", -1, vote["comment"])]
    assert counter("kb_feedback_total", rating="up") == up + 1 and counter("kb_feedback_total", rating="down") == down + 1
    mine = platform.client.get(f"/v1/sessions/{session_id}/feedback", headers=platform.auth("ana"))
    assert mine.status_code == 200 and [v["message_id"] for v in mine.json()["data"]] == [answer]
    # The session's messages carry the ids a client rates by.
    chat = platform.client.get(f"/v1/sessions/{session_id}", headers=platform.auth("ana")).json()
    assert [(m["id"], m["role"]) for m in chat["messages"]] == list(zip(ids, [r for r, _ in KAFKA], strict=True))

    assert platform.client.delete(f"/v1/messages/{answer}/feedback", headers=platform.auth("ana")).status_code == 204
    again = platform.client.delete(f"/v1/messages/{answer}/feedback", headers=platform.auth("ana"))
    assert again.status_code == 404 and "no feedback" in again.json()["error"]["message"]
    assert stored_feedback(platform.database) == []
    audited = audit_rows(platform.database)
    assert [(a, action, t) for a, action, t, _ in audited] == [("ana", "feedback_give", str(answer)),
                                                               ("ana", "feedback_give", str(answer)),
                                                               ("ana", "feedback_remove", str(answer))]  # fmt: skip
    assert audited[1][3] == {"session_id": session_id, "rating": "down", "replaced": True, "comment_chars": len(vote["comment"])}
    assert "Hunter2" not in json.dumps(audited)


def test_only_answers_the_caller_may_read_can_be_rated(platform: Platform) -> None:
    session_id, ids = conversation(platform.store, "ana")
    client, answer = platform.client, ids[1]

    def rate(message: int | str, user: str, body: dict[str, Any] | None = None) -> Any:
        return client.post(
            f"/v1/messages/{message}/feedback", json={"rating": "up"} if body is None else body, headers=platform.auth(user)
        )

    others = rate(answer, "bob")
    assert others.status_code == 404 and session_id not in others.text, "another user's answer is unknown, its session unnamed"
    assert client.delete(f"/v1/messages/{answer}/feedback", headers=platform.auth("bob")).status_code == 404
    assert client.get(f"/v1/sessions/{session_id}/feedback", headers=platform.auth("bob")).status_code == 404
    assert rate(2_000_000, "ana").status_code == 404
    assert client.post(f"/v1/messages/{answer}/feedback", json={"rating": "up"}).status_code == 401
    for bad in (0, -1, 2**40, "abc"):
        assert rate(bad, "ana").status_code == 422, bad
    for body in ({"rating": "meh"}, {"rating": 1}, {}, {"rating": "up", "comment": "x" * 2_001}):
        refused = rate(answer, "ana", body)
        assert refused.status_code == 422 and refused.json()["error"]["type"] == "invalid_request_error", body
    question = rate(ids[0], "ana")
    assert question.status_code == 422 and "user message" in question.json()["error"]["message"]
    # An auditor reads anyone's sessions, so may rate their answers: a vote of their own, next to the owner's.
    assert rate(answer, "ana", {"rating": "down"}).status_code == 200
    reviewed = rate(answer, "audrey", {"rating": "up", "comment": "fine"})
    assert reviewed.status_code == 200 and reviewed.json()["user"] == "audrey"
    assert sorted(stored_feedback(platform.database)) == [(answer, "ana", -1, None), (answer, "audrey", 1, "fine")]
    owners = client.get(f"/v1/sessions/{session_id}/feedback", headers=platform.auth("ana")).json()["data"]
    assert [v["user"] for v in owners] == ["ana"], "the owner sees their own vote, not the reviewer's"
    everyone = client.get(f"/v1/sessions/{session_id}/feedback", headers=platform.auth("audrey")).json()["data"]
    assert sorted(v["user"] for v in everyone) == ["ana", "audrey"]
    assert nothing_audited_as_given_by("bob", platform.database)


def nothing_audited_as_given_by(user: str, database: str) -> bool:
    return all(actor != user for actor, *_ in audit_rows(database))


def test_the_export_is_for_admins_and_auditors_streams_jsonl_and_csv_and_masks(platform: Platform) -> None:
    anas, ana_ids = conversation(platform.store, "ana")
    # An answer stored before a masking rule knew its secret: the export masks it on the way out.
    bobs, bob_ids = conversation(platform.store, "bob", [("user", "Which token does the deploy job use?"),
                                                         ("assistant", f"It uses {TOKEN} from the vault.")])  # fmt: skip
    client = platform.client
    votes = [(ana_ids[3], "ana", {"rating": "down", "comment": f"Outdated; {SECRET}"}),
             (ana_ids[1], "ana", {"rating": "up"}),
             (bob_ids[1], "bob", {"rating": "down", "comment": "=HYPERLINK(\"http://evil.example\",\"x\")"})]  # fmt: skip
    for message, user, body in votes:
        assert client.post(f"/v1/messages/{message}/feedback", json=body, headers=platform.auth(user)).status_code == 200

    for user in ("ana", "bob"):
        refused = client.get("/v1/feedback/export", headers=platform.auth(user))
        assert refused.status_code == 403 and "admin" in refused.json()["error"]["message"]
    exported = client.get("/v1/feedback/export", params={"format": "jsonl"}, headers=platform.auth("ada"))
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("application/x-ndjson")
    rows = [json.loads(line) for line in exported.text.splitlines()]
    assert [(r["message_id"], r["user"], r["rating"]) for r in rows] == [(m, u, b["rating"]) for m, u, b in votes]
    lag = rows[0]
    assert lag["session_id"] == anas and lag["session_user"] == "ana" and lag["question"] == KAFKA[2][1]
    assert lag["answer"] == KAFKA[3][1] and lag["collections"] == ["runbooks", "incidents"] and lag["top_score"] == 0.81
    assert lag["paths"] == ["runbooks/kafka-lag.md", "incidents/2024-03-lag.md"] and lag["cited_paths"] == [
        "runbooks/kafka-lag.md"
    ]
    assert rows[1]["question"] == KAFKA[0][1] and rows[2]["session_id"] == bobs
    assert "Hunter2" not in exported.text and TOKEN not in exported.text and "[MASKED:" in rows[2]["answer"]

    by_auditor = client.get("/v1/feedback/export", params={"format": "csv"}, headers=platform.auth("audrey"))
    assert by_auditor.status_code == 200 and by_auditor.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(by_auditor.text)))
    assert [int(r["message_id"]) for r in table] == [r["message_id"] for r in rows]
    assert table[0]["paths"] == "runbooks/kafka-lag.md; incidents/2024-03-lag.md" and table[0]["question"] == KAFKA[2][1]
    assert table[2]["comment"].startswith("'=HYPERLINK("), "a formula is text in a spreadsheet"
    assert "Hunter2" not in by_auditor.text and TOKEN not in by_auditor.text

    # since inclusive, until exclusive, on when each vote was last given; a time without a zone is UTC.
    last = datetime.fromisoformat(rows[-1]["updated_at"])
    later = client.get("/v1/feedback/export", params={"since": (last + timedelta(seconds=1)).isoformat()},
                       headers=platform.auth("ada"))  # fmt: skip
    assert later.status_code == 200 and later.text == ""
    header_only = client.get(
        "/v1/feedback/export",
        headers=platform.auth("ada"),
        params={"format": "csv", "until": datetime.fromisoformat(rows[0]["updated_at"]).isoformat()},
    )
    assert header_only.text.splitlines() == [",".join(feedback_routes.EXPORT_COLUMNS)]
    naive = (last + timedelta(seconds=1)).astimezone(UTC).replace(tzinfo=None).isoformat()
    assert len(client.get("/v1/feedback/export", params={"until": naive}, headers=platform.auth("ada")).text.splitlines()) == 3
    backwards = client.get(
        "/v1/feedback/export", params={"since": naive, "until": rows[0]["updated_at"]}, headers=platform.auth("ada")
    )
    assert backwards.status_code == 400
    edges = {"since": "0001-01-01T00:00:00+01:00", "until": "9999-12-31T23:59:59-01:00"}  # no overflow shifting them to UTC
    assert len(client.get("/v1/feedback/export", params=edges, headers=platform.auth("ada")).text.splitlines()) == 3
    for bad in ({"format": "xml"}, {"since": "yesterday"}):
        assert client.get("/v1/feedback/export", params=bad, headers=platform.auth("ada")).status_code == 422, bad
    exports = [(actor, target) for actor, action, target, _ in audit_rows(platform.database) if action == "feedback_export"]
    assert exports[:2] == [("ada", "jsonl"), ("audrey", "csv")]


def test_a_deleted_session_takes_its_feedback_along(platform: Platform) -> None:
    store, client = platform.store, platform.client
    deleted, deleted_ids = conversation(store, "ana")
    erased, erased_ids = conversation(store, "bob")
    kept, kept_ids = conversation(store, "ana")
    for message, user in ((deleted_ids[1], "ana"), (erased_ids[1], "bob"), (kept_ids[1], "ana")):
        assert (
            client.post(f"/v1/messages/{message}/feedback", json={"rating": "down"}, headers=platform.auth(user)).status_code
            == 200
        )
    assert client.delete(f"/v1/sessions/{deleted}", headers=platform.auth("ana")).status_code == 204
    # Gone from every read at once: rating, the session's votes, the export.
    assert (
        client.post(f"/v1/messages/{deleted_ids[1]}/feedback", json={"rating": "up"}, headers=platform.auth("ana")).status_code
        == 404
    )
    exported = client.get("/v1/feedback/export", headers=platform.auth("ada")).text.splitlines()
    assert sorted(json.loads(line)["session_id"] for line in exported) == sorted([erased, kept])
    # The purge after the grace and a user's erasure delete the rows (ON DELETE CASCADE from the message).
    assert store.purge_deleted(RetentionPolicy(), datetime.now(UTC) + timedelta(days=31)).ids == [deleted]
    assert store.erase_user("bob")["sessions"] == 1
    assert stored_feedback(platform.database) == [(kept_ids[1], "ana", -1, None)]
    assert FeedbackStore(store.engine).counts() == {"up": 0, "down": 1}


def test_chat_answers_carry_their_message_id_and_are_counted_as_usage(platform: Platform) -> None:
    client, auth = platform.client, platform.auth("ana")
    refused = counter("kb_answer_duration_ms_count", endpoint="chat", outcome="refused")
    created = counter("kb_sessions_created_total")
    question = {"model": "default", "messages": [{"role": "user", "content": "What is the capital of Atlantis?"}]}
    plain = client.post("/v1/chat/completions", json=question, headers=auth)
    assert plain.status_code == 200, plain.text
    body = plain.json()
    chat = client.get(f"/v1/sessions/{body['session_id']}", headers=auth).json()
    assert [m["role"] for m in chat["messages"]] == ["user", "assistant"]
    assert body["message_id"] == chat["messages"][1]["id"] and body["sources"] == []
    with client.stream("POST", "/v1/chat/completions", json={**question, "stream": True, "session_id": body["session_id"]},
                       headers=auth) as streamed:  # fmt: skip
        events = [json.loads(line[6:]) for line in streamed.iter_lines() if line.startswith("data: {")]
    final = events[-1]
    assert final["choices"][0]["finish_reason"] == "stop" and final["session_id"] == body["session_id"]
    chat = client.get(f"/v1/sessions/{body['session_id']}", headers=auth).json()
    assert final["message_id"] == chat["messages"][3]["id"] != body["message_id"]
    assert counter("kb_answer_duration_ms_count", endpoint="chat", outcome="refused") == refused + 2
    assert counter("kb_sessions_created_total") == created + 1
    # A refusal is the answer a knowledge-gap report wants rated.
    assert client.post(f"/v1/messages/{final['message_id']}/feedback", json={"rating": "down"}, headers=auth).status_code == 200

    # Usage from PostgreSQL: one more user active a week ago, with a vote given then.
    old, old_ids = conversation(platform.store, "olga")
    FeedbackStore(platform.store.engine).give(old_ids[1], "olga", 1)
    with psycopg.connect(platform.database) as conn:
        conn.execute("UPDATE kb_sessions SET updated_at = now() - interval '3 days' WHERE id = %s", (old,))
        conn.execute("UPDATE kb_feedback SET created_at = now() - interval '3 days' WHERE message_id = %s", (old_ids[1],))
    registry = CollectorRegistry()
    collectors = [register_usage_collector(platform.database, registry, ttl_s=3_600)]
    try:
        value = registry.get_sample_value
        assert value("kb_active_users", {"window": "1d"}) == 1 and value("kb_active_users", {"window": "7d"}) == 2
        assert value("kb_active_users", {"window": "30d"}) == 2
        assert value("kb_sessions_active", {"window": "1d"}) == 1 and value("kb_sessions_active", {"window": "7d"}) == 2
        assert value("kb_messages_per_session_count", {"window": "1d"}) == 1
        assert value("kb_messages_per_session_sum", {"window": "1d"}) == 4
        assert value("kb_messages_per_session_sum", {"window": "7d"}) == 4 + len(KAFKA)
        assert value("kb_messages_per_session", {"window": "7d", "quantile": "0.5"}) == 4
        assert value("kb_feedback_votes", {"rating": "down", "window": "1d"}) == 1
        assert value("kb_feedback_votes", {"rating": "up", "window": "1d"}) == 0
        assert value("kb_feedback_votes", {"rating": "up", "window": "7d"}) == 1
        # Read once per TTL: a new conversation shows after it, not at the next scrape.
        conversation(platform.store, "zoe")
        assert value("kb_active_users", {"window": "1d"}) == 1
        collectors.append(register_usage_collector(platform.database, registry, ttl_s=0))  # replaces the first
        assert value("kb_active_users", {"window": "1d"}) == 2
    finally:
        for collector in collectors:
            collector.close()


def test_an_answer_is_refused_when_it_skipped_the_llm_or_grounding_left_nothing() -> None:
    timings = {"total_ms": 900.0, "llm_first_token_ms": 300.0}
    assert answer_outcome(Answer("Scale the group [1].", [], timings, "en")) == "answered"  # an agent's, from tools only
    assert answer_outcome(Answer("I could not find this in the knowledge base.", [], {"total_ms": 40.0}, "en")) == "refused"
    grounded_away = Answer("I could not find this in the knowledge base.", [], timings, "en",
                           grounding={"refused_after_grounding": True})  # fmt: skip
    assert answer_outcome(grounded_away) == "refused"


def test_the_usage_gauges_are_left_out_while_the_database_is_down() -> None:
    collector = UsageCollector(f"postgresql://kb@127.0.0.1:{free_port()}/kb")
    try:
        assert list(collector.collect()) == []
        assert {m.name for m in collector.describe()} == {"kb_active_users", "kb_sessions_active", "kb_messages_per_session",
                                                          "kb_feedback_votes"}  # fmt: skip
    finally:
        collector.close()
