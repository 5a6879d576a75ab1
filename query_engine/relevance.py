"""Whether retrieval found anything to answer from: a per-language logistic decision over three
retrieval signals, calibrated on the dev splits (`kb eval calibrate`, README "Calibrated refusal").

The signals, for the reranked top sources:
- `dense`: the best dense cosine (the embedding model's own cosine, whatever the query language);
- `sentence`: the best cosine between the question and one sentence of a source, from the multilingual
  encoder (0 without one), which reads across languages and does not blur the answering sentence;
- `coverage`: the best share of the question's terms found in one source, each term weighted by how
  rare it is among the candidates, so that function words ("what", "is", "как") weigh little.
Questions from one evaluation set run against another set's corpus are the negatives, each set's own
questions the positives; the threshold keeps refused answerable questions at or under a target rate.

A question answered from sources in another language (a Russian question about English documents) has
no term coverage to speak of (only names and numbers match), so it gets a gate of its own, keyed
`ru>x`, calibrated on such pairs alone: mixed with same-language questions, the coverage weight those
earn made the gate refuse cross-lingual questions several times as often as its target.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from llama_index.core.schema import NodeWithScore

from assets.parse import detect_language
from assets.sparse import analyze
from query_engine.rerank import SentenceVectors

GATE_FILE = Path(__file__).with_name("relevance_gate.json")
FEATURES = ("dense", "sentence", "coverage")
SENTENCE_RANGE = (-1.0, 1.0)  # what a cosine can be: the sentence signal's bounds


@dataclass(frozen=True)
class Signals:
    dense: float
    sentence: float
    coverage: float
    # The best source is written in another language than the question (not a feature: it picks the gate).
    cross_lingual: bool = False

    def vector(self) -> list[float]:
        return [self.dense, self.sentence, self.coverage]


@dataclass(frozen=True)
class LanguageGate:
    """P(relevant) = sigmoid(bias + Σ weight·signal); relevant when P ≥ threshold."""

    bias: float
    weights: tuple[float, float, float]
    threshold: float

    def probability(self, signals: Signals) -> float:
        z = self.bias + sum(w * x for w, x in zip(self.weights, signals.vector(), strict=True))
        return 1 / (1 + math.exp(-max(min(z, 40.0), -40.0)))


def signals(question: str, top: Sequence[NodeWithScore], candidates: Sequence[NodeWithScore],
            sentences: SentenceVectors | None, gate: RelevanceGate | None = None) -> Signals:  # fmt: skip
    """The three signals of the top sources; `candidates` (all fused candidates) weigh the terms. With `gate`, the
    sentence signal (the costly one: every sentence of the top sources through the multilingual encoder) is
    computed only where it can change the gate's decision, and is NaN where the decision holds without it."""
    if not top:
        return Signals(0.0, 0.0, 0.0)
    dense = max(float(n.node.metadata.get("dense_score") or 0.0) for n in top)
    source_language = top[0].node.metadata.get("lang")
    cross = source_language is not None and source_language != detect_language(question)
    partial = Signals(dense, math.nan, _weighted_coverage(question, top, candidates), cross)
    if sentences is None:
        return replace(partial, sentence=0.0)
    texts = [n.node.get_content() for n in top]
    if gate is None:
        return replace(partial, sentence=max(sentences.best_sentence(question, texts)))
    if gate.decided(question, partial) is not None:
        return partial
    # The best sentence so far is a lower bound of the signal: once the decision is the same there as at the top of
    # the range (the gate is monotonic in the signal), no later source can change it. Sources in rank order, the
    # likeliest to hold the best sentence first; the decision is exactly the one every sentence would give.
    best = sentences.closest_until(question, texts, lambda s: gate.settled(question, replace(partial, sentence=s)))
    return replace(partial, sentence=best)


def gate_key(language: str, cross_lingual: bool) -> str:
    """`ru` for Russian questions on Russian sources, `ru>x` on sources in another language."""
    return f"{language}>x" if cross_lingual else language


def _weighted_coverage(question: str, top: Sequence[NodeWithScore], candidates: Sequence[NodeWithScore]) -> float:
    terms = set(analyze(question))
    if not terms:
        return 0.0
    # Each text is analysed once: the top sources are among the candidates (the reranked list).
    analysed = {id(n): set(analyze(n.node.get_content())) for n in (*candidates, *top)}
    pool = [analysed[id(n)] for n in (candidates or top)]
    # A term in every candidate tells nothing about relevance; one in few of them tells most.
    weight = {t: math.log(1 + len(pool) / (1 + sum(t in chunk for chunk in pool))) for t in terms}
    total = sum(weight.values()) or 1.0
    return max(sum(weight[t] for t in terms & analysed[id(n)]) / total for n in top)


class RelevanceGate:
    """The calibrated decision per query language (and cross-lingual pair); a key without one falls
    back to the question language's, then to English's."""

    def __init__(self, gates: dict[str, LanguageGate]) -> None:
        if "en" not in gates:
            raise ValueError("the relevance gate needs at least an 'en' entry")
        self.gates = gates

    @classmethod
    def load(cls, path: Path = GATE_FILE) -> RelevanceGate:
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls({lang: LanguageGate(g["bias"], tuple(g["weights"]), g["threshold"]) for lang, g in data["languages"].items()})

    def gate(self, question: str, cross_lingual: bool = False) -> LanguageGate:
        language = detect_language(question)
        return self.gates.get(gate_key(language, cross_lingual)) or self.gates.get(language) or self.gates["en"]

    def relevant(self, question: str, found: Signals) -> bool:
        if math.isnan(found.sentence):  # left out by `signals` because the decision holds without it
            return bool(self.decided(question, found))
        gate = self.gate(question, found.cross_lingual)
        return gate.probability(found) >= gate.threshold

    def settled(self, question: str, lower: Signals) -> bool:
        """Whether the decision at `lower` (the sentence signal a lower bound) holds for every higher value of it."""
        gate = self.gate(question, lower.cross_lingual)
        top = replace(lower, sentence=SENTENCE_RANGE[1])
        return (gate.probability(lower) >= gate.threshold) == (gate.probability(top) >= gate.threshold)

    def decided(self, question: str, partial: Signals) -> bool | None:
        """The decision when it is the same for every value the sentence signal can take (a cosine: -1 to 1; the
        gate is monotonic in it), else None."""
        gate = self.gate(question, partial.cross_lingual)
        low, high = (gate.probability(replace(partial, sentence=s)) >= gate.threshold for s in SENTENCE_RANGE)
        return low if low == high else None


def save_gate(path: Path, gates: dict[str, LanguageGate], about: dict[str, object]) -> None:
    payload = {"about": about, "features": list(FEATURES),
               "languages": {lang: {**asdict(g), "weights": list(g.weights)} for lang, g in sorted(gates.items())}}  # fmt: skip
    path.write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
