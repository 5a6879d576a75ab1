"""The knowledge-gap report on the real embedded PostgreSQL with the real multilingual encoder: conversations seeded
through SessionStore (and kb_feedback rows in SQL), the `knowledge_gaps_report` job run as the code location builds it, with
its clock set. Refused questions about one missing topic in English, Russian and Chinese share a cluster; a down-voted
answer shows its comment masked; a weakly sourced answer is listed; a good answer, a deleted session and an old
question are not; the checks pass, and the coverage check fails on a report that lost a question."""

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg

from kb.settings import PlatformSettings, PostgresSettings
from pipelines.knowledge_gaps import (
    NO_SOURCE,
    KnowledgeGapsSettings,
    build_knowledge_gaps_defs,
    knowledge_gaps,
    report_covers_every_question,
)
from query_engine.memory import SessionStore
from query_engine.prompts import NOT_FOUND

NOW = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
SECRET = "S3cr3t-Plant3d-9931"
TOKEN = "ghp_abcdefghijklmnopqrstuvwxyz0123456789"
HSM = {
    "alice": ("How do I rotate the HSM master key of the payment gateway?", NOT_FOUND["en"], []),
    # The LLM refused although sources came back, and the grounding check added its note.
    "bob": ("What is the procedure to rotate the payment gateway's HSM master key?",
            NOT_FOUND["en"] + "\n\nLeft out (not in the sources): `hsm-rotate.sh`.", [("runbooks", 0.52)]),
    "ivan": ("Как сменить мастер-ключ HSM в платёжном шлюзе?", NOT_FOUND["ru"], []),
    "olga": ("Как выполнить ротацию мастер-ключа HSM платёжного шлюза?", NOT_FOUND["ru"], []),
    "mei": ("如何轮换支付网关的HSM主密钥？", NOT_FOUND["zh"], []),
}  # fmt: skip
SETTLEMENT = "How do I restart the settlement batch after a failed run?"
KAFKA = f"Which Kafka topic carries the card authorization events? My token is {TOKEN}"
GRAFANA = "Who approves a new Grafana dashboard for the fraud team?"
ABSENT = {
    "good": "How do I scale the payments consumer group?",
    "good_ru": "Как перезапустить потребителя платежей после сбоя?",
    "deleted": "Where is the backup of the HSM master key kept?",
    "old": "How do I rotate the HSM master key in staging?",
}


def sources(found: list[tuple[str, float]]) -> list[dict[str, Any]]:
    """Sources as the API stores them (api/sources.py): the reranker's score is near 1 for the first whatever it says,
    the dense cosine sits in the metadata."""
    return [{"n": n, "collection": c, "path": f"{c}/doc{n}.md", "section": "Steps", "score": 1.1 - n / 10, "cited": True,
             "snippet": "…", "metadata": {"dense_score": dense, "sparse_score": 4.2, "lang": "en"},
             "url": f"/v1/documents/{c}/doc{n}.md"} for n, (c, dense) in enumerate(found, 1)]  # fmt: skip


def ask(store: SessionStore, url: str, user: str, question: str, answer: str, found: list[tuple[str, float]],
        at: datetime) -> int:  # fmt: skip
    """A session with one question and its answer at `at`; returns the answer's message id."""
    session_id = store.create(user, question[:80], "kb")
    store.add(session_id, "user", question)
    store.add(session_id, "assistant", answer, sources(found))
    with psycopg.connect(url) as conn:
        conn.execute("UPDATE kb_messages SET created_at = %s WHERE session_id = %s", (at, session_id))
        conn.execute("UPDATE kb_sessions SET created_at = %s, updated_at = %s WHERE id = %s", (at, at, session_id))
        row = conn.execute("SELECT id FROM kb_messages WHERE session_id = %s AND role = 'assistant'", (session_id,)).fetchone()
    assert row is not None
    return int(row[0])


def vote(url: str, message_id: int, user: str, rating: int, comment: str | None, at: datetime) -> None:
    with psycopg.connect(url) as conn:
        conn.execute('INSERT INTO kb_feedback (message_id, "user", rating, comment, created_at, updated_at) '
                     "VALUES (%s, %s, %s, %s, %s, %s)", (message_id, user, rating, comment, at, at))  # fmt: skip


