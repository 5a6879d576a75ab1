"""Answers with sources: hybrid retrieval, reranking, a prompt that fits the context window, an LLM
that must cite, and a refusal instead of a guess when nothing relevant was found."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from llama_index.core.llms import LLM, ChatMessage, MessageRole
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import NodeWithScore

from assets.embed import Embedder, multilingual_encoder
from assets.index import Filters, Groups, VectorIndex
from assets.mask import mask_secrets
from query_engine.cache import QueryCache, request_parts
from query_engine.context import Evidence, closest_passage, compact_texts, context_vectors, sentence_evidence
from query_engine.grounding import MIN_JUDGED_CHARS, GroundedStream, GroundingReport, judged_length
from query_engine.prompts import (
    CLOSEST_PASSAGE,
    IN_SOURCE_LANGUAGE,
    LANGUAGE_NAMES,
    NOT_FOUND,
    SYSTEM_PROMPT,
    TRANSLATE_PROMPT,
    estimate_tokens,
    question_language,
)
from query_engine.relevance import RelevanceGate, Signals, signals
from query_engine.rerank import sentence_vectors
from query_engine.retrieval import HybridRetriever, to_node

_CITATION = re.compile(r"\[(\d{1,3})\]")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
# A thousands separator differs by language ("500,000", "500 000"): the digits are what a translation keeps.
_THOUSANDS = re.compile(r"(?<=\d)[,.\s\u00a0\u202f](?=\d{3}(?!\d))")
# The evidence (context.py: multilingual cosine + half the question-term share) a sentence of a source in another
# language than the question needs to be quoted when the model found no answer: chosen with `kb eval
# quote-threshold` on the dev sets (README, "Faithful citations"). Within one language no threshold kept
# unanswerable questions out (an alert without a runbook shares most words with its neighbours' runbooks), and
# the model refuses far less there, so same-language sources are never quoted in place of a refusal.
QUOTE_THRESHOLD = 0.50
# The sources' budget when the model is asked again after refusing sources judged relevant (engine._focused).
FOCUSED_SOURCE_TOKENS = 400
# Part of a cached answer's key: a changed system prompt makes older answers unreachable.
_PROMPT_DIGEST = hashlib.sha256((SYSTEM_PROMPT + TRANSLATE_PROMPT).encode()).hexdigest()[:16]


@dataclass
class SourceRef:
    """A numbered source as the answer cites it: [n] in the text maps to `n` here."""

    n: int
    collection: str
    doc_id: str
    section: str | None
    score: float
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    cited: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"n": self.n, "collection": self.collection, "path": self.doc_id, "section": self.section,
                "score": round(self.score, 4), "cited": self.cited, "snippet": self.text[:300],
                "metadata": {k: v for k, v in self.metadata.items() if k not in ("dense_rank", "sparse_rank")}}  # fmt: skip


@dataclass
class Retrieval:
    sources: list[SourceRef]
    timings: dict[str, float]
    answerable: bool
    signals: Signals | None = None


@dataclass
class Answer:
    text: str
    sources: list[SourceRef]
    timings: dict[str, float]
    language: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    grounding: dict[str, Any] = field(default_factory=dict)  # GroundingReport.as_dict() of the answer


@dataclass
class Delta:
    text: str


class LLMUnavailable(RuntimeError):
    """The LLM server cannot be reached; retrieval still works."""


class AnswerEngine:
    """Retrieval → rerank → prompt → LLM. Stateless per request; conversation memory is passed in."""

    def __init__(
        self,
        index: VectorIndex,
        embedder: Embedder,
        collections: Sequence[str],
        reranker: BaseNodePostprocessor,
        llm: LLM | None,
        context_window: int = 8192,
        max_answer_tokens: int = 512,
        top_n: int = 6,
        dense_languages: Sequence[str] | None = None,
        gate: RelevanceGate | None = None,
        source_tokens: int = 0,
        cache: QueryCache | None = None,
        exact_signals: bool = False,
    ) -> None:
        self.index = index
        self.embedder = embedder
        self.collections = list(collections)
        self.reranker = reranker
        self.llm = llm
        self.context_window = context_window
        self.max_answer_tokens = max_answer_tokens
        self.top_n = top_n
        self.dense_languages = dense_languages
        self.gate = gate or RelevanceGate.load()
        self.source_tokens = source_tokens  # 0: whole sources (context.py)
        self.cache = cache  # query vectors, retrievals and answers (cache.py); None: every request computed
        self.exact_signals = exact_signals  # every relevance signal computed (calibration), not just the deciding ones
        encoder = multilingual_encoder(embedder)
        self.sentences = sentence_vectors(encoder) if encoder is not None else None
        self.context_vectors = context_vectors(encoder) if encoder is not None else None

    def retrieve(self, question: str, collections: Sequence[str] | None = None, filters: Filters | None = None,
                 groups: Groups = None) -> Retrieval:  # fmt: skip
        """Sources for a question, best first, with per-stage timings and whether any is relevant enough;
        `groups` restricts retrieval to the documents the caller may read (assets/index.py)."""
        names, parts = self._request(question, collections, filters, groups)
        return self._retrieve(question, names, filters, groups, parts)

    def _request(self, question: str, collections: Sequence[str] | None, filters: Filters | None,
                 groups: Groups) -> tuple[list[str], dict[str, Any] | None]:  # fmt: skip
        """The collections to search, and with a cache, what keys this request (the index versions included)."""
        unknown = set(collections or []) - set(self.collections)
        if unknown:
            raise ValueError(f"unknown collection(s): {', '.join(sorted(unknown))}")
        names = list(collections or self.collections)
        if self.cache is None:
            return names, None
        return names, request_parts(question, names, groups, filters, self.index.versions(names))

    def _retrieve(self, question: str, names: list[str], filters: Filters | None, groups: Groups,
                  parts: dict[str, Any] | None) -> Retrieval:  # fmt: skip
        if self.cache is None or parts is None:
            return self._search(question, names, filters, groups)
        started = time.perf_counter()
        cached = self.cache.get_json("retrieval", parts)
        if cached is not None:
            return _retrieval_from(cached, {"cache_ms": _ms(started)})
        retrieval = self._search(question, names, filters, groups)
        self.cache.put_json("retrieval", parts, retrieval)
        return retrieval

    def _search(self, question: str, names: list[str], filters: Filters | None, groups: Groups) -> Retrieval:
        timings: dict[str, float] = {}
        retriever = HybridRetriever(self.index, self.embedder, names, top_k=self.top_n, candidates=50, filters=filters,
                                    dense_languages=self.dense_languages, groups=groups, cache=self.cache)  # fmt: skip
        candidates = retriever.search(question, timings)
        started = time.perf_counter()
        ranked = self.reranker.postprocess_nodes([to_node(c) for c in candidates], query_str=question)
        nodes = ranked[: self.top_n]
        timings["rerank_ms"] = round((time.perf_counter() - started) * 1000, 2)
        started = time.perf_counter()
        # Whether anything here answers the question: calibrated per language (query_engine/relevance.py).
        # The sentence signal only where it can change the decision, unless calibration needs every signal.
        found = signals(question, nodes, ranked, self.sentences, None if self.exact_signals else self.gate)
        relevant = self.gate.relevant(question, found)
        timings["gate_ms"] = round((time.perf_counter() - started) * 1000, 2)
        sources = [_source(n, i + 1) for i, n in enumerate(nodes)]
        return Retrieval(sources, timings, relevant, found)

    def evidence(self, question: str, retrieval: Retrieval) -> list[list[Evidence]] | None:
        """Per source, its sentences scored against the question (None without a multilingual encoder)."""
        if self.context_vectors is None or not retrieval.sources:
            return None
        return sentence_evidence(question, [s.text for s in retrieval.sources], self.context_vectors)

    def messages(
        self, question: str, retrieval: Retrieval, history: Sequence[ChatMessage] = (), summary: str | None = None,
        evidence: Sequence[Sequence[Evidence]] | None = None, source_tokens: int | None = None,
        answer_language: str | None = None,
    ) -> list[ChatMessage]:  # fmt: skip
        """System prompt with as many sources as fit, the conversation, then the question: the whole prompt
        stays under the context window minus the answer's tokens. With `evidence` and `source_tokens`, prose
        sources show only their sentences that bear on the question (context.py); `source_tokens` overrides the
        engine's budget for them. The answer is asked in the question's language unless `answer_language`."""
        language = answer_language or question_language(question)
        budget = self.context_window - self.max_answer_tokens - 64
        budget -= estimate_tokens(SYSTEM_PROMPT) + estimate_tokens(question) + (estimate_tokens(summary) if summary else 0)
        kept_history: list[ChatMessage] = []
        for message in reversed(history):  # newest first, until a third of the budget is spent
            cost = estimate_tokens(message.content or "") + 4
            if cost > budget // 3 - sum(estimate_tokens(m.content or "") + 4 for m in kept_history):
                break
            kept_history.insert(0, message)
        budget -= sum(estimate_tokens(m.content or "") + 4 for m in kept_history)
        texts = [s.text for s in retrieval.sources]
        budget_for_sources = self.source_tokens if source_tokens is None else source_tokens
        if evidence is not None and budget_for_sources > 0:
            texts = compact_texts(texts, [s.doc_id for s in retrieval.sources], evidence, budget_for_sources)
        blocks = []
        for source, text in zip(retrieval.sources, texts, strict=True):
            if not text:
                continue
            block = _source_block(source, text)
            if estimate_tokens(block) > budget:
                break
            blocks.append(block)
            budget -= estimate_tokens(block)
        system = SYSTEM_PROMPT.format(
            not_found=NOT_FOUND[language], language=LANGUAGE_NAMES[language], sources="\n\n".join(blocks)
        )
        if summary:
            system += f"\n\nSummary of the earlier conversation:\n{summary}"
        return [
            ChatMessage(role=MessageRole.SYSTEM, content=system),
            *kept_history,
            ChatMessage(role=MessageRole.USER, content=question),
        ]

    async def astream(
        self, question: str, history: Sequence[ChatMessage] = (), summary: str | None = None,
        collections: Sequence[str] | None = None, filters: Filters | None = None, llm: LLM | None = None,
        groups: Groups = None,
    ) -> AsyncIterator[Delta | Answer]:  # fmt: skip
        """Text deltas as the LLM writes them, then the final Answer (masked, with citations resolved);
        `llm` overrides the engine's model for this answer (model routing)."""
        llm = llm or self.llm
        started = time.perf_counter()
        # Embedding and index queries are blocking calls: keep them off the event loop.
        answer_key: dict[str, Any] | None = None
        # Only a first question is answered from the cache: with a conversation the answer depends on it.
        if self.cache is not None and not history and not summary:
            # One index-versions lookup keys both the answer and, on a miss, the retrieval.
            names, parts = await asyncio.to_thread(self._request, question, collections, filters, groups)
            answer_key = self._answer_key(parts, llm)
            cached = await asyncio.to_thread(self.cache.get_json, "answer", answer_key) if answer_key else None
            if cached is not None:
                answer = _answer_from(cached, _ms(started))
                yield Delta(answer.text)
                yield answer
                return
            retrieval = await asyncio.to_thread(self._retrieve, question, names, filters, groups, parts)
        else:
            retrieval = await asyncio.to_thread(self.retrieve, question, collections, filters, groups)
        language = question_language(question)
        if not retrieval.answerable:
            text = NOT_FOUND[language]
            yield Delta(text)
            yield Answer(text, [], {**retrieval.timings, "total_ms": _ms(started)}, language)
            return
        if llm is None:
            raise LLMUnavailable("no LLM is configured")
        scored = await asyncio.to_thread(self.evidence, question, retrieval)
        messages = self.messages(question, retrieval, history, summary, scored)
        parts: list[str] = []
        clock = _Clock(started)
        evidence = [question, *(m.content or "" for m in history), *([summary] if summary else [])]
        # Without a conversation, the sources are all an answer may draw on: a guess none of them supports is refused.
        grounded = GroundedStream(retrieval.sources, evidence, language, multilingual_encoder(self.embedder),
                                  redact=lambda text: mask_secrets(text).text,
                                  sources_only=not history and not summary, question=question)  # fmt: skip
        # The sources' vectors are computed while the LLM reads its prompt, off the event loop.
        preparing = asyncio.create_task(asyncio.to_thread(grounded.prepare))
        try:
            async for emitted in _generate(llm, messages, grounded, clock, preparing):
                parts.append(emitted)
                yield Delta(emitted)
        finally:
            await preparing
        tail = mask_secrets(grounded.feed("", final=True)).text
        report = grounded.report
        prompts = [messages]
        nothing_sent = not "".join(parts).strip()
        focused = self._focused(question, retrieval, scored, messages) if report.model_refused and nothing_sent else None
        if grounded.sources_only and focused is not None:
            # The model refused sources the relevance gate judged relevant, and nothing was sent: a small model
            # often does so when the answer is one sentence among many, above all across languages. It is
            # asked once more with only the sources holding the sentences that bear most on the question.
            prompt, answer_language = focused
            grounded = grounded.fresh(answer_language)
            prompts.append(prompt)
            if answer_language == language:
                async for emitted in _generate(llm, prompt, grounded, clock):
                    parts.append(emitted)
                    yield Delta(emitted)
                tail = mask_secrets(grounded.feed("", final=True)).text
                report = replace(grounded.report, retried=True)
            else:
                # Across languages it is asked to answer in its sources' language (the 1.5B model refuses
                # far less so), judged against them there, and what survives is translated for the asker.
                written = [e async for e in _generate(llm, prompt, grounded, clock)]
                written.append(mask_secrets(grounded.feed("", final=True)).text)
                report = replace(grounded.report, retried=True)
                tail, answered = NOT_FOUND[language], "".join(written).strip()
                refused = report.refused_after_grounding or report.model_refused
                if not refused and not report.cited_sentences and not _short_and_near(answered, grounded):
                    # Within the sources' language a statement they hold is cited (lexical support: 99 % of
                    # xquad's answers): an uncited one is a guess ("War and Peace was written by …" for an
                    # off-topic question the gate let through), unless it is a short answer ("17", "John
                    # Elway.") that its question, read with it, places near a source.
                    report, refused = replace(report, refused_after_grounding=True), True
                if not refused:
                    translation = _translation_messages(answered, language)
                    prompts.append(translation)
                    tail, translated = await _translated(llm, translation, language)
                    report = replace(report, translated=translated)
        passage = closest_passage(scored or [], _other_language(retrieval.sources, language))
        refusal = report.refused_after_grounding or report.model_refused
        if (
            grounded.sources_only
            and refusal
            and not "".join(parts).strip()
            and passage is not None
            and passage.score >= QUOTE_THRESHOLD
        ):
            # Nothing was sent yet (held back until a supported statement, or to the end) and the answer is a
            # refusal, while the relevance gate judged the sources relevant: the user gets the closest source
            # sentence in another language, quoted and cited (a small model often refuses across languages).
            tail, report = _quoted(passage, retrieval.sources, language, report)
        if tail:
            parts.append(tail)
            yield Delta(tail)
        text = "".join(parts)
        sources = _mark_cited(text, retrieval.sources)
        timings = {**retrieval.timings, "llm_first_token_ms": clock.first_token or _ms(started), "total_ms": _ms(started)}
        prompt_tokens = sum(estimate_tokens(m.content or "") for prompt in prompts for m in prompt)
        final = Answer(text, sources, timings, language, prompt_tokens, estimate_tokens(text), report.as_dict())
        if answer_key is not None and self.cache is not None:
            await asyncio.to_thread(self.cache.put_json, "answer", answer_key, final)
        yield final

    def _focused(
        self, question: str, retrieval: Retrieval, evidence: Sequence[Sequence[Evidence]] | None,
        asked: list[ChatMessage],
    ) -> tuple[list[ChatMessage], str] | None:  # fmt: skip
        """The prompt asked again after a refusal and the language it asks the answer in: the sources holding
        the two sentences with the strongest evidence for the question, each cut to its sentences that bear on
        it (FOCUSED_SOURCE_TOKENS in all), under their own numbers, and their language when they share one other
        than the question's; None when that is the prompt already `asked`."""
        if not evidence:
            return None
        best = sorted((e for per_source in evidence for e in per_source), key=lambda e: e.score, reverse=True)
        keep = sorted(list(dict.fromkeys(e.source for e in best))[:2])
        if not keep:
            return None
        narrowed = replace(retrieval, sources=[retrieval.sources[i] for i in keep])
        renumbered = [[replace(e, source=k) for e in evidence[i]] for k, i in enumerate(keep)]
        source_languages = {question_language(s.text) for s in narrowed.sources}
        answer_language = source_languages.pop() if len(source_languages) == 1 else question_language(question)
        focused = self.messages(question, narrowed, evidence=renumbered, source_tokens=FOCUSED_SOURCE_TOKENS,
                                answer_language=answer_language)  # fmt: skip
        return None if [m.content for m in focused] == [m.content for m in asked] else (focused, answer_language)

    def _answer_key(self, parts: dict[str, Any] | None, llm: LLM | None) -> dict[str, Any] | None:
        """The retrieval's key and what else decides the answer: the model, the prompt and its budgets."""
        if parts is None or llm is None:
            return None
        return {**parts, "model": llm.metadata.model_name, "prompt": _PROMPT_DIGEST, "source_tokens": self.source_tokens,
                "context_window": self.context_window, "max_answer_tokens": self.max_answer_tokens}  # fmt: skip

    async def answer(self, question: str, history: Sequence[ChatMessage] = (), summary: str | None = None,
                     collections: Sequence[str] | None = None, filters: Filters | None = None,
                     groups: Groups = None) -> Answer:  # fmt: skip
        final: Answer | None = None
        async for event in self.astream(question, history, summary, collections, filters, groups=groups):
            if isinstance(event, Answer):
                final = event
        assert final is not None
        return final


