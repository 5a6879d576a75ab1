"""What the LLM reads of the sources: of each prose source, the sentences that bear on the question.

A small model answers better from less: six whole 512-token chunks bury the one sentence that answers
under text about neighbouring things (and across languages it then often writes the not-found sentence),
and every prompt token costs time before the first answer token on a CPU. So each prose source is cut
down to its sentences ranked by their evidence for the question (the multilingual encoder's cosine,
which reads across languages, plus the share of the question's terms, which catches names and numbers),
under one token budget for all sources. The top-ranked source is shown whole when it takes at most half
the budget (reranking puts the answering chunk first most of the time, and a sentence that answers can
score low: "Retention is 7 days" against "Какой срок хранения событий…?"); every other source keeps its
best sentence and the one after it (an answer often sits next to the sentence that names the subject),
then sentences by score. Code and manifests stay whole, since lines cut out of them change what they
mean. Kept sentences stay in their order, a gap shows as " … ". Sentences are those of the prose, with
hard-wrapped lines joined (`prose_sentences`), not the lines the reranker's cache splits on.

The same evidence picks the passage quoted when the model finds no answer in sources in another language
that the relevance gate judged relevant (engine.py, `closest_passage`)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cache

import numpy as np

from assets.embed import Embedder
from assets.parse import document_kind
from query_engine.grounding import content_terms
from query_engine.prompts import estimate_tokens
from query_engine.rerank import SentenceVectors

# Weight of the question-term share next to the cosine (0..1 each): names and numbers match across
# languages, where the cosine alone blurs them.
LEXICAL_WEIGHT = 0.5
# Sources at most this long are kept whole: cutting them saves little and loses context.
WHOLE_SOURCE_TOKENS = 120
# The share of the budget the top-ranked source may take and still be shown whole.
LEAD_SHARE = 0.5
GAP = " … "
MAX_SENTENCES = 64
# A line that starts a unit of its own rather than continuing a hard-wrapped sentence.
_BLOCK_START = re.compile(r"\s*(?:#{1,6}\s|[-*+]\s|\d+[.)]\s|\||>|```)")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)|(?<=[。！？；])")


@dataclass(frozen=True)
class Evidence:
    """One sentence of one source and how strongly it bears on the question."""

    source: int  # index into the sources as ranked
    position: int  # the sentence's place in its source
    text: str
    score: float


def prose_sentences(text: str) -> list[str]:
    """The sentences of a text, with hard-wrapped lines of one paragraph joined; headings, list items and
    table rows are units of their own."""
    units: list[str] = []
    for block in re.split(r"\n\s*\n", text):
        lines: list[str] = []
        for line in block.splitlines():
            if not line.strip():
                continue
            if lines and not _BLOCK_START.match(line) and not lines[-1].startswith("#"):
                lines[-1] += " " + line.strip()
            else:
                lines.append(line.strip())
        for line in lines:
            units.extend(part.strip() for part in _SENTENCE_END.split(line) if part.strip())
    return units[:MAX_SENTENCES]


@cache
def context_vectors(encoder: Embedder) -> SentenceVectors:
    """Vectors of prose sentences per source text, one cache per encoder and process."""
    return SentenceVectors(encoder, split=prose_sentences)


def sentence_evidence(question: str, texts: Sequence[str], vectors: SentenceVectors) -> list[list[Evidence]]:
    """Per source, its sentences (the units `vectors` splits texts into) scored against the question."""
    query = vectors.encoder.embed_queries([question])[0]
    terms = content_terms(question)
    scored: list[list[Evidence]] = []
    for i, (text, matrix) in enumerate(zip(texts, vectors.of(list(texts)), strict=True)):
        parts = vectors.split(text) or [text[:500]]
        cosines = matrix @ query if len(matrix) else np.zeros(len(parts), np.float32)
        scored.append([
            Evidence(i, j, part, float(cosines[j]) + LEXICAL_WEIGHT * _term_share(terms, part))
            for j, part in enumerate(parts)
        ])  # fmt: skip
    return scored


def compact_texts(texts: Sequence[str], doc_ids: Sequence[str], evidence: Sequence[Sequence[Evidence]], budget: int) -> list[str]:
    """The text of each source to show, all together within about `budget` tokens: short sources and code
    whole, prose as its strongest sentences. A source that nothing of fits is left out (empty string);
    sources are ranked, so the ones left out are the last."""
    whole = [
        len(evidence[i]) <= 1 or estimate_tokens(t) <= WHOLE_SOURCE_TOKENS or document_kind(doc_ids[i], "prose") != "prose"
        or (i == 0 and estimate_tokens(t) <= budget * LEAD_SHARE)
        for i, t in enumerate(texts)
    ]  # fmt: skip
    kept: dict[int, set[int]] = {i: set() for i in range(len(texts))}
    spent = 0
    shown = [False] * len(texts)
    for i, text in enumerate(texts):  # in rank order: whole sources first claim their room
        if whole[i] and spent + estimate_tokens(text) <= budget:
            shown[i], spent = True, spent + estimate_tokens(text)
    for unit in _priority(evidence, whole):
        cost = estimate_tokens(unit.text) + 1
        if spent + cost > budget:
            continue
        kept[unit.source].add(unit.position)
        spent += cost
    return [
        text if whole[i] and shown[i] else "" if whole[i] else _join(evidence[i], kept[i])
        for i, text in enumerate(texts)
    ]  # fmt: skip


def closest_passage(evidence: Sequence[Sequence[Evidence]], among: set[int] | None = None) -> Evidence | None:
    """The sentence with the strongest evidence for the question, of all sources or of those in `among`, with
    the sentence after it when that one says something (the answer often follows the sentence that names the
    subject); headings and fragments are never quoted: they name a subject without saying anything about it."""
    units = [
        e for i, per_source in enumerate(evidence) if among is None or i in among for e in per_source if _says_something(e.text)
    ]  # fmt: skip
    if not units:
        return None
    best = max(units, key=lambda e: e.score)
    after = [e for e in evidence[best.source] if e.position == best.position + 1 and _says_something(e.text)]
    return replace(best, text=" ".join([best.text, *(e.text for e in after)])) if after else best


def _priority(evidence: Sequence[Sequence[Evidence]], whole: Sequence[bool]) -> list[Evidence]:
    """Prose sentences in the order they claim the budget: each source's best sentence and the one after it
    (sources in rank order), then every other sentence by its score."""
    first: list[Evidence] = []
    rest: list[Evidence] = []
    for i, per_source in enumerate(evidence):
        if whole[i] or not per_source:
            continue
        best = max(per_source, key=lambda e: e.score)
        lead = [best, *(e for e in per_source if e.position == best.position + 1)]
        first.extend(lead)
        rest.extend(e for e in per_source if e not in lead)
    return first + sorted(rest, key=lambda e: -e.score)


def _join(per_source: Sequence[Evidence], positions: set[int]) -> str:
    parts: list[str] = []
    previous = -1
    for unit in per_source:
        if unit.position not in positions:
            continue
        if parts and unit.position != previous + 1:
            parts.append(GAP.strip())
        parts.append(unit.text)
        previous = unit.position
    if parts and previous != per_source[-1].position:
        parts.append(GAP.strip())
    if parts and per_source[0].position not in positions:
        parts.insert(0, GAP.strip())
    return " ".join(parts)


def _says_something(sentence: str) -> bool:
    cjk = sum(1 for ch in sentence if "\u3400" <= ch <= "\u9fff")
    return not sentence.startswith("#") and (len(sentence.split()) >= 4 or cjk >= 8)


def _term_share(terms: set[str], sentence: str) -> float:
    return len(terms & content_terms(sentence)) / len(terms) if terms else 0.0
