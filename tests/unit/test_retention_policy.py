"""The retention policy's stages at their boundaries, its settings, and the summaries written without and with an LLM."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from pipelines.retention import RetentionResource, RetentionSettings
from query_engine.memory import RetentionPolicy, extractive_summary, fold_summary

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


@pytest.mark.parametrize(
    ("idle", "stage"),
    [(0 * DAY, "keep"), (30 * DAY - timedelta(seconds=1), "keep"), (30 * DAY, "summarize"), (90 * DAY, "summarize"),
     (90 * DAY + timedelta(seconds=1), "archive"), (400 * DAY, "archive")],
)  # fmt: skip
def test_idle_sessions_are_kept_then_summarized_then_archived(idle: timedelta, stage: str) -> None:
    assert RetentionPolicy().stage(NOW - idle, None, NOW) == stage


@pytest.mark.parametrize(
    ("since_delete", "stage"),
    [(0 * DAY, "grace"), (29 * DAY, "grace"), (30 * DAY, "grace"), (30 * DAY + timedelta(seconds=1), "purge")],
)
def test_a_deleted_session_is_purged_only_after_the_grace_whatever_its_idle_time(since_delete: timedelta, stage: str) -> None:
    # Deleted long after its last message: the deletion, not the idle time, decides (a deleted session is never archived).
    assert RetentionPolicy().stage(NOW - 200 * DAY, NOW - since_delete, NOW) == stage


def test_the_policy_cutoffs_follow_the_configured_days() -> None:
    policy = RetentionSettings(summarize_after_days=7, archive_after_days=14, deletion_grace_days=1, audit_days=30).policy()
    assert policy.summarize_before(NOW) == NOW - 7 * DAY
    assert policy.archive_before(NOW) == NOW - 14 * DAY
    assert policy.purge_before(NOW) == NOW - DAY
    assert policy.audit_for == 30 * DAY


def test_settings_come_from_the_environment_and_refuse_an_empty_summary_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KB_RETENTION_DELETION_GRACE_DAYS", "7")
    assert RetentionSettings().policy().deletion_grace == 7 * DAY
    monkeypatch.setenv("KB_RETENTION_ARCHIVE_AFTER_DAYS", "20")  # before the 30-day summary
    with pytest.raises(ValidationError, match="summarized before they are archived"):
        RetentionSettings()
    with pytest.raises(ValidationError):
        RetentionSettings(archive_after_days=0)


def test_the_job_clock_is_the_configured_time_and_refuses_one_without_a_timezone() -> None:
    resource = RetentionResource(database_url="postgresql://unused", data_dir="/nonexistent", now="2026-06-01T14:00:00+02:00")
    assert resource.clock() == NOW
    with pytest.raises(ValueError, match="timezone"):
        RetentionResource(database_url="postgresql://unused", data_dir="/nonexistent", now="2026-06-01T12:00:00").clock()
    assert abs(RetentionResource(database_url="postgresql://unused", data_dir="/x").clock() - datetime.now(UTC)) < DAY


CONVERSATION = [
    ("user", "How do I fix consumer lag on payments.events? The lag alert fired at 03:00."),
    ("assistant", "Scale the payments consumer group to 48 partitions. Consumer lag drops once the group rebalances."),
    ("user", "The consumer group still shows lag after the rebalance."),
    ("assistant", "Check the consumer group offsets with kafka-consumer-groups. Reset the lagging consumer offsets if stuck."),
    ("user", "Thanks, that worked."),
]


def test_an_extractive_summary_leads_with_the_question_and_keeps_what_the_conversation_repeats() -> None:
    summary = extractive_summary(None, CONVERSATION, max_words=40)
    assert summary.startswith("Asked: How do I fix consumer lag on payments.events?")
    assert len(summary.split()) <= 40
    assert "consumer group" in summary.split("Key points:")[1]
    assert "Thanks, that worked." not in summary  # nothing the conversation is about
    assert extractive_summary(None, CONVERSATION, max_words=40) == summary  # deterministic


def test_an_extractive_summary_keeps_the_earlier_summary_first_and_handles_empty_input() -> None:
    summary = extractive_summary("They scaled the consumer group.", CONVERSATION[2:])
    assert summary.startswith("They scaled the consumer group.\nAsked: The consumer group still shows lag")
    assert extractive_summary("earlier", []) == "earlier"
    assert extractive_summary(None, [("user", "   ")]) == ""
    assert extractive_summary(None, [("assistant", "Hello there."), ("user", " ")]) == "Asked: Hello there."


def test_a_long_conversation_is_folded_into_the_summary_one_prompt_sized_batch_at_a_time() -> None:
    prompts: list[str] = []

    def complete(prompt: str) -> str:
        prompts.append(prompt)
        return f"summary after {len(prompts)} batches"

    messages = [("user" if i % 2 else "assistant", f"message {i} " + "x" * 300) for i in range(30)]
    summary = fold_summary(complete, "the summary so far", messages, budget_chars=2_000)
    assert summary == f"summary after {len(prompts)} batches" and len(prompts) >= 5
    assert prompts[0].startswith("Summary so far:\nthe summary so far")
    assert all(f"summary after {n} batches" in prompts[n] for n in range(1, len(prompts)))  # each batch builds on the last
    assert all(len(p) < 2_000 + 600 for p in prompts)  # the transcript within budget, plus the instructions
    assert sum(p.count("message ") for p in prompts) == 30  # every message folded exactly once


def test_a_message_longer_than_the_budget_is_cut_and_an_empty_reply_keeps_the_previous_summary() -> None:
    prompts: list[str] = []
    summary = fold_summary(lambda p: prompts.append(p) or "  ", "kept", [("user", "y" * 50_000)], budget_chars=1_000)
    assert summary == "kept" and len(prompts) == 1 and len(prompts[0]) < 3_000