@dataclass
class _Clock:
    started: float
    first_token: float | None = None


async def _generate(
    llm: LLM, messages: list[ChatMessage], grounded: GroundedStream, clock: _Clock, ready: asyncio.Task[None] | None = None
) -> AsyncIterator[str]:
    """What the model writes, through grounding and masking, as it may be sent; `clock` notes the first token,
    and grounding waits for `ready` (the sources' vectors) before it judges the first one."""
    async with _llm_reachable():
        stream = await llm.astream_chat(messages)
        async for chunk in stream:
            delta = chunk.delta or ""
            if delta and clock.first_token is None:
                clock.first_token = _ms(clock.started)
            if delta and ready is not None:
                await ready
            emitted = mask_secrets(grounded.feed(delta)).text
            if emitted:
                yield emitted


@contextlib.asynccontextmanager
async def _llm_reachable() -> AsyncIterator[None]:
    """An LLM call whose connection errors (the client library raises its own) become LLMUnavailable."""
    try:
        yield
    except Exception as exc:
        if _is_connection_error(exc):
            raise LLMUnavailable(f"the LLM server is not reachable: {exc}") from exc
        raise


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


def _source(node: NodeWithScore, n: int) -> SourceRef:
    meta = dict(node.node.metadata)
    return SourceRef(n, str(meta.pop("collection", "")), str(meta.pop("doc_id", "")), meta.get("section") or meta.get("symbol"),
                     float(node.score or 0.0), node.node.get_content(), meta)  # fmt: skip