def seed(store: SessionStore, url: str) -> dict[str, int]:
    """Every case the report must include or leave out; returns the answers' message ids by case."""
    ids = {
        user: ask(store, url, user, q, a, found, NOW - timedelta(days=1 + i))
        for i, (user, (q, a, found)) in enumerate(HSM.items())
    }
    ids["settlement"] = ask(store, url, "carol", SETTLEMENT, "Re-run settle.sh from the batch host [1].",
                            [("technical_docs", 0.71)], NOW - timedelta(days=6))  # fmt: skip
    vote(
        url,
        ids["settlement"],
        "carol",
        -1,
        f"Wrong: the batch needs the operator password={SECRET} first",
        NOW - timedelta(hours=5),
    )
    vote(url, ids["settlement"], "erin", 1, None, NOW - timedelta(hours=4))  # one up-vote does not cancel a down-vote
    # MiniLM's cosine 0.31 for an English question: under the English threshold. The question holds a pasted token.
    ids["kafka"] = ask(store, url, "dave", KAFKA, "It is payments.auth [1].", [("k8s_configs", 0.31), ("runbooks", 0.2)],
                       NOW - timedelta(days=4))  # fmt: skip
    # Answered 40 days ago, down-voted two days ago: the vote brings it into the window.
    ids["grafana"] = ask(store, url, "grace", GRAFANA, "The observability team approves dashboards [1].",
                         [("technical_docs", 0.8)], NOW - timedelta(days=40))  # fmt: skip
    vote(url, ids["grafana"], "grace", -1, "Outdated: the fraud team approves its own now", NOW - timedelta(days=2))
    # Not gaps: a well-sourced answer (up-voted), and a Russian one whose USE cosine 0.33 is fine on USE's scale.
    ids["good"] = ask(store, url, "erin", ABSENT["good"], "Scale the group to 48 partitions [1].", [("runbooks", 0.78)],
                      NOW - timedelta(days=2))  # fmt: skip
    vote(url, ids["good"], "erin", 1, "Spot on", NOW - timedelta(days=1))
    ids["good_ru"] = ask(store, url, "ivan", ABSENT["good_ru"], "Перезапустите группу потребителей [1].",
                         [("runbooks", 0.33)], NOW - timedelta(days=2))  # fmt: skip
    # Gaps, but not reportable: the user deleted the session, or it was asked before the window.
    ids["deleted"] = ask(store, url, "frank", ABSENT["deleted"], NOT_FOUND["en"], [], NOW - timedelta(days=3))
    deleted_session = store.list(user="frank")[0]["id"]
    assert store.delete(deleted_session)
    ids["old"] = ask(store, url, "alice", ABSENT["old"], NOT_FOUND["en"], [], NOW - timedelta(days=45))
    return ids


def gaps_defs(database: str, data_dir: Path) -> dg.Definitions:
    postgres = PostgresSettings.model_validate({"DATABASE_URL": database})
    return build_knowledge_gaps_defs(PlatformSettings(data_dir=data_dir), postgres, KnowledgeGapsSettings())


