"""The answer eval's own logic: probes, scoring one answer, and the figures over many."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from llama_index.core.llms import ChatMessage, ChatResponse, MessageRole

from evals.answers import (
    PROBES_DIR,
    GroundednessJudge,
    Probe,
    cited_statements,
    looks_like_command_or_path,
    off_topic_questions,
    probes_of,
    score,
    source_excerpt,
    summarise,
)
from evals.datasets import EvalSet, Query
from query_engine.engine import Answer, SourceRef
from query_engine.prompts import NOT_FOUND, question_language


@pytest.mark.parametrize("language", ["en", "ru", "zh"])
def test_off_topic_probes_are_forty_distinct_questions_in_their_language(language: str) -> None:
    questions = off_topic_questions(language, 100)
    assert len(questions) == 40 == len(set(questions))
    assert [q for q in questions if question_language(q) != language] == []
    assert off_topic_questions(language, 6) == questions[:6]


def test_a_language_without_probes_gets_the_english_ones() -> None:
    assert not (PROBES_DIR / "off_topic.de.txt").exists()
    assert off_topic_questions("de", 3) == off_topic_questions("en", 3)


@pytest.mark.parametrize(
    ("identifier", "expected"),
    [("kubectl rollout restart deploy/x", True), ("/etc/nginx/nginx.conf", True), ("./fix_ledger.sh", True),
     ("--force", True), ("values.yaml", True), ("https://example.com/runbook", True),
     ("118", False), ("7.5", False), ("gateway-core", False), ("MAX_RETRIES", False)],
)  # fmt: skip
def test_commands_and_paths_are_told_from_names_and_numbers(identifier: str, expected: bool) -> None:
    assert looks_like_command_or_path(identifier) is expected


def _answer(text: str, cited: tuple[int, ...] = (), grounding: dict[str, Any] | None = None) -> Answer:
    sources = [SourceRef(n, "docs", f"p{n:03d}.md", None, 1.0, f"source {n} text", cited=n in cited) for n in (1, 2)]
    answer = Answer(text, sources, {}, "en")
    if grounding is not None:
        answer.grounding = grounding  # type: ignore[attr-defined]
    return answer


def _report(sentences: int, cited: int, supported: int, dropped: int = 0, identifiers: list[str] | None = None) -> dict[str, Any]:
    return {"sentences": sentences, "cited_sentences": cited, "supported_citations": supported, "dropped_markers": dropped,
            "withheld_sentences": len(identifiers or []), "unsupported_identifiers": identifiers or []}  # fmt: skip


def test_an_answer_is_scored_against_its_references_and_relevant_documents() -> None:
    probe = Probe("q1", "answerable", "Who led the team in sacks?", ("Kawann Short",), frozenset({"p001"}))
    row = score(probe, _answer("Kawann Short led with 11 sacks [1][2].", cited=(1, 2), grounding=_report(1, 1, 2)), 2.0,
                {"p001.md": "p001", "p002.md": "p002"})  # fmt: skip
    assert row.contains and not row.refused
    assert row.cited == ["p001", "p002"] and row.cited_relevant == ["p001"]
    assert row.as_dict()["grounding"]["supported_citations"] == 2


def test_only_unsupported_commands_and_paths_mark_an_answer() -> None:
    probe = Probe("off_topic-en-0", "off_topic", "What is 15 percent of 240?")
    numbers = score(probe, _answer("It is 36.", grounding=_report(2, 0, 0, identifiers=["240", "36"])), 1.0, {})
    command = score(probe, _answer("Run it.", grounding=_report(2, 0, 0, identifiers=["./fix.sh", "36"])), 1.0, {})
    assert numbers.unsupported_commands_or_paths == [] and command.unsupported_commands_or_paths == ["./fix.sh"]


def test_figures_split_answerable_questions_from_probes() -> None:
    answerable = Probe("q1", "answerable", "Who?", ("Short",), frozenset({"p001"}))
    off_topic = Probe("off_topic-en-0", "off_topic", "Who painted the Mona Lisa?")
    answered = _answer("Short did it [1]. He also did more.", cited=(1,), grounding=_report(2, 1, 1, dropped=1))
    general = _answer("Leonardo da Vinci [2].", cited=(2,), grounding=_report(2, 1, 1, identifiers=["/x/y"]))
    rows = [
        score(answerable, answered, 1, {}),
        score(answerable, _answer(NOT_FOUND["en"], grounding={}), 1, {}),
        score(off_topic, _answer(NOT_FOUND["en"]), 1, {}),
        score(off_topic, general, 1, {}),
    ]
    figures = summarise(rows)
    assert figures["questions"] == 2 and figures["refused_answerable"] == 0.5 and figures["answer_containment"] == 0.5
    assert figures["refused_answerable_by_gate"] == 0.5 and figures["refused_answerable_after_answering"] == 0.0
    after = score(answerable, _answer(NOT_FOUND["en"], grounding={**_report(1, 0, 0), "refused_after_grounding": True}), 1, {})
    assert summarise([rows[0], after])["refused_answerable_after_answering"] == 0.5
    assert (
        figures["off_topic_probes"] == 2 and figures["off_topic_refusal_rate"] == 0.5 and figures["off_topic_citing_rate"] == 0.5
    )
    assert figures["no_answer_refusal_rate"] is None
    # Refusals are left out of groundedness: 2 cited of the 2 + 1 sentences that reached the user.
    assert figures["groundedness"] == 0.6667 and figures["citation_support_rate"] == 0.6667
    assert figures["answers_without_unsupported_command_or_path"] == 0.75
    assert figures["unsupported_identifiers_per_answer"] == 0.25


def test_grounding_figures_are_none_when_the_engine_reports_no_grounding() -> None:
    probe = Probe("q1", "answerable", "Who?", ("Short",))
    figures = summarise([score(probe, _answer("Short [1]."), 1, {}), score(probe, _answer(NOT_FOUND["en"]), 1, {})])
    assert figures["answers_with_grounding_report"] == 0.0
    assert figures["groundedness"] is None and figures["answers_without_unsupported_command_or_path"] is None


def test_cited_statements_are_the_sentences_with_markers() -> None:
    text = "Short led the team [1]. Nobody knows why. Ealy had five sacks [2, 3].\n\nLeft out: `x`."
    assert cited_statements(text) == [("Short led the team .", [1]), ("Ealy had five sacks .", [2, 3])]


def test_the_judge_sees_the_part_of_a_long_source_that_shares_the_statement_words() -> None:
    source = "filler words here. " * 100 + "Kawann Short led the team in sacks. " + "more filler text. " * 100
    excerpt = source_excerpt(source, "Kawann Short led in sacks", size=400)
    assert len(excerpt) == 400 and "Kawann Short" in excerpt
    assert source_excerpt("short source", "anything") == "short source"


class _ScriptedLLM:
    """Answers the judge's prompts from a script and keeps them, in place of the LLM server."""

    def __init__(self, replies: list[str]) -> None:
        self.replies = replies
        self.prompts: list[str] = []

    def chat(self, messages: list[ChatMessage]) -> ChatResponse:
        self.prompts.append(messages[-1].content or "")
        return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=self.replies.pop(0)))