def _retrieval_from(cached: dict[str, Any], timings: dict[str, float]) -> Retrieval:
    """A cached retrieval (cache.py stores it as JSON); its timings are this lookup's."""
    found = cached.get("signals")
    return Retrieval([SourceRef(**s) for s in cached["sources"]], timings, bool(cached["answerable"]),
                     Signals(**found) if found else None)  # fmt: skip


def _answer_from(cached: dict[str, Any], elapsed_ms: float) -> Answer:
    """A cached answer with its sources and grounding report; timed as served now (the first text is the whole)."""
    timings = {"cache_ms": elapsed_ms, "llm_first_token_ms": elapsed_ms, "total_ms": elapsed_ms}
    if "llm_first_token_ms" not in cached["timings"]:
        timings.pop("llm_first_token_ms")  # a refusal stays one (api/metrics.py reads the outcome from this)
    return Answer(cached["text"], [SourceRef(**s) for s in cached["sources"]], timings, cached["language"],
                  cached["prompt_tokens"], cached["completion_tokens"], cached["grounding"])  # fmt: skip


def _source_block(source: SourceRef, text: str) -> str:
    where = f"{source.collection}/{source.doc_id}" + (f" § {source.section}" if source.section else "")
    return f"[{source.n}] {where}\n{text}"


