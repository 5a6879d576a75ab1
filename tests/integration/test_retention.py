"""Retention on the real embedded PostgreSQL: the Dagster `retention` job, run with its clock moved forward,
summarizes, archives and purges as the policy says, purges year-old audit rows with the chain still verifying, and
its asset checks pass; summaries come from the real LLM when it answers and are extractive when it does not; a user's
erasure through the API removes their data at once and nobody else's. Each test gets a database of its own on the
session's server, so its audit chain and sessions are its own."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.state import AppState
from assets.index import PgVectorIndex
from kb.access.audit import AuditLog, audit_key
from kb.access.keys import KeyStore
from kb.access.roles import load_roles
from kb.models import MODELS, provision
from kb.platform import Platform
from kb.settings import (
    PROJECT_ROOT,
    APISettings,
    AuthSettings,
    IndexSettings,
    LLMSettings,
    PlatformSettings,
    PostgresSettings,
)
from pipelines.retention import RetentionSettings, build_retention_defs
from query_engine.engine import AnswerEngine
from query_engine.feedback import FeedbackStore
from query_engine.memory import SessionStore
from query_engine.rerank import EvidenceReranker
from tests.conftest import free_port

DAY = timedelta(days=1)
LLM_MODEL = "qwen2.5-coder-0.5b-instruct"
KAFKA = [
    ("user", "How do I fix consumer lag on payments.events? The alert fired at 03:00."),
    ("assistant", "Scale the payments consumer group to 48 partitions; the lag drops once the group rebalances [1]."),
    ("user", "The consumer group still lags after the rebalance."),
    ("assistant", "Reset the lagging consumer group's offsets with kafka-consumer-groups --reset-offsets [2]."),
]


def retention_defs(database: str, data_dir: Path, llm_url: str) -> dg.Definitions:
    """The definitions as the code location builds them, on this test's database, data dir and LLM server."""
    llm = LLMSettings(backend="openai", base_url=llm_url, model=LLM_MODEL, context_window=2048, timeout_s=120)
    return build_retention_defs(PlatformSettings(data_dir=data_dir), PostgresSettings.model_validate({"DATABASE_URL": database}),
                                llm, RetentionSettings(), AuthSettings(audit_key=None))  # fmt: skip


def run_retention(defs: dg.Definitions, now: datetime) -> dg.ExecuteInProcessResult:
    """The `retention` job with its resource's clock set to `now`; every check must pass."""
    bound = defs.resources["retention"]
    moved = type(bound)(**{**bound.model_dump(), "now": now.isoformat()})
    result = defs.resolve_job_def("retention").execute_in_process(
        resources={"retention": moved}, instance=dg.DagsterInstance.ephemeral()
    )
    assert result.success
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == dict.fromkeys(
        ["idle_sessions_have_summaries", "archive_holds_only_idle_sessions", "archive_matches_deleted_rows",
         "purge_spared_sessions_in_grace", "audit_chain_verifies"], True
    ), checks  # fmt: skip
    return result


def metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, Any]:
    [event] = result.asset_materializations_for_node(asset)
    return {name: value.value for name, value in event.metadata.items()}


def conversation(store: SessionStore, user: str, title: str, messages: list[tuple[str, str]]) -> str:
    session_id = store.create(user, title, "m")
    for role, content in messages:
        store.add(session_id, role, content)
    return session_id