def run_gaps(defs: dg.Definitions, now: datetime, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    """The `knowledge_gaps_report` job (asset and checks) with the resource's clock at `now`."""
    bound = defs.resources["gaps"]
    moved = type(bound)(**{**bound.model_dump(), "now": now.isoformat()})
    result = defs.resolve_job_def("knowledge_gaps_report").execute_in_process(resources={"gaps": moved}, instance=instance)
    assert result.success
    return result


def materialized(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    [event] = result.asset_materializations_for_node("knowledge_gaps")
    return {name: value.value for name, value in event.metadata.items()}


def test_refused_and_down_voted_questions_are_clustered_and_listed(store: SessionStore, database: str, tmp_path: Path) -> None:
    ids = seed(store, database)
    result = run_gaps(gaps_defs(database, tmp_path), NOW, dg.DagsterInstance.ephemeral())
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"report_covers_every_question": True, "report_has_no_secrets": True}
    meta = materialized(result)

    assert (meta["questions"], meta["clusters"], meta["left_out"]) == (8, 4, 0)
    assert meta["by_reason"] == {"refused": 5, "down_voted": 2, "low_score": 1}
    assert (meta["refused"], meta["down_voted"], meta["low_score"]) == (5, 2, 1)
    assert meta["by_collection"] == {
        NO_SOURCE: {"questions": 4, "refused": 4, "down_voted": 0, "low_score": 0},
        "technical_docs": {"questions": 2, "refused": 0, "down_voted": 2, "low_score": 0},
        "k8s_configs": {"questions": 1, "refused": 0, "down_voted": 0, "low_score": 1},
        "runbooks": {"questions": 1, "refused": 1, "down_voted": 0, "low_score": 0},
    }
    assert "| technical_docs | 2 | 0 | 2 | 0 |" in meta["collections_table"]

    # The table: the HSM cluster first (five questions from five users, three languages), then one row per other gap.
    table = meta["clusters_table"]
    rows = [line for line in table.splitlines() if line[:3] in {f"| {n}" for n in range(1, 10)}]
    assert len(rows) == 4
    hsm_row = rows[0].split(" | ")
    assert hsm_row[1] in {q for q, _, _ in HSM.values()} and hsm_row[2:5] == ["5", "5", "refused 5"]
    assert hsm_row[5] == f"{NO_SOURCE} 4, runbooks 1"
    listed = "\n".join(rows[1:])
    assert SETTLEMENT in listed and GRAFANA in listed and "Which Kafka topic carries the card authorization events?" in listed
    assert "password=[MASKED:credential] first" in listed and "Outdated: the fraud team approves its own now" in listed
    assert "low_score 1" in listed and "k8s_configs 1" in listed

    # The JSON report holds the same, question by question; nothing left out shows up, no secret survives.
    path = Path(str(meta["report"]))
    assert path == tmp_path / "reports" / "knowledge_gaps" / "2026-11-30.json"
    text = path.read_text(encoding="utf-8")
    content = json.loads(text)
    clusters = content["clusters"]
    assert {q["message_id"] for q in clusters[0]["questions"]} == {ids[user] for user in HSM}
    assert {q["language"] for q in clusters[0]["questions"]} == {"en", "ru", "zh"}
    reported = {q["message_id"]: q for c in clusters for q in c["questions"]}
    assert set(reported) == {*(ids[u] for u in HSM), ids["settlement"], ids["kafka"], ids["grafana"]}
    assert reported[ids["kafka"]]["best_score"] == 0.31 and reported[ids["kafka"]]["reasons"] == ["low_score"]
    assert reported[ids["bob"]]["collection"] == "runbooks"
    assert "[MASKED:github-token]" in reported[ids["kafka"]]["question"]
    for absent in ABSENT.values():
        assert absent not in text and absent not in table
    assert SECRET not in text + table and TOKEN not in text + table
    assert "frank" not in text and "alice" not in text  # who asked stays out of the report
    assert (content["since"], content["until"]) == ((NOW - timedelta(days=30)).isoformat(), NOW.isoformat())


def test_the_coverage_check_fails_on_a_report_that_lost_a_question(store: SessionStore, database: str, tmp_path: Path) -> None:
    seed(store, database)
    defs = gaps_defs(database, tmp_path)
    instance = dg.DagsterInstance.ephemeral()
    meta = materialized(run_gaps(defs, NOW, instance))
    path = Path(str(meta["report"]))
    content = json.loads(path.read_text(encoding="utf-8"))
    content["clusters"][0]["questions"].pop()
    content["clusters"][0]["count"] -= 1
    path.write_text(json.dumps(content), encoding="utf-8")

    check = dg.materialize([knowledge_gaps, report_covers_every_question], instance=instance,
                           resources={"gaps": defs.resources["gaps"]},
                           selection=dg.AssetSelection.checks(report_covers_every_question))  # fmt: skip
    [evaluation] = check.get_asset_check_evaluations()
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.WARN
    assert {k: v.value for k, v in evaluation.metadata.items()}["in_clusters"] == 7

    # A window after every seeded question: an empty report, and the check passes on it.
    later = NOW + timedelta(days=100)
    empty = run_gaps(defs, later, instance)
    assert {e.check_name: e.passed for e in empty.get_asset_check_evaluations()} == {
        "report_covers_every_question": True, "report_has_no_secrets": True}  # fmt: skip
    meta = materialized(empty)
    assert (meta["questions"], meta["clusters"]) == (0, 0)
    assert meta["clusters_table"] == "No knowledge gaps in this window."
