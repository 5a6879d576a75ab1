"""Conversation memory against the real PostgreSQL, schema from the Alembic migrations."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from query_engine.memory import RELEVANT_OLDER, WINDOW, RetentionPolicy, SessionStore, migrate


@pytest.fixture(scope="module")
def store(postgres_url: str) -> SessionStore:
    migrate(postgres_url)
    migrate(postgres_url)  # idempotent
    return SessionStore(postgres_url)


def test_messages_are_stored_in_order_and_exported(store: SessionStore) -> None:
    session_id = store.create("alice", "Kafka lag", "m")
    store.add(session_id, "user", "How do I fix consumer lag on payments.events?")
    store.add(
        session_id,
        "assistant",
        "Scale the consumer to 48 partitions [1].",
        [{"n": 1, "collection": "runbooks", "path": "kafka.md"}],
    )
    chat = store.get(session_id)
    assert chat is not None and [m["seq"] for m in chat["messages"]] == [1, 2]
    assert chat["messages"][1]["sources"][0]["path"] == "kafka.md"
    markdown = store.export(session_id, "md")
    assert markdown is not None and "Scale the consumer" in markdown and "runbooks/kafka.md" in markdown
    assert json.loads(store.export(session_id, "json") or "{}")["id"] == session_id
    assert session_id in {s["id"] for s in store.list("alice")}


def test_full_text_search_finds_messages_with_and_without_a_user(store: SessionStore) -> None:
    session_id = store.create("carol", "certs", "m")
    store.add(session_id, "user", "When does the acquirer certificate expire?")
    assert session_id in {r["session_id"] for r in store.search("acquirer certificate")}
    assert session_id in {r["session_id"] for r in store.search("certificate", user="carol")}
    assert store.search("certificate", user="nobody") == []


def test_context_keeps_the_window_and_relevant_older_messages(store: SessionStore) -> None:
    session_id = store.create("dave", "long", "m")
    store.add(session_id, "user", "The zebra cache flush command is zebractl purge.")
    for i in range(WINDOW + 5):
        store.add(session_id, "user" if i % 2 else "assistant", f"filler message number {i}")
    context = store.context(session_id, "how do I flush the zebra cache?")
    assert context.messages[0][1].startswith("The zebra cache flush")
    assert len(context.messages) <= WINDOW + RELEVANT_OLDER
    assert context.messages[-1][1] == f"filler message number {WINDOW + 4}"


def test_a_session_past_thirty_messages_asks_for_a_summary(store: SessionStore) -> None:
    session_id = store.create("erin", "summary", "m")
    for i in range(30):
        store.add(session_id, "user", f"message {i}")
    assert store.needs_summary(session_id) is None
    store.add(session_id, "user", "message 30")
    pending = store.needs_summary(session_id)
    assert pending is not None and len(pending) == 21
    store.save_summary(session_id, "They talked about numbers.", len(pending))
    assert store.needs_summary(session_id) is None
    assert store.context(session_id, "numbers").summary == "They talked about numbers."


def test_a_deleted_session_leaves_every_read_at_once_and_its_rows_after_the_grace(store: SessionStore) -> None:
    session_id = store.create("frank", "bye", "m")
    store.add(session_id, "user", "hello zanzibarquux")
    assert store.delete(session_id) is True
    assert store.get(session_id) is None and store.delete(session_id) is False
    assert store.owner(session_id) is None and not store.exists(session_id) and store.export(session_id, "json") is None
    assert session_id not in {s["id"] for s in store.list("frank")} and store.search("zanzibarquux") == []
    assert store.needs_summary(session_id) is None
    with pytest.raises(KeyError):
        store.add(session_id, "user", "too late")
    with pytest.raises(KeyError):
        store.context(session_id, "hello")
    assert store.stored(session_id)  # in its grace: the rows stay, so an operator can restore a mistaken delete
    policy = RetentionPolicy()
    in_grace = store.purge_deleted(policy, datetime.now(UTC) + timedelta(days=29))
    assert session_id not in in_grace.ids and store.stored(session_id)
    purged = store.purge_deleted(policy, datetime.now(UTC) + timedelta(days=31))
    assert session_id in purged.ids and purged.messages >= 1 and not store.stored(session_id)
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM kb_messages WHERE session_id = :id"), {"id": session_id}).scalar() == 0


def test_deleted_sessions_do_not_count_against_the_open_session_limit(store: SessionStore) -> None:
    first = store.create("gina", "one", "m", max_open=1)
    store.delete(first)
    second = store.create("gina", "two", "m", max_open=1)
    third = store.create("gina", "three", "m", max_open=1)
    assert {s["id"]: s["closed"] for s in store.list("gina")} == {second: True, third: False}
    assert store.restore(first) and store.owner(first) == ("gina", False)  # restored as it was