def message_rows(url: str, session_id: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM kb_messages WHERE session_id = %s", (session_id,)).fetchone()
    return int(row[0]) if row else 0


def audit_actions(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT action FROM kb_audit ORDER BY seq").fetchall()]


def add_tool_call(url: str, user: str, at: datetime) -> None:
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO kb_tool_calls (at, user_name, connector, tool, arguments, outcome, ms, cached, output_chars)"
            " VALUES (%s, %s, 'docs', 'search', '{}', 'ok', 1.0, false, 10)",
            (at, user),
        )


def tool_calls(url: str, user: str | None = None) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM kb_tool_calls WHERE %s::text IS NULL OR user_name = %s", (user, user)).fetchone()
    return int(row[0]) if row else 0


def test_the_retention_job_summarizes_archives_and_purges_as_the_clock_moves(
    database: str, store: SessionStore, tmp_path: Path
) -> None:
    start = datetime.now(UTC)
    idle = conversation(store, "alice", "Kafka lag", KAFKA)
    # A long conversation the chat has already summarized in part: the job's summary builds on that one.
    long = conversation(store, "bob", "Certificates", [("user", f"Question {i} about the acquirer certificate renewal.")
                                                         for i in range(31)])  # fmt: skip
    store.save_summary(long, "Bob renews the acquirer certificate every year.", 21)
    deleted = conversation(store, "alice", "Oops", [("user", "Delete me please: card rotation notes.")])
    assert store.delete(deleted) and store.stored(deleted)
    key = audit_key(tmp_path, None)  # the data dir's key, which the job reads too
    with AuditLog(database, key, clock=lambda: start - 400 * DAY, pool_size=1) as year_old:
        for i in range(3):
            year_old.record("alice", "sign_in", target=f"10.0.0.{i}")
    with AuditLog(database, key, pool_size=1) as recent:
        recent.record("alice", "session_delete", target=deleted)
    add_tool_call(database, "alice", start - 400 * DAY)
    add_tool_call(database, "alice", start)
    defs = retention_defs(database, tmp_path, f"http://127.0.0.1:{free_port()}/v1")  # nothing listens: extractive

    # Day 29: nothing is idle long enough, the deleted session is in its grace; the year-old audit rows go.
    first = run_retention(defs, start + 29 * DAY)
    assert {s["id"]: s["summary_method"] for s in store.list(limit=10)} == {idle: None, long: "llm"}
    assert store.get(deleted) is None and store.stored(deleted) and message_rows(database, deleted) == 1
    assert metadata(first, "retention_audit") == {"now": (start + 29 * DAY).isoformat(), "audit_rows_purged": 3,
                                                  "tool_calls_purged": 1}  # fmt: skip
    assert audit_actions(database)[:2] == ["session_delete", "audit.purge"] and tool_calls(database) == 1

    # Day 31: both idle sessions are summarized (extractive: the LLM is down), messages kept; the deleted one is purged.
    second = run_retention(defs, start + 31 * DAY)
    assert metadata(second, "retention_summaries")["llm"] == "unreachable"
    assert metadata(second, "retention_summaries")["summarized_extractive"] == 2
    chat = store.get(idle)
    assert chat is not None and chat["summary_method"] == "extractive" and len(chat["messages"]) == len(KAFKA)
    assert chat["summary"].startswith("Asked: How do I fix consumer lag on payments.events?")
    assert chat["updated_at"] < start + DAY  # summarizing did not move the idle clock
    summarized = store.get(long)
    assert summarized is not None and summarized["summary"].startswith("Bob renews the acquirer certificate every year.\n")
    assert len(summarized["messages"]) == 31 and store.needs_summary(long) is None
    assert not store.stored(deleted) and message_rows(database, deleted) == 0
    assert metadata(second, "retention_purge")["purged_sessions"] == 1

    # Day 91: the idle sessions move to the archive, whole, and leave every listing and search.
    third = run_retention(defs, start + 91 * DAY)
    assert metadata(third, "retention_archive")["archived_sessions"] == 2
    assert metadata(third, "retention_archive")["archived_messages"] == len(KAFKA) + 31
    assert store.get(idle) is None and store.list(limit=10) == [] and store.search("consumer lag") == []
    assert message_rows(database, idle) == 0
    [archived] = store.archived(user="alice", run_id=third.run_id)
    assert archived["id"] == idle and [(m["role"], m["content"]) for m in archived["messages"]] == KAFKA
    assert archived["summary_method"] == "extractive" and archived["message_count"] == len(KAFKA)
    assert [s["id"] for s in store.archived()] == [idle, long]  # least recently active first
    actions = audit_actions(database)
    assert {"retention.purge", "retention.archive"} <= set(actions) and actions.count("audit.purge") == 1
    with AuditLog(database, key, pool_size=1) as log:
        assert log.verify().ok

    # Day 92: nothing left to do, and a run that does nothing still passes its checks.
    fourth = run_retention(defs, start + 92 * DAY)
    assert metadata(fourth, "retention_archive")["archived_sessions"] == 0
    assert metadata(fourth, "retention_purge")["purged_sessions"] == 0


def test_a_restored_delete_is_a_session_again_and_a_summary_never_overwrites_a_newer_turn(
    database: str, store: SessionStore, tmp_path: Path
) -> None:
    start = datetime.now(UTC)
    restored = conversation(store, "carol", "Restored", KAFKA[:2])
    assert store.delete(restored) and store.get(restored) is None and store.search("partitions", user="carol") == []
    defs = retention_defs(database, tmp_path, f"http://127.0.0.1:{free_port()}/v1")
    run_retention(defs, start + 25 * DAY)
    assert store.restore(restored) and not store.restore(restored)  # an operator undoes the delete within its grace
    run_retention(defs, start + 31 * DAY)  # no longer deleted: summarized like any idle session, not purged
    chat = store.get(restored)
    assert chat is not None and chat["summary_method"] == "extractive"
    # A turn that lands while the job summarizes wins: the summary is not saved over it, and the idle clock restarts.
    busy = conversation(store, "carol", "Busy", KAFKA[:2])
    [pending] = [p for p in store.pending_summaries(RetentionSettings().policy(), start + 31 * DAY, redo_extractive=False,
                                                    limit=10) if p.session_id == busy]  # fmt: skip
    store.add(busy, "user", "And one more question.")
    assert store.save_retention_summary(pending, "stale", "extractive", start + 31 * DAY) is False
    assert store.get(busy)["summary"] is None  # type: ignore[index]
    run_retention(defs, start + 91 * DAY)
    assert [a["id"] for a in store.archived(user="carol")] == [restored, busy]


@pytest.fixture(scope="module")
def llm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The embedded llama.cpp server with the 0.5B model, as `kb up` starts it."""
    runtime = Platform(PlatformSettings(data_dir=tmp_path_factory.mktemp("retention-llm")), PostgresSettings(), IndexSettings())
    try:
        model_path = provision(MODELS[LLM_MODEL], PlatformSettings().data_dir / "models")
        url = runtime.start_llm(model_path, LLM_MODEL, free_port(), 2048, 2, tmp_path_factory.mktemp("llm-logs"))
        runtime.wait_for(f"{url}/models", "the LLM server", timeout=300)
        yield url
    finally:
        runtime.stop()


def test_summaries_come_from_the_llm_once_it_answers_and_replace_extractive_ones(
    database: str, store: SessionStore, tmp_path: Path, llm: str
) -> None:
    start = datetime.now(UTC)
    session_id = conversation(store, "dave", "Kafka lag", KAFKA)
    down = run_retention(retention_defs(database, tmp_path, f"http://127.0.0.1:{free_port()}/v1"), start + 31 * DAY)
    assert metadata(down, "retention_summaries")["summarized_extractive"] == 1
    extractive = store.get(session_id)
    assert extractive is not None and extractive["summary_method"] == "extractive"
    up = run_retention(retention_defs(database, tmp_path, llm), start + 32 * DAY)
    assert metadata(up, "retention_summaries") | {"now": None} == {"now": None, "llm": "reachable", "summarized_llm": 1,
                                                                   "summarized_extractive": 0, "skipped_changed": 0}  # fmt: skip
    chat = store.get(session_id)
    assert chat is not None and chat["summary_method"] == "llm" and len(chat["messages"]) == len(KAFKA)
    assert chat["summary"] and chat["summary"] != extractive["summary"] and not chat["summary"].startswith("Asked:")


def test_a_users_erasure_removes_their_data_at_once_and_nobody_elses(
    database: str, store: SessionStore, tmp_path: Path, embedder: Any
) -> None:
    keys = KeyStore(database)
    erin_key, _ = keys.create("erin", "viewer")
    olga_key, _ = keys.create("olga", "viewer")
    admin_key, _ = keys.create("ada", "admin")
    erin_login, _ = keys.create("erin", "", kind="session", expires_in=DAY)
    erins = conversation(store, "erin", "Mine", KAFKA)
    gone_in_grace = conversation(store, "erin", "Deleted", KAFKA[:1])
    store.delete(gone_in_grace)
    olgas = conversation(store, "olga", "Hers", KAFKA)
    old = [conversation(store, who, "Old", KAFKA[:2]) for who in ("erin", "olga")]
    with psycopg.connect(database) as conn:  # last active 100 days ago
        conn.execute("UPDATE kb_sessions SET updated_at = updated_at - interval '100 days' WHERE id = ANY(%s)", (old,))
    assert store.archive_idle(RetentionSettings().policy(), datetime.now(UTC), run_id=None).ids == old
    add_tool_call(database, "erin", datetime.now(UTC))
    add_tool_call(database, "olga", datetime.now(UTC))
    # A vote of erin's on an answer in olga's session (as an auditor could give): it goes with erin's data.
    votes = FeedbackStore(store.engine)
    olgas_answer = next(m["id"] for m in store.get(olgas)["messages"] if m["role"] == "assistant")
    votes.give(olgas_answer, "erin", -1, "wrong retention")

    index = PgVectorIndex(database)
    engine = AnswerEngine(index, embedder, [], EvidenceReranker(), None)
    state = AppState(PlatformSettings(data_dir=tmp_path), APISettings(), LLMSettings(), [], index, engine, store, database,
                     f"http://127.0.0.1:{free_port()}/v1", auth=AuthSettings(mode="on"),
                     roles=load_roles(PROJECT_ROOT / "roles.yaml"), audit_key=b"retention-test-audit-key-32bytes")  # fmt: skip
    try:
        with TestClient(create_app(state)) as client:
            assert client.delete("/v1/me/data").status_code == 401
            assert client.get("/v1/auth/me", headers={"Authorization": f"Bearer {erin_login}"}).status_code == 200
            erased = client.delete("/v1/me/data", headers={"Authorization": f"Bearer {erin_key}"})
            assert erased.status_code == 200, erased.text
            report = erased.json()
            assert report == {"user": "erin", "sessions": 2, "messages": len(KAFKA) + 1, "archived_sessions": 1,
                              "tool_calls": 1, "feedback": 1, "session_tokens_revoked": 1, "api_keys_revoked": 0,
                              "audit_seq": report["audit_seq"]}  # fmt: skip
            assert client.get(f"/v1/sessions/{erins}", headers={"Authorization": f"Bearer {olga_key}"}).status_code == 404
            assert client.get("/v1/sessions", headers={"Authorization": f"Bearer {erin_key}"}).json()["data"] == []
            assert client.get("/v1/auth/me", headers={"Authorization": f"Bearer {erin_login}"}).status_code == 401
            hers = client.get(f"/v1/sessions/{olgas}", headers={"Authorization": f"Bearer {olga_key}"})
            assert hers.status_code == 200 and len(hers.json()["messages"]) == len(KAFKA)
            assert not votes.for_session(olgas)
            # Not an admin: another user's data is out of reach; the admin's erasure revokes API keys too.
            assert client.delete("/v1/admin/users/olga/data", headers={"Authorization": f"Bearer {erin_key}"}).status_code == 403
            by_admin = client.delete("/v1/admin/users/olga/data", headers={"Authorization": f"Bearer {admin_key}"})
            assert by_admin.status_code == 200 and by_admin.json()["api_keys_revoked"] == 1
            assert by_admin.json()["sessions"] == 1 and by_admin.json()["archived_sessions"] == 1
            assert client.get("/v1/sessions", headers={"Authorization": f"Bearer {olga_key}"}).status_code == 401
            too_long = client.delete(f"/v1/admin/users/{'x' * 201}/data", headers={"Authorization": f"Bearer {admin_key}"})
            assert too_long.status_code == 422
        # With sign-in off every caller is the local operator: there is no "me" to erase, and the admin route works.
        local = AppState(PlatformSettings(data_dir=tmp_path), APISettings(), LLMSettings(), [], index, engine, store, database,
                         state.llm_base_url, auth=AuthSettings(mode="off"), audit_key=state.audit_key)  # fmt: skip
        with TestClient(create_app(local)) as client:
            refused = client.delete("/v1/me/data")
            assert refused.status_code == 400 and "/v1/admin/users/" in refused.json()["error"]["message"]
            assert client.delete("/v1/admin/users/nobody/data").json()["sessions"] == 0
    finally:
        index.close()
        keys.close()
    assert not store.stored(erins) and not store.stored(gone_in_grace) and store.archived(user="erin") == []
    assert tool_calls(database, "erin") == 0 and tool_calls(database, "olga") == 0
    with psycopg.connect(database) as conn:
        rows = conn.execute("SELECT seq, actor, action, target, detail FROM kb_audit WHERE target IN ('erin', 'olga') "
                            "ORDER BY seq").fetchall()  # fmt: skip
    assert [(r[1], r[2], r[3]) for r in rows] == [("erin", "user_data_erase", "erin"), ("ada", "admin.user_data_erase", "olga")]
    assert rows[0][0] == report["audit_seq"] and rows[0][4]["sessions"] == 2
