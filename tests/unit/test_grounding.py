"""Citation grounding on the sample knowledge base's documents: no LLM, the real multilingual encoder
where support crosses languages."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import httpx
import pytest

from assets.embed import UniversalSentenceEncoder
from assets.mask import mask_secrets
from kb.settings import PROJECT_ROOT
from query_engine.engine import Answer, AnswerEngine, Delta, LLMUnavailable, Retrieval, SourceRef
from query_engine.grounding import GUESS_THRESHOLD, SUPPORT_THRESHOLD, GroundedStream, identifiers, support
from query_engine.prompts import NOT_FOUND

DOCS = PROJECT_ROOT / "examples" / "knowledge_base"


def source(n: int, path: str) -> SourceRef:
    collection, doc_id = path.split("/", 1)
    return SourceRef(n, collection, doc_id, None, 1.0 / n, (DOCS / path).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def sources() -> list[SourceRef]:
    return [
        source(1, "runbooks/database-failover.md"),
        source(2, "runbooks/ledger-reconciliation-mismatch.md"),
        source(3, "technical_docs/settlement-batch-zh.md"),
    ]


@pytest.fixture(scope="module")
def encoder() -> UniversalSentenceEncoder:
    return UniversalSentenceEncoder()


def grounded(text: str, sources: list[SourceRef], **kwargs: Any) -> tuple[str, GroundedStream]:
    stream = GroundedStream(sources, **kwargs)
    return stream.feed(text, final=True), stream


def test_invented_command_and_path_are_withheld_and_named_in_the_note(sources: list[SourceRef]) -> None:
    answer = (
        "Never edit ledger entries by hand; corrections are compensating transactions [2].\n"
        "1. Run `./fix_ledger.sh` to repair the entries [2].\n"
        "2. Check /path/to/settlement-batch.log for the failed rows [2].\n"
        "3. Create the correction with `ledgerctl adjust --case <id>`, approved by finance [2].\n"
    )
    text, stream = grounded(answer, sources, evidence=["How do I fix a reconciliation mismatch?"])
    assert "fix_ledger" not in text.split("\n\n")[0] and "settlement-batch.log for" not in text
    assert "\n3. Create the correction with `ledgerctl adjust --case <id>`, approved by finance [2].\n" in text
    assert "\n\n2." not in text  # the left-out list items leave no empty lines behind
    assert text.endswith("\n\nLeft out (not in the sources): `./fix_ledger.sh`, `/path/to/settlement-batch.log`.")
    report = stream.report.as_dict()
    assert report["withheld_sentences"] == 2
    assert report["unsupported_identifiers"] == ["./fix_ledger.sh", "/path/to/settlement-batch.log"]


def test_an_identifier_from_the_question_or_a_tool_result_is_not_invented(sources: list[SourceRef]) -> None:
    answer = "The job `settlement-rerun-7f3` failed with OOMKilled [kubernetes: list_pods settlement]."
    alone, _ = grounded(answer, sources)
    # Nothing else was said, so the answer is a refusal that names what it left out.
    assert alone.startswith("I could not find this in the knowledge base.\n\nLeft out")
    assert "`settlement-rerun-7f3`" in alone and "`OOMKilled`" in alone
    tool_output = '{"pods":[{"name":"settlement-rerun-7f3","reason":"OOMKilled"}]}'
    with_evidence, stream = grounded(answer, sources, evidence=["why did the rerun fail?", tool_output])
    assert with_evidence == answer  # a tool label is a citation: no document marker is added to it
    assert stream.report.withheld_sentences == 0


def test_what_an_earlier_answer_left_out_stays_out(sources: list[SourceRef]) -> None:
    first, _ = grounded("Run `./fix_ledger.sh` to repair the ledger entries [2].", sources)
    assert first == "I could not find this in the knowledge base.\n\nLeft out (not in the sources): `./fix_ledger.sh`."
    again, stream = grounded("Run `./fix_ledger.sh` to repair the ledger entries [2].", sources, evidence=["and now?", first])
    assert again == first and stream.report.withheld_sentences == 1


def test_a_marker_of_a_source_that_does_not_support_the_sentence_moves_to_the_one_that_does(
    sources: list[SourceRef],
) -> None:
    text, stream = grounded("Never edit ledger entries by hand; corrections are compensating transactions [1].", sources)
    assert text == "Never edit ledger entries by hand; corrections are compensating transactions [2]."
    assert stream.report.dropped_markers == 1 and stream.report.supported_citations == 1


def test_a_general_knowledge_answer_keeps_no_marker(sources: list[SourceRef], encoder: UniversalSentenceEncoder) -> None:
    for kwargs in ({}, {"encoder": encoder}):
        text, stream = grounded("The capital of France is Paris [1].", sources[1:2], **kwargs)
        assert text == "The capital of France is Paris."
        assert stream.report.cited_sentences == 0 and stream.report.dropped_markers == 1


def test_an_invalid_marker_is_dropped(sources: list[SourceRef]) -> None:
    text, stream = grounded("Patroni promotes a replica automatically within 30 seconds [9][1].", sources)
    assert text == "Patroni promotes a replica automatically within 30 seconds [1]."
    assert stream.report.dropped_markers == 1
    short, _ = grounded("See [9].", sources)  # too short to judge, but [9] names no source
    assert short == "See."


def test_grouped_markers_keep_only_the_supporting_sources(sources: list[SourceRef]) -> None:
    text, _ = grounded("If automatic failover did not happen, run the failover with a candidate replica [1, 2].", sources)
    assert text == "If automatic failover did not happen, run the failover with a candidate replica [1]."


def test_a_russian_sentence_citing_the_english_source_it_restates_keeps_its_marker(
    sources: list[SourceRef], encoder: UniversalSentenceEncoder
) -> None:
    restated = "Patroni автоматически повышает реплику до ведущего узла в течение 30 секунд [1]."
    assert support(restated, sources[0].text, encoder) >= SUPPORT_THRESHOLD
    assert support(restated, sources[0].text, None) < SUPPORT_THRESHOLD  # words alone cannot see it
    text, stream = grounded(restated, sources, language="ru", encoder=encoder)
    assert text == restated and stream.report.supported_citations == 1
    unrelated = "Столица Франции — Париж, крупнейший город страны [1]."
    text, _ = grounded(unrelated, sources, language="ru", encoder=encoder)
    assert text == "Столица Франции — Париж, крупнейший город страны."


def test_a_chinese_sentence_without_a_marker_gets_the_english_source_it_restates(
    sources: list[SourceRef], encoder: UniversalSentenceEncoder
) -> None:
    text, _ = grounded("如果自动故障转移没有发生，请运行 `patronictl failover --candidate <replica>`。", sources, language="zh",
                       encoder=encoder)  # fmt: skip
    assert text == "如果自动故障转移没有发生，请运行 `patronictl failover --candidate <replica>` [1]。"


def test_numbers_in_a_source_pass_and_numbers_in_none_are_withheld(sources: list[SourceRef]) -> None:
    kept = (
        "Patroni promotes a replica within 30 seconds; the database listens on port 5432 [1].\n"
        "金额差异超过 0.01 欧元的交易会生成对账工单，并在 30 分钟后重试[3]。"
    )
    text, stream = grounded(kept, sources)
    assert text == kept and stream.report.withheld_sentences == 0
    text, stream = grounded("The batch retries after 45 minutes, at most 12 times [3].", sources, language="ru")
    assert text == "Я не нашёл ответа на этот вопрос в базе знаний.\n\nОпущено (этого нет в источниках): `45`, `12`."
    assert identifiers("1. Open the case\n2. Check 7.5 and 10:00, 3 times") == ["7.5", "10:00"]  # not "1." nor "3"


def test_a_fenced_code_block_is_one_unit(sources: list[SourceRef]) -> None:
    answer = (
        "Check the cluster state first:\n```bash\npatronictl -c /etc/patroni.yml list\n```\n"
        "Then repair it:\n```bash\n# repair\n./fix_ledger.sh --force\n```\nDone.\n"
    )
    text, stream = grounded(answer, sources, language="zh")
    assert "```bash\npatronictl -c /etc/patroni.yml list\n```\n" in text
    assert "--force" not in text.split("\n\n")[0] and "Done." in text
    assert text.endswith("\n\n已省略（来源中没有这些内容）：`./fix_ledger.sh`, `--force`。")
    assert stream.report.withheld_sentences == 1


def test_what_the_note_and_report_repeat_is_redacted(sources: list[SourceRef]) -> None:
    answer = "Connect with postgres://ledger_admin:Hunter2Secret@ledger-db:5432/ledger to check it [1]."
    text, stream = grounded(answer, sources, redact=lambda t: mask_secrets(t).text)
    assert "Hunter2Secret" not in text and "Hunter2Secret" not in str(stream.report.as_dict())
    assert "[MASKED:" in text and stream.report.withheld_sentences == 1


ANSWER = """## Failover

