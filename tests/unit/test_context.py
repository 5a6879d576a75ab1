"""What the LLM reads of the sources (query_engine/context.py) and the closest passage quoted in place of a
refusal (engine.py): the real multilingual encoder on the sample knowledge base, a scripted LLM."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from assets.embed import UniversalSentenceEncoder
from kb.settings import PROJECT_ROOT
from query_engine.context import GAP, closest_passage, compact_texts, prose_sentences, sentence_evidence
from query_engine.engine import QUOTE_THRESHOLD, Answer, AnswerEngine, Delta, Retrieval, SourceRef, _keeps_facts
from query_engine.prompts import CLOSEST_PASSAGE, IN_SOURCE_LANGUAGE, NOT_FOUND, TRANSLATE_PROMPT, estimate_tokens
from query_engine.rerank import SentenceVectors

DOCS = PROJECT_ROOT / "examples" / "knowledge_base"
RETENTION_RU = "Какой срок хранения событий в топике payments.events?"
PARTITIONS_ZH = "payments.events 主题有多少个分区？"


def source(n: int, path: str) -> SourceRef:
    collection, doc_id = path.split("/", 1)
    return SourceRef(n, collection, doc_id, None, 1.0 / n, (DOCS / path).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def vectors() -> SentenceVectors:
    return SentenceVectors(UniversalSentenceEncoder(), split=prose_sentences)


@pytest.fixture(scope="module")
def sources() -> list[SourceRef]:
    return [
        source(1, "technical_docs/adr-0007-kafka-for-payment-events.md"),
        source(2, "technical_docs/payment-gateway-architecture.md"),
        source(3, "code_snippets/kafka_consumer.py"),
        source(4, "technical_docs/ledger-service-design.md"),
    ]


def compact(question: str, sources: list[SourceRef], vectors: SentenceVectors, budget: int) -> list[str]:
    evidence = sentence_evidence(question, [s.text for s in sources], vectors)
    return compact_texts([s.text for s in sources], [s.doc_id for s in sources], evidence, budget)


def test_the_top_source_is_shown_whole_and_the_others_by_their_strongest_sentences(
    sources: list[SourceRef], vectors: SentenceVectors
) -> None:
    texts = compact(RETENTION_RU, sources, vectors, budget=900)
    assert texts[0] == sources[0].text, "the top-ranked source fits in half the budget"
    assert texts[2] == sources[2].text, "code is shown whole or not at all"
    assert GAP.strip() in texts[1] and estimate_tokens(texts[1]) < estimate_tokens(sources[1].text)


def test_a_lower_ranked_source_keeps_the_sentence_that_answers_across_languages(
    sources: list[SourceRef], vectors: SentenceVectors
) -> None:
    ranked = [sources[1], sources[0]]  # the ADR second: cut to its best sentence and the one after it
    texts = compact(PARTITIONS_ZH, ranked, vectors, budget=200)
    assert "The topic has 48 partitions" in texts[1] and "Retention is 7 days" not in texts[1]


def test_the_sources_together_stay_within_the_budget(sources: list[SourceRef], vectors: SentenceVectors) -> None:
    whole = sum(estimate_tokens(s.text) for s in sources)
    for budget in (150, 300, 600):
        texts = compact(RETENTION_RU, sources, vectors, budget)
        assert sum(estimate_tokens(t) for t in texts) <= budget + 8 * len(sources) < whole  # GAP marks are not counted
    assert compact(RETENTION_RU, sources, vectors, 10_000)[2] == sources[2].text


def test_kept_sentences_keep_their_order_and_a_gap_shows_where_text_was_cut(
    sources: list[SourceRef], vectors: SentenceVectors
) -> None:
    text = compact(RETENTION_RU, sources[:1], vectors, budget=60)[0]
    assert GAP.strip() in text
    order = prose_sentences(sources[0].text)
    pieces = [p.strip() for p in text.split(GAP.strip()) if p.strip()]
    positions = [next(i for i, s in enumerate(order) if piece.startswith(s)) for piece in pieces]
    assert positions == sorted(positions) and pieces


def test_a_budget_too_small_for_a_code_source_leaves_it_out_rather_than_cutting_it(
    sources: list[SourceRef], vectors: SentenceVectors
) -> None:
    code_first = [sources[2], sources[0]]
    texts = compact(RETENTION_RU, code_first, vectors, budget=40)
    assert texts[0] == ""
    assert texts[1], "the prose source still shows its best sentence"


def test_the_closest_passage_across_languages_is_the_answering_sentence(
    sources: list[SourceRef], vectors: SentenceVectors
) -> None:
    texts = [source(1, "technical_docs/settlement-batch-zh.md").text, sources[0].text]
    passage = closest_passage(sentence_evidence(PARTITIONS_ZH, texts, vectors))
    assert passage is not None and passage.source == 1 and "The topic has 48 partitions" in passage.text


class ScriptedLLM:
    """Writes its answers in turn, the last one again once they are used up."""

    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)
        self.prompts: list[str] = []

    async def astream_chat(self, messages: list[Any]) -> Any:
        self.prompts.append(messages[0].content)
        answer = self.answers[min(len(self.prompts), len(self.answers)) - 1]

        async def gen() -> Any:
            for word in answer.split(" "):
                yield type("Chunk", (), {"delta": word + " "})()

        return gen()


def engine_over(sources: list[SourceRef], vectors: SentenceVectors, source_tokens: int = 900) -> AnswerEngine:
    # The constructor loads the retrieval stack; astream needs the LLM, the prompt sizes, the sentence vectors
    # and `retrieve`.
    engine = AnswerEngine.__new__(AnswerEngine)
    engine.cache = None
    engine.embedder = vectors.encoder
    engine.context_window, engine.max_answer_tokens = 4096, 256
    engine.context_vectors, engine.source_tokens = vectors, source_tokens
    engine.retrieve = lambda *args: Retrieval(sources, {}, True)  # type: ignore[method-assign]
    return engine


def ask(engine: AnswerEngine, question: str, llm: ScriptedLLM) -> tuple[str, Answer]:
    async def run() -> list[Delta | Answer]:
        return [e async for e in engine.astream(question, llm=llm)]  # type: ignore[arg-type]

    events = asyncio.run(run())
    final = events[-1]
    assert isinstance(final, Answer)
    return "".join(e.text for e in events if isinstance(e, Delta)), final


def test_the_prompt_carries_the_compacted_sources(sources: list[SourceRef], vectors: SentenceVectors) -> None:
    llm = ScriptedLLM("Срок хранения составляет 7 дней [1].")
    ask(engine_over(sources, vectors), RETENTION_RU, llm)
    prompt = llm.prompts[0]
    assert "Retention is 7 days" in prompt and GAP.strip() in prompt
    assert estimate_tokens(prompt) < sum(estimate_tokens(s.text) for s in sources)


def test_a_model_refusal_over_relevant_sources_becomes_the_closest_passage_quoted(
    sources: list[SourceRef], vectors: SentenceVectors
) -> None:
    passage = closest_passage(sentence_evidence(PARTITIONS_ZH, [s.text for s in sources], vectors))
    assert passage is not None and passage.score >= QUOTE_THRESHOLD
    streamed, final = ask(engine_over(sources, vectors), PARTITIONS_ZH, ScriptedLLM(NOT_FOUND["zh"]))
    assert streamed == final.text, "the refusal the model wrote was held back, never sent"
    assert NOT_FOUND["zh"] not in final.text and final.text.startswith(CLOSEST_PASSAGE["zh"].format(n=1))
    assert "The topic has 48 partitions" in final.text and final.text.rstrip().endswith("[1]")
    assert final.grounding["closest_passage"] and final.grounding["model_refused"]
    assert [s.cited for s in final.sources] == [True, False, False, False]


def test_a_refusal_over_sources_in_the_questions_own_language_is_not_replaced(vectors: SentenceVectors) -> None:
    zh = [source(1, "technical_docs/settlement-batch-zh.md")]
    _, final = ask(engine_over(zh, vectors), "结算批处理失败后会重试几次？", ScriptedLLM(NOT_FOUND["zh"]))
    assert final.text.strip() == NOT_FOUND["zh"] and not final.grounding["closest_passage"]


def test_a_general_knowledge_question_stays_refused_without_a_citation(
    sources: list[SourceRef], vectors: SentenceVectors
) -> None:
    # Even where the gate let it through, the closest passage is far from the question: no quote, no citation.
    question = "Какая столица Франции?"
    passage = closest_passage(sentence_evidence(question, [s.text for s in sources], vectors))
    assert passage is not None and passage.score < QUOTE_THRESHOLD
    _, final = ask(engine_over(sources, vectors), question, ScriptedLLM("Столица Франции — Париж [1]."))
    assert final.text.strip() == NOT_FOUND["ru"]
    assert not any(s.cited for s in final.sources) and not final.grounding["closest_passage"]


def test_a_supported_answer_is_never_replaced_by_a_quote(sources: list[SourceRef], vectors: SentenceVectors) -> None:
    _, final = ask(engine_over(sources, vectors), RETENTION_RU, ScriptedLLM("Retention is 7 days [1]."))
    assert final.text.startswith("Retention is 7 days [1].") and not final.grounding["closest_passage"]


def test_a_model_refusal_over_relevant_sources_is_asked_again_on_the_closest_sources(
    sources: list[SourceRef], vectors: SentenceVectors
) -> None:
    llm = ScriptedLLM(NOT_FOUND["zh"], "The topic has 48 partitions [1].", "该主题有 48 个分区 [1]。")
    streamed, final = ask(engine_over(sources, vectors), PARTITIONS_ZH, llm)
    assert len(llm.prompts) == 3, "one more ask and its translation, only after the refusal"
    assert streamed == final.text and NOT_FOUND["zh"] not in final.text, "the first refusal was never sent"
    assert final.text.startswith("该主题有 48 个分区 [1]") and final.grounding["retried"] and final.grounding["translated"]
    assert not final.grounding["closest_passage"] and [s.cited for s in final.sources] == [True, False, False, False]
    focused = llm.prompts[1]
    assert "The topic has 48 partitions" in focused and estimate_tokens(focused) < estimate_tokens(llm.prompts[0])
    assert "Answer in English" in focused and "Answer in Simplified Chinese" in llm.prompts[0], "asked in the sources' language"
    assert llm.prompts[2] == TRANSLATE_PROMPT.format(language="Simplified Chinese")
    shown = [s.n for s in sources if f"[{s.n}] {s.collection}/{s.doc_id}" in focused]
    assert 1 in shown and len(shown) <= 2, "the ADR that answers, under its own number, and one other source at most"


def test_a_translation_that_changes_a_number_is_not_shown(sources: list[SourceRef], vectors: SentenceVectors) -> None:
    llm = ScriptedLLM(NOT_FOUND["zh"], "The topic has 48 partitions [1].", "该主题有 84 个分区 [1]。")
    _, final = ask(engine_over(sources, vectors), PARTITIONS_ZH, llm)
    assert final.text.startswith(IN_SOURCE_LANGUAGE["zh"]) and "The topic has 48 partitions [1]." in final.text
    assert "84" not in final.text and final.grounding["retried"] and not final.grounding["translated"]


def test_a_translation_may_write_a_number_with_its_languages_thousands_separator() -> None:
    # "Сколько гугенотов покинули Францию…" (kb eval answers, ru->en): "500,000 [1]" came back as "500 000 [1]".
    assert _keeps_facts("500,000 [1]", "500 000 [1]") and _keeps_facts("It is 3.5 [2].", "Это 3.5 [2].")
    assert not _keeps_facts("500,000 [1]", "50 000 [1]") and not _keeps_facts("500,000 [1]", "500 000")


def test_a_translation_that_drops_a_citation_is_not_shown(sources: list[SourceRef], vectors: SentenceVectors) -> None:
    llm = ScriptedLLM(NOT_FOUND["zh"], "The topic has 48 partitions [1].", "该主题有 48 个分区。")
    _, final = ask(engine_over(sources, vectors), PARTITIONS_ZH, llm)
    assert final.text.startswith(IN_SOURCE_LANGUAGE["zh"]) and final.text.rstrip().endswith("[1].")


def test_a_guess_asked_again_in_the_sources_language_stays_refused(sources: list[SourceRef], vectors: SentenceVectors) -> None:
    # Asked again in English, the model answers from its own knowledge: judged there, nothing supports it, so
    # nothing is translated and the asker gets the refusal in their language (or the closest passage).
    llm = ScriptedLLM(NOT_FOUND["ru"], "The capital of France is Paris [1].", "Столица Франции — Париж [1].")
    _, final = ask(engine_over(sources, vectors), "Какая столица Франции и сколько разделов у payments.events?", llm)
    assert len(llm.prompts) == 2 and final.grounding["retried"] and not final.grounding["translated"]
    assert "Paris" not in final.text and "Париж" not in final.text


def test_an_uncited_answer_in_the_sources_language_far_from_them_with_its_question_is_not_translated(
    sources: list[SourceRef], vectors: SentenceVectors
) -> None:
    # Split at the initials, no part of it is long enough or far enough from the sources to count as a guess by
    # itself; read with its question it is far from all of them (kb eval answers, ru->en off-topic, before this).
    llm = ScriptedLLM(
        NOT_FOUND["ru"], "War and Peace was written by F. M. Dostoevsky.", "«Войну и мир» написал Ф. М. Достоевский."
    )
    _, final = ask(engine_over(sources, vectors), "Кто написал роман «Война и мир»?", llm)
    assert len(llm.prompts) == 2 and final.text.strip() == NOT_FOUND["ru"]
    assert final.grounding["retried"] and final.grounding["refused_after_grounding"] and not final.grounding["translated"]


def test_a_short_uncited_answer_near_its_sources_with_its_question_is_translated(
    sources: list[SourceRef], vectors: SentenceVectors
) -> None:
    llm = ScriptedLLM(NOT_FOUND["zh"], "48.", "48。")
    _, final = ask(engine_over(sources, vectors), PARTITIONS_ZH, llm)
    assert final.text.strip() == "48。" and final.grounding["translated"]


def test_a_second_refusal_still_ends_in_the_closest_passage(sources: list[SourceRef], vectors: SentenceVectors) -> None:
    llm = ScriptedLLM(NOT_FOUND["zh"])
    _, final = ask(engine_over(sources, vectors), PARTITIONS_ZH, llm)
    assert len(llm.prompts) == 2 and final.grounding["retried"] and final.grounding["closest_passage"]


def test_an_answer_is_never_asked_again(sources: list[SourceRef], vectors: SentenceVectors) -> None:
    llm = ScriptedLLM("Retention is 7 days [1].")
    _, final = ask(engine_over(sources, vectors), RETENTION_RU, llm)
    assert len(llm.prompts) == 1 and not final.grounding["retried"]


def test_no_second_call_when_the_closest_sources_are_what_the_model_was_shown_in_its_language(vectors: SentenceVectors) -> None:
    short = [SourceRef(1, "runbooks", "kafka-lag.md", None, 1.0, "Consumer lag alerts fire after 5 minutes.")]
    llm = ScriptedLLM(NOT_FOUND["en"])
    _, final = ask(engine_over(short, vectors), "When does the consumer lag alert fire?", llm)
    assert len(llm.prompts) == 1 and not final.grounding["retried"]
    # Across languages the same sources are asked about once more, in their own language.
    llm = ScriptedLLM(NOT_FOUND["ru"])
    _, final = ask(engine_over(short, vectors), "Когда срабатывает оповещение о задержке потребителя?", llm)
    assert len(llm.prompts) == 2 and "Answer in English" in llm.prompts[1] and final.grounding["retried"]