def _other_language(sources: Sequence[SourceRef], language: str) -> set[int]:
    """Indices of the sources written in another language than the question's."""
    return {i for i, s in enumerate(sources) if question_language(s.text) != language}


def _quoted(passage: Evidence, sources: Sequence[SourceRef], language: str, held: GroundingReport) -> tuple[str, GroundingReport]:
    """The answer that quotes a source sentence, and its grounding report: one statement, cited, supported by
    construction; what the model wrote (withheld) is still counted in the report."""
    source = sources[passage.source]
    lead = CLOSEST_PASSAGE.get(language, CLOSEST_PASSAGE["en"]).format(n=source.n)
    quote = " ".join(mask_secrets(passage.text).text.split())
    report = replace(held, sentences=held.sentences + 1, cited_sentences=1, supported_citations=1,
                     withheld_sentences=held.sentences, refused_after_grounding=False, closest_passage=True)  # fmt: skip
    return f"{lead}\n\n> {quote} [{source.n}]", report


def _short_and_near(answer: str, grounded: GroundedStream) -> bool:
    return judged_length(answer) < MIN_JUDGED_CHARS and grounded.near_with_question(answer)


def _translation_messages(text: str, language: str) -> list[ChatMessage]:
    return [ChatMessage(role=MessageRole.SYSTEM, content=TRANSLATE_PROMPT.format(language=LANGUAGE_NAMES[language])),
            ChatMessage(role=MessageRole.USER, content=text)]  # fmt: skip