The primary of ledger-db is unreachable [1]. Patroni promotes a replica automatically within 30 seconds. [1]
1. Confirm it with `patronictl -c /etc/patroni.yml list` [1][9].
2. Run `./fix_ledger.sh` [2].
3. 如果结算文件在 04:00 UTC 之前没有到达，批处理会告警并在 30 分钟后重试[3]。结算可以安全地重新运行！
```sql
SELECT * FROM ledger_entries;
```
Never edit ledger entries by hand [1]? Is 3.14 a number... e.g.x or file.yaml
"""


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_streaming_in_small_deltas_gives_the_same_text_as_one_feed(sources: list[SourceRef], seed: int) -> None:
    whole, reference = grounded(ANSWER, sources)
    rng = random.Random(seed)
    stream, parts, cursor = GroundedStream(sources), [], 0
    while cursor < len(ANSWER):
        size = 1 if seed == 0 else rng.randint(1, 9)
        parts.append(stream.feed(ANSWER[cursor : cursor + size]))
        cursor += size
    parts.append(stream.feed("", final=True))
    assert "".join(parts) == whole
    assert stream.report == reference.report
    assert "[9]" not in whole and "fix_ledger" not in whole.split("\n\nLeft out")[0]
    assert "Patroni promotes a replica automatically within 30 seconds. [1]\n" in whole  # a marker after the full stop stays
    assert "Never edit ledger entries by hand?" in whole  # a question states nothing: its marker goes


def test_a_completed_sentence_is_emitted_before_the_answer_ends(sources: list[SourceRef]) -> None:
    stream = GroundedStream(sources)
    assert stream.feed("Patroni promotes a replica automatically within 30 seconds") == ""
    assert stream.feed(" [1].") == ""  # the next character decides whether the sentence ends
    assert stream.feed(" Then verify") == "Patroni promotes a replica automatically within 30 seconds [1]."
    assert stream.feed(" the new leader in the list.") == ""
    assert stream.feed(" [1]") == ""  # more markers may follow the full stop
    assert stream.feed(" Done", final=True) == " Then verify the new leader in the list. [1] Done"


class ScriptedLLM:
    def __init__(self, answer: str) -> None:
        self.answer = answer

    async def astream_chat(self, messages: list[Any]) -> Any:
        async def gen() -> Any:
            for word in self.answer.split(" "):
                yield type("Chunk", (), {"delta": word + " "})()

        return gen()


def test_the_engine_answer_carries_the_grounding_report(sources: list[SourceRef]) -> None:
    # The constructor loads the retrieval stack; astream needs only the LLM, the prompt sizes and `retrieve`.
    engine = AnswerEngine.__new__(AnswerEngine)
    engine.cache = None
    engine.embedder = None  # type: ignore[assignment]
    engine.context_window, engine.max_answer_tokens = 4096, 256
    engine.context_vectors, engine.source_tokens = None, 0
    engine.retrieve = lambda *args: Retrieval(sources, {}, True)  # type: ignore[method-assign]
    answer_text = "Run `./fix_ledger.sh` now [2]. Never edit ledger entries by hand [1]."

    async def run() -> list[Delta | Answer]:
        return [e async for e in engine.astream("How do I fix a mismatch?", llm=ScriptedLLM(answer_text))]  # type: ignore[arg-type]

    events = asyncio.run(run())
    final = events[-1]
    assert isinstance(final, Answer)
    assert "".join(e.text for e in events if isinstance(e, Delta)) == final.text
    assert final.text.startswith("Never edit ledger entries by hand [2].") and "`./fix_ledger.sh`." in final.text
    assert final.grounding["withheld_sentences"] == 1 and final.grounding["unsupported_identifiers"] == ["./fix_ledger.sh"]
    assert [s.cited for s in final.sources] == [False, True, False]


def test_the_engine_still_reports_a_dead_llm_while_grounding_prepares(
    sources: list[SourceRef], encoder: UniversalSentenceEncoder
) -> None:
    class DeadLLM:
        async def astream_chat(self, messages: list[Any]) -> Any:
            raise httpx.ConnectError("connection refused")

    engine = AnswerEngine.__new__(AnswerEngine)
    engine.cache = None
    engine.embedder = encoder
    engine.context_window, engine.max_answer_tokens = 4096, 256
    engine.context_vectors, engine.source_tokens = None, 0
    engine.retrieve = lambda *args: Retrieval(sources, {}, True)  # type: ignore[method-assign]

    async def run() -> None:
        async for _ in engine.astream("Как перезапустить батч?", llm=DeadLLM()):  # type: ignore[arg-type]
            pass

    with pytest.raises(LLMUnavailable):
        asyncio.run(run())


def test_a_question_repeated_back_gets_no_marker() -> None:
    source = SourceRef(
        1, "technical_docs", "warsaw.md", None, 1.0, "Polonia Warsaw won the national hockey championship in 2023."
    )
    stream = GroundedStream([source], ["Who won the hockey championship in 2023?"], "en")
    text = stream.feed("Who won the hockey championship in 2023 [1]? ", final=True)
    assert "[1]" not in text


def test_an_answer_whose_every_sentence_is_withheld_becomes_a_refusal(sources: list[SourceRef]) -> None:
    # The shape seen in `kb eval answers`: "founded in 1727" about a city no source mentions.
    text, stream = grounded("Санкт-Петербург был основан в 1727 году [1].", sources, language="ru")
    assert text.startswith("Я не нашёл ответа на этот вопрос в базе знаний.")
    assert "[1]" not in text and text.endswith("`1727`.")
    assert stream.report.refused_after_grounding and stream.report.withheld_sentences == 1


@pytest.mark.parametrize("answer", ["[3]", "", "\n[1][2]\n"])
def test_an_answer_of_markers_alone_is_a_refusal_that_cites_nothing(sources: list[SourceRef], answer: str) -> None:
    text, stream = grounded(answer, sources, language="en")
    assert text == "I could not find this in the knowledge base."
    assert stream.report.refused_after_grounding


def test_markers_held_back_before_the_first_statement_are_emitted_with_it(sources: list[SourceRef]) -> None:
    stream = GroundedStream(sources)
    first = stream.feed("[1]\n")
    rest = stream.feed("Never edit ledger entries by hand; corrections are compensating transactions [2].\n", final=True)
    assert first == "" and rest.startswith("[1]\nNever edit ledger entries by hand")
    assert not stream.report.refused_after_grounding


def test_with_sources_only_a_general_knowledge_answer_becomes_the_refusal(
    sources: list[SourceRef], encoder: UniversalSentenceEncoder
) -> None:
    # The "Paris [1]" and the eval's "Канада имеет столицу Toronto.": nothing a source says.
    for answer, language in (("The capital of France is Paris [1].", "en"), ("Канада имеет столицу Торонто.", "ru")):
        stream = GroundedStream(sources, [answer], language, encoder, sources_only=True)
        assert stream.feed(answer) == ""  # held back: not one word of the guess is sent
        assert stream.feed("", final=True) == NOT_FOUND[language]
        assert stream.report.refused_after_grounding and not stream.report.model_refused
    own = GroundedStream(sources, ["What is the capital of France?"], "en", encoder, sources_only=True)
    assert own.feed(NOT_FOUND["en"], final=True) == NOT_FOUND["en"] and own.report.model_refused


def test_with_sources_only_held_sentences_go_out_with_the_first_supported_one(
    sources: list[SourceRef], encoder: UniversalSentenceEncoder
) -> None:
    stream = GroundedStream(sources, ["How do I fix a reconciliation mismatch?"], "en", encoder, sources_only=True)
    intro = "Here is what the team's guidance says about this situation.\n"
    assert stream.feed(intro) == ""
    supported = "Never edit ledger entries by hand; corrections are compensating transactions [2].\n"
    assert stream.feed(supported) == intro + supported
    assert stream.feed("", final=True) == "" and not stream.report.refused_after_grounding


def test_with_sources_only_a_short_answer_nothing_contradicts_is_kept(sources: list[SourceRef]) -> None:
    stream = GroundedStream(sources, ["How long does Patroni take to promote a replica?"], "en", sources_only=True)
    assert stream.feed("30 seconds.", final=True) == "30 seconds."
    assert not stream.report.refused_after_grounding


def test_with_sources_only_a_paraphrase_across_languages_is_said_without_a_marker_not_refused(
    sources: list[SourceRef], encoder: UniversalSentenceEncoder
) -> None:
    # A Russian restatement of the English runbook that the encoder places near it, below the citation threshold:
    # the correct cross-lingual answers that grounding used to turn into refusals.
    paraphrase = "При сбое основной базы данных Patroni сам назначает новую ведущую реплику [1]."
    assert GUESS_THRESHOLD <= support(paraphrase, sources[0].text, encoder) < SUPPORT_THRESHOLD
    stream = GroundedStream(sources, ["Что происходит при сбое основной базы?"], "ru", encoder, sources_only=True)
    text = stream.feed(paraphrase, final=True)
    assert text == paraphrase.replace(" [1]", "") and not stream.report.refused_after_grounding
    guess = GroundedStream(sources, ["Что делать?"], "ru", encoder, sources_only=True)
    assert guess.feed("Лучше всего перезагрузить сервер и подождать.", final=True) == NOT_FOUND["ru"]


def test_a_bare_number_with_its_citation_is_an_answer_not_a_list_marker(sources: list[SourceRef]) -> None:
    stream = GroundedStream(sources, ["Within how many seconds does Patroni promote a replica?"], "en", sources_only=True)
    assert stream.feed("30.[1]", final=True) == "30.[1]"
    assert not stream.report.refused_after_grounding and stream.report.cited_sentences == 1


def test_a_short_answer_is_cited_to_the_source_that_states_it_with_the_question(sources: list[SourceRef]) -> None:
    # "Within 30 seconds." alone is too short to judge; with the question it is the failover runbook's step 2.
    question = "How long does Patroni take to promote a replica?"
    text, stream = grounded("Within 30 seconds.", sources, evidence=[question], question=question)
    assert text == "Within 30 seconds [1]."
    assert stream.report.cited_sentences == 1 and stream.report.supported_citations == 1


def test_a_short_answer_no_source_holds_stays_uncited(sources: list[SourceRef]) -> None:
    question = "How long does Patroni take to promote a replica?"
    text, _ = grounded("About five minutes.", sources, evidence=[question], question=question)
    assert text == "About five minutes."


def test_a_short_answer_across_languages_is_not_cited_on_the_question_alone(
    sources: list[SourceRef], encoder: UniversalSentenceEncoder
) -> None:
    # The English runbook answers the Russian question, but nothing checks a Russian short answer's own terms there:
    # a wrong one would be cited just as well.
    question = "За сколько Patroni повышает реплику?"
    text, _ = grounded("За 30 секунд.", sources, evidence=[question], question=question, language="ru", encoder=encoder)
    assert "[" not in text


def test_with_sources_only_a_short_chinese_general_knowledge_answer_becomes_the_refusal(
    sources: list[SourceRef], encoder: UniversalSentenceEncoder
) -> None:
    # Nine and eleven characters: too short to judge when a CJK character counted as one Latin letter, so such a
    # guess went out uncited (the zh off-topic answers of the 100-question eval).
    guesses = (("大熊猫平时主要吃什么？", "大熊猫平时主要吃竹子。"), ("李白是哪个朝代的诗人？", "李白是唐朝的诗人。"))
    for question, answer in guesses:
        stream = GroundedStream(sources, [question], "zh", encoder, sources_only=True, question=question)
        assert stream.feed(answer) == ""
        assert stream.feed("", final=True) == NOT_FOUND["zh"] and stream.report.refused_after_grounding


def test_a_short_answer_across_languages_is_judged_together_with_its_question(
    sources: list[SourceRef], encoder: UniversalSentenceEncoder
) -> None:
    # It states only the part the question asked for: alone it is far from the English runbook that says it, with
    # the question it is near (how GUESS_THRESHOLD was calibrated across languages). Said, without a marker.
    question, answer = "主库故障时谁来提升副本？", "Patroni会自动处理。"
    english = [s.text for s in sources[:2]]
    assert max(support(answer, text, encoder) for text in english) < GUESS_THRESHOLD
    assert max(support(f"{question} {answer}", text, encoder) for text in english) >= GUESS_THRESHOLD
    stream = GroundedStream(sources, [question], "zh", encoder, sources_only=True, question=question)
    assert stream.feed(answer, final=True) == answer and not stream.report.refused_after_grounding
    lone = GroundedStream(sources, [question], "zh", encoder, sources_only=True)  # no question to read it with
    assert lone.feed(answer, final=True) == NOT_FOUND["zh"]
