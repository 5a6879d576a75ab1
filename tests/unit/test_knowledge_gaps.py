"""The knowledge-gap report's pure parts: what counts as a gap and why, the per-language low-score threshold, masking,
clustering and the tables the Dagster UI shows."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pytest
from pydantic import ValidationError

from kb.settings import IndexSettings, PlatformSettings, PostgresSettings
from pipelines.backup import build_backup_defs
from pipelines.definitions import build_definitions
from pipelines.knowledge_gaps import (
    NO_SOURCE,
    AnswerRow,
    GapCluster,
    GapQuestion,
    KnowledgeGapsSettings,
    best_source,
    build_clusters,
    build_knowledge_gaps_defs,
    by_collection,
    by_reason,
    classify,
    cluster_labels,
    clusters_table,
    collections_table,
    gap_reasons,
    refused_text,
    source_items,
    write_report,
)
from pipelines.resources import EmbedderResource, EventQueueResource, IndexResource, StorageResource
from pipelines.retention import build_retention_defs
from query_engine.prompts import NOT_FOUND

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
THRESHOLDS = {"en": 0.45, "ru": 0.25, "zh": 0.25}


def source(n: int, collection: str, dense: float | None) -> dict[str, Any]:
    return {"n": n, "collection": collection, "path": f"{collection}/doc{n}.md", "section": None, "score": 1.0 - n / 10,
            "cited": n == 1, "metadata": {} if dense is None else {"dense_score": dense, "sparse_score": 3.2}}  # fmt: skip


def row(question: str, answer: str, items: list[dict[str, Any]], comments: tuple[str, ...] = (), down_votes: int = 0,
        voted_at: datetime | None = None, message_id: int = 1) -> AnswerRow:  # fmt: skip
    return AnswerRow(message_id, "alice", question, answer, {"items": items}, NOW - timedelta(days=2), list(comments),
                     down_votes, voted_at)  # fmt: skip


def gap(message_id: int, question: str, reasons: tuple[str, ...], collection: str, user: str = "alice", hours: int = 0,
        comments: tuple[str, ...] = ()) -> GapQuestion:  # fmt: skip
    return GapQuestion(message_id, user, question, "en", reasons, collection, 0.3, comments, NOW - timedelta(hours=hours))


@pytest.mark.parametrize("answer", [*NOT_FOUND.values(), NOT_FOUND["en"] + "\n\nLeft out (not in the sources): `./fix.sh`.",
                                    NOT_FOUND["zh"].rstrip("。"), "Partly: use the runbook [1]. " + NOT_FOUND["ru"]])  # fmt: skip
def test_every_not_found_sentence_reads_as_a_refusal(answer: str) -> None:
    assert refused_text(answer)


def test_an_answer_that_mentions_the_knowledge_base_is_no_refusal() -> None:
    assert not refused_text("The knowledge base says: scale the consumer group to 48 partitions [1].")


def test_odd_stored_sources_read_as_none() -> None:
    assert source_items({}) == [] and source_items(None) == [] and source_items({"items": "x"}) == []
    assert source_items({"items": [1, {"n": 1}]}) == [{"n": 1}]


def test_best_source_is_the_top_ranked_collection_and_the_best_dense_cosine() -> None:
    items = [source(2, "runbooks", 0.61), source(1, "incidents", 0.4), source(3, "k8s_configs", None)]
    assert best_source(items) == ("incidents", 0.61)
    assert best_source([source(1, "runbooks", None)]) == ("runbooks", None)  # found by BM25 alone: no cosine to judge
    assert best_source([]) == (NO_SOURCE, None)


def test_reasons_follow_the_answer_the_sources_and_the_votes() -> None:
    good = [source(1, "runbooks", 0.7)]
    weak = [source(1, "runbooks", 0.3)]
    assert gap_reasons("Scale it [1].", good, 0, 0.7, 0.45) == ()
    assert gap_reasons("Scale it.", [], 0, None, 0.45) == ("refused",)  # no source at all
    # The LLM refused although sources came back: a refusal, not also a low score.
    assert gap_reasons(NOT_FOUND["en"], weak, 0, 0.3, 0.45) == ("refused",)
    assert gap_reasons("Scale it [1].", weak, 0, 0.3, 0.45) == ("low_score",)
    assert gap_reasons("Scale it [1].", weak, 2, 0.3, 0.45) == ("down_voted", "low_score")
    assert gap_reasons("Scale it [1].", good, 1, 0.7, 0.45) == ("down_voted",)
    assert gap_reasons("Scale it [1].", [source(1, "runbooks", None)], 0, None, 0.45) == ()


def test_the_low_score_threshold_is_the_question_languages() -> None:
    """USE cosines (Russian, Chinese questions) run lower than MiniLM's (English): 0.3 is weak in English only."""
    sources = [source(1, "runbooks", 0.3)]
    english = classify(row("How do I reset the consumer offsets?", "Use the tool [1].", sources), THRESHOLDS)
    russian = classify(row("Как сбросить смещения группы потребителей?", "Используйте [1].", sources), THRESHOLDS)
    chinese = classify(row("如何重置消费者组的偏移量？", "使用工具[1]。", sources), THRESHOLDS)
    assert english is not None and english.reasons == ("low_score",) and english.best_score == 0.3
    assert russian is None and chinese is None
    # A language without a threshold of its own falls back to English's.
    assert classify(row("Как сбросить смещения?", "Да [1].", sources), {"en": 0.45}) is not None