async def _translated(llm: LLM, messages: list[ChatMessage], language: str) -> tuple[str, bool]:
    """The grounded answer (the last message) in `language`, and whether it was translated: a translation that
    is in another language, or does not keep the answer's markers and numbers, is not shown; the answer is,
    in its sources' language, after a lead that says so."""
    original = messages[-1].content or ""
    # Streamed like every other call: a non-streaming call leaves the client's pooled connection bound to its
    # event loop, which the next answer's loop (one per question in `kb eval answers`) cannot use.
    written: list[str] = []
    async with _llm_reachable():
        async for chunk in await llm.astream_chat(messages):
            written.append(chunk.delta or "")
    translation = mask_secrets("".join(written).strip()).text
    wordless = not any(ch.isalpha() for ch in translation)  # "48 [1]" is in every language
    if translation and _keeps_facts(original, translation) and (wordless or question_language(translation) == language):
        return translation, True
    return f"{IN_SOURCE_LANGUAGE[language]}\n\n{original}", False


def _keeps_facts(original: str, translation: str) -> bool:
    """Whether a translation cites exactly the original's sources and states no number the original does not."""
    numbers = set(_numbers_in(original))
    return set(_CITATION.findall(translation)) == set(_CITATION.findall(original)) and all(
        n in numbers for n in _numbers_in(translation)
    )


def _numbers_in(text: str) -> list[str]:
    return _NUMBER.findall(_THOUSANDS.sub("", _CITATION.sub(" ", text)))


def _mark_cited(text: str, sources: list[SourceRef]) -> list[SourceRef]:
    cited = {int(n) for n in _CITATION.findall(text)}
    for source in sources:
        source.cited = source.n in cited
    return sources


def _is_connection_error(exc: Exception) -> bool:
    import httpx

    names = {type(e).__name__ for e in (exc, exc.__cause__, exc.__context__) if e is not None}
    return bool(names & {"APIConnectionError", "ConnectError", "ConnectionError", "ConnectTimeout"}) or isinstance(
        exc, httpx.ConnectError
    )