def test_the_judge_asks_per_cited_source_until_one_states_the_sentence() -> None:
    llm = _ScriptedLLM(["No.", "Yes", "no"])
    judge = GroundednessJudge(llm)  # type: ignore[arg-type]
    answer = _answer("Short led the team in sacks [1][2]. Ealy had five sacks [2]. Unsourced sentence here.")
    assert judge.judge(answer) == {"statements": 2, "supported": 1}
    assert len(llm.prompts) == 3 and llm.replies == []
    assert llm.prompts[0].startswith("Source:\nsource 1 text") and "Statement: Short led the team in sacks ." in llm.prompts[0]
    assert llm.prompts[0].endswith("Does the source state this? Answer yes or no.")


def test_quotes_in_place_of_a_refusal_and_prompt_sizes_are_counted_apart() -> None:
    probe = Probe("q1", "answerable", "Кто лидировал по мешкам?", ("Kawann Short",), frozenset({"p001"}))
    quote = {**_report(2, 1, 1), "withheld_sentences": 1, "closest_passage": True, "model_refused": True}
    quoted = _answer("Ближе всего [1]:\n\n> Kawann Short led the team with 11 sacks. [1]", cited=(1,), grounding=quote)
    quoted.prompt_tokens = 600
    missed = _answer("Ближе всего [1]:\n\n> The Panthers defense gave up 308 points. [1]", cited=(1,), grounding=quote)
    missed.prompt_tokens = 400
    rows = [score(probe, quoted, 1, {}), score(probe, missed, 1, {}), score(probe, _answer(NOT_FOUND["ru"], grounding={}), 1, {})]
    figures = summarise(rows)
    assert figures["answers_quoting_closest_passage"] == 0.6667 and figures["quotes_containing_the_answer"] == 0.5
    assert figures["prompt_tokens_per_llm_answer"] == 500.0, "a refusal before any LLM call has no prompt"
    assert rows[0].as_dict()["prompt_tokens"] == 600


def test_a_set_without_reference_answers_is_asked_its_questions_that_have_a_relevant_document(tmp_path: Path) -> None:
    # prom_runbooks: alerts with a runbook (qrels) but no reference answer; asked for refusals and citations.
    evalset = EvalSet("alerts", None, [], [Query("a1", "KubeletDown"), Query("a2", "NoRunbookAlert")], {"a1": {"kubelet"}})
    asked = probes_of(evalset, tmp_path, limit=10, probes=0)
    assert [(p.id, p.kind, p.references, p.relevant) for p in asked] == [("a1", "answerable", (), frozenset({"kubelet"}))]
    rows = [score(asked[0], _answer("Check the kubelet [1].", cited=(1,), grounding=_report(1, 1, 1)), 1, {}),
            score(asked[0], _answer(NOT_FOUND["en"], grounding={}), 1, {})]  # fmt: skip
    figures = summarise(rows)
    assert figures["questions"] == 2 and figures["questions_without_reference"] == 2 and figures["refused_answerable"] == 0.5
    assert figures["answer_containment"] is None and figures["token_f1"] is None, "no reference: not scored as wrong"
    assert rows[0].as_dict()["contains"] is None


def test_a_set_with_reference_answers_asks_only_the_questions_that_have_one(tmp_path: Path) -> None:
    queries = [Query("q1", "Who?"), Query("q2", "When?")]
    evalset = EvalSet("qa", None, [], queries, {"q1": {"p1"}, "q2": {"p2"}}, answers={"q1": ["Short"]})
    assert [p.id for p in probes_of(evalset, tmp_path, limit=10, probes=0)] == ["q1"]