def test_questions_and_comments_are_masked_and_last_seen_is_the_latest_vote() -> None:
    voted = NOW - timedelta(hours=3)
    found = classify(row("Why does login fail with password=Tr0ub4dor-Planted-77?", "Check the IdP [1].",
                         [source(1, "technical_docs", 0.8)], ("Wrong, and my token is ghp_abcdefghijklmnopqrstuvwxyz0123456789",
                                                              "", "   "), 1, voted), THRESHOLDS)  # fmt: skip
    assert found is not None and found.reasons == ("down_voted",) and found.collection == "technical_docs"
    assert "Tr0ub4dor" not in found.question and "[MASKED:" in found.question
    assert found.comments == ("Wrong, and my token is [MASKED:github-token]",)  # empty comments are dropped
    assert found.last_seen == voted


def test_clustering_joins_near_vectors_and_keeps_far_ones_apart() -> None:
    rng = np.random.default_rng(7)
    centres = np.eye(3, 16, dtype=np.float32)
    vectors = np.vstack([c + rng.normal(0, 0.05, (4, 16)).astype(np.float32) for c in centres])
    labels = cluster_labels(vectors, 0.5)
    assert len(set(labels.tolist())) == 3
    assert [len(set(labels[i : i + 4].tolist())) for i in (0, 4, 8)] == [1, 1, 1]
    assert cluster_labels(vectors[:1], 0.5).tolist() == [0] and cluster_labels(vectors[:0], 0.5).tolist() == []


def test_clusters_are_named_by_their_most_central_question_and_sorted_by_size() -> None:
    questions = [gap(1, "rotate the HSM key", ("refused",), NO_SOURCE),
                 gap(2, "HSM key rotation steps", ("refused",), "runbooks"),
                 gap(3, "how to rotate keys", ("refused",), NO_SOURCE, user="bob"),
                 gap(4, "Kafka topic of auths", ("low_score",), "k8s")]  # fmt: skip
    vectors = np.array([[1, 0.1, 0], [1, 0, 0], [1, -0.1, 0], [0, 0, 1]], dtype=np.float32)
    clusters = build_clusters(questions, vectors, np.array([0, 0, 0, 1]))
    assert [c.count for c in clusters] == [3, 1]
    assert clusters[0].label == "HSM key rotation steps"  # the middle one
    assert clusters[0].as_dict()["users"] == 2 and clusters[0].collections() == {NO_SOURCE: 2, "runbooks": 1}


def test_the_markdown_table_is_one_row_a_cluster_with_cells_escaped() -> None:
    clusters = [GapCluster("Why | does <script>x</script>\nfail?", [gap(1, "q", ("refused", "down_voted"), "runbooks",
                                                                           comments=("bad | answer",))]),
                GapCluster("second", [gap(2, "s", ("low_score",), "k8s")])]  # fmt: skip
    table = clusters_table(clusters, limit=1)
    rows = [line for line in table.splitlines() if line.startswith("| 1 ")]
    assert len(rows) == 1 and rows[0].count(" | ") == 7  # eight cells, none split by the pipe in the text
    assert "Why \\| does &lt;script>x&lt;/script> fail?" in rows[0] and "bad \\| answer" in rows[0]
    assert "refused 1, down_voted 1" in rows[0] or "down_voted 1, refused 1" in rows[0]
    assert "1 smaller cluster(s) more in the JSON report." in table
    assert clusters_table([]) == "No knowledge gaps in this window."


def test_counts_per_reason_and_per_collection() -> None:
    questions = [gap(1, "a", ("refused",), NO_SOURCE), gap(2, "b", ("down_voted", "low_score"), "runbooks"),
                 gap(3, "c", ("refused",), "runbooks")]  # fmt: skip
    assert by_reason(questions) == {"refused": 2, "down_voted": 1, "low_score": 1}
    counts = by_collection(questions)
    assert counts == {"runbooks": {"questions": 2, "refused": 1, "down_voted": 1, "low_score": 1},
                      NO_SOURCE: {"questions": 1, "refused": 1, "down_voted": 0, "low_score": 0}}  # fmt: skip
    assert "| runbooks | 2 | 1 | 1 | 1 |" in collections_table(counts)


def test_a_report_a_day_and_only_the_newest_are_kept(tmp_path: Path) -> None:
    for day in range(5):
        path = write_report(tmp_path, {"day": day}, NOW + timedelta(days=day), keep=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2026-12-03.json", "2026-12-04.json", "2026-12-05.json"]
    assert json.loads(path.read_text()) == {"day": 4}
    write_report(tmp_path, {"day": "again"}, NOW + timedelta(days=4, hours=3), keep=3)  # the same day: replaced
    assert json.loads(path.read_text()) == {"day": "again"} and len(list(tmp_path.iterdir())) == 3


def test_settings_come_from_the_environment_and_need_an_english_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="'en' threshold"):
        KnowledgeGapsSettings(low_score={"ru": 0.3})
    with pytest.raises(ValidationError):
        KnowledgeGapsSettings(window_days=0)
    monkeypatch.setenv("KB_GAPS_LOW_SCORE", '{"en": 0.5, "ru": 0.3}')
    monkeypatch.setenv("KB_GAPS_WINDOW_DAYS", "7")
    settings = KnowledgeGapsSettings()
    assert settings.low_score == {"en": 0.5, "ru": 0.3} and settings.window_days == 7
    monkeypatch.setenv("KB_GAPS_LOW_SCORE", '{"ru": 0.3}')
    with pytest.raises(ValidationError, match="'en' threshold"):
        KnowledgeGapsSettings()


def test_the_definitions_hold_the_asset_its_checks_and_a_running_weekly_schedule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://kb:s3cret@db.internal/kb")
    defs = build_knowledge_gaps_defs(PlatformSettings(data_dir=tmp_path), PostgresSettings(), KnowledgeGapsSettings())
    repo = defs.get_repository_def()
    [asset] = [a for a in repo.assets_defs_by_key.values() if a.key == dg.AssetKey("knowledge_gaps")]
    assert asset.group_names_by_key[asset.key] == "operations"
    checks = defs.resolve_job_def("knowledge_gaps_report").asset_layer.asset_graph.asset_check_keys  # the job runs the checks
    assert {(k.asset_key, k.name) for k in checks} == {
        (asset.key, "report_covers_every_question"), (asset.key, "report_has_no_secrets")}  # fmt: skip
    [schedule] = repo.schedule_defs
    assert (schedule.name, schedule.cron_schedule, schedule.default_status) == (
        "knowledge_gaps_weekly", "0 5 * * 1", dg.DefaultScheduleStatus.RUNNING)  # fmt: skip
    # The password stays in the environment: the resource's config names the variable.
    assert "s3cret" not in json.dumps(defs.resources["gaps"].model_dump(), default=str)


def test_the_definitions_merge_into_the_code_location(sample_specs, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Names must not collide with the collections', backup's or retention's (a job named like an asset's op does)."""
    platform, postgres = (
        PlatformSettings(data_dir=tmp_path),
        PostgresSettings.model_validate({"DATABASE_URL": "postgresql://x/kb"}),
    )
    resources = {
        "index": IndexResource(qdrant_path=str(tmp_path / "q")),
        "embedder": EmbedderResource(model_dir=str(tmp_path)),
        "storage": StorageResource(data_dir=str(tmp_path)),
        "events": EventQueueResource(database_url="postgresql://x/kb"),
    }
    merged = dg.Definitions.merge(
        build_definitions(sample_specs, resources),
        build_backup_defs(platform, postgres, IndexSettings()),
        build_retention_defs(platform, postgres),
        build_knowledge_gaps_defs(platform, postgres),
    )
    dg.Definitions.validate_loadable(merged)
    repo = merged.get_repository_def()
    assert repo.get_job("knowledge_gaps_report") and "knowledge_gaps_weekly" in {s.name for s in repo.schedule_defs}
