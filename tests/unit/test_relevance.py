"""The calibrated relevance gate, its calibration, and the language-aware fusion weights of reranking."""

from __future__ import annotations

import numpy as np
from llama_index.core.schema import NodeWithScore, TextNode

from evals.calibrate import Sample, fit_gate, fit_logistic, gate_samples, rates
from query_engine.relevance import LanguageGate, RelevanceGate, Signals, _weighted_coverage, signals
from query_engine.rerank import EvidenceReranker, sentences


def node(text: str, **metadata: object) -> NodeWithScore:
    return NodeWithScore(node=TextNode(text=text, metadata=dict(metadata)), score=0.0)


def test_the_packaged_gate_covers_every_supported_language() -> None:
    gate = RelevanceGate.load()
    assert {"en", "ru", "zh"} <= set(gate.gates)
    for language_gate in gate.gates.values():
        assert 0.0 < language_gate.threshold < 1.0
        # More evidence never makes a source less relevant.
        weak, strong = Signals(0.1, 0.1, 0.1), Signals(0.9, 0.9, 0.9)
        assert language_gate.probability(strong) > language_gate.probability(weak)
    assert gate.gate("Какой срок хранения?") is gate.gates["ru"]
    assert gate.gate("保留期是多久?") is gate.gates["zh"]


def test_coverage_weighs_rare_terms_over_words_every_candidate_has() -> None:
    pool = [node(f"The ledger is the source of truth for balances, part {i}.") for i in range(9)]
    pool.append(node("Kafka retention of the payments.events topic is seven days."))
    # "the" and "of" are in every candidate; "retention" and "kafka" in one.
    on_topic = _weighted_coverage("What is the retention of the Kafka topic?", [pool[-1]], pool)
    off_topic = _weighted_coverage("What is the capital of France?", pool[:1], pool)
    assert on_topic > 0.6
    assert off_topic < 0.3


def test_calibration_refuses_at_most_the_target_share_of_answerable_questions() -> None:
    rng = np.random.default_rng(7)
    samples = [
        Sample("c", "pos" if relevant else "neg", f"q{i}", "en", tuple(rng.normal(0.6 if relevant else 0.3, 0.1, 3)), relevant)
        for i, relevant in enumerate([True] * 200 + [False] * 200)
    ]
    gate = fit_gate(samples, target_refusal=0.05)
    measured = rates(gate, samples)
    assert measured["refused_answerable"] <= 0.05
    assert measured["refused_unanswerable"] > 0.8  # well separated signals: most negatives refused
    bias, weights = fit_logistic(np.array([s.signals for s in samples]), np.array([s.relevant for s in samples], dtype=float))
    assert all(w > 0 for w in weights) and bias < 0


def test_a_question_answered_from_another_language_gets_its_own_gate_where_one_is_calibrated() -> None:
    same, cross = LanguageGate(-5.0, (1.0, 1.0, 9.0), 0.5), LanguageGate(-2.0, (4.0, 4.0, 0.0), 0.5)
    gate = RelevanceGate({"en": same, "ru": same, "ru>x": cross})
    english_source = [node("Retention of the payments.events topic is seven days.", lang="en")]
    found = signals("Какой срок хранения топика?", english_source, english_source, None)
    assert found.cross_lingual and found.coverage < 0.2
    assert gate.gate("Какой срок хранения?", cross_lingual=True) is cross
    assert gate.gate("Какой срок хранения?") is same
    # No zh>x gate calibrated: Chinese questions on English sources fall back to the language's gate.
    assert RelevanceGate({"en": same, "zh": cross}).gate("保留期是多久?", cross_lingual=True) is cross


def test_a_cross_lingual_gate_is_fitted_only_where_the_languages_gate_refuses_too_many_of_its_pairs() -> None:
    rng = np.random.default_rng(3)

    def sample(i: int, relevant: bool, cross: bool) -> Sample:
        # Same-language answerable questions match many terms; cross-lingual ones almost none.
        coverage = 0.0 if cross else (0.8 if relevant else 0.1)
        dense = rng.normal(0.45 if relevant else 0.2, 0.05)
        return Sample("c", "p", f"q{i}", "ru", (dense, dense, coverage), relevant, cross)

    mixed = [sample(i, True, False) for i in range(120)] + [sample(200 + i, True, True) for i in range(120)]
    mixed += [sample(400 + i, False, True) for i in range(200)]
    fitted = gate_samples(mixed, target_refusal=0.03)
    assert set(fitted) == {"ru", "ru>x"} and len(fitted["ru>x"]) == 320 and len(fitted["ru"]) == 440
    no_negatives = [sample(i, True, True) for i in range(80)]
    assert set(gate_samples(no_negatives, target_refusal=0.03)) == {"ru"}
    # Cross-lingual pairs the language's gate already lets through: no gate of their own.
    alike = [sample(i, True, True) for i in range(120)] + [sample(200 + i, False, True) for i in range(120)]
    assert set(gate_samples(alike, target_refusal=0.03)) == {"ru"}


def test_a_gate_without_english_is_refused() -> None:
    try:
        RelevanceGate({"ru": LanguageGate(0.0, (1.0, 1.0, 1.0), 0.5)})
    except ValueError as exc:
        assert "en" in str(exc)
    else:
        raise AssertionError("a gate without a fallback language was accepted")


def test_bm25_counts_less_for_a_chunk_in_another_language_than_the_question() -> None:
    reranker = EvidenceReranker(collection_weights={"docs": 0.5}, cross_language_dense_weight=0.9)
    same = node("Срок хранения", collection="docs", lang="ru")
    other = node("Retention", collection="docs", lang="en")
    unknown = node("Retention", collection="elsewhere")
    assert reranker._dense_weight(same, "ru") == 0.5
    assert reranker._dense_weight(other, "ru") == 0.9
    assert reranker._dense_weight(unknown, "ru") == reranker.dense_weight


def test_a_collection_without_document_evidence_ranks_its_chunks_by_their_own_scores() -> None:
    """k8s manifests (document_weight 0): a file holding many matching resources does not lift its weaker
    chunk above a better chunk of another file; elsewhere the document's second chunk still counts."""
    from llama_index.core.schema import QueryBundle

    def ranked(document_weights: dict[str, float]) -> list[str]:
        reranker = EvidenceReranker(collection_weights={"k8s": 1.0}, collection_document_weights=document_weights)
        chunks = [
            node("deployment a", collection="k8s", doc_id="many.yaml", dense_score=0.70, id="many-1"),
            node("service a", collection="k8s", doc_id="many.yaml", dense_score=0.69, id="many-2"),
            node("deployment b", collection="k8s", doc_id="one.yaml", dense_score=0.695, id="one"),
            node("configmap", collection="k8s", doc_id="far.yaml", dense_score=0.50, id="far"),
        ]
        return [n.node.metadata["id"] for n in reranker.postprocess_nodes(chunks, QueryBundle("zzz"))]

    assert ranked({"k8s": 0.0}) == ["many-1", "one", "many-2", "far"]
    assert ranked({}) == ["many-1", "many-2", "one", "far"]


def test_sentences_split_prose_in_every_script() -> None:
    assert sentences("Retries run every 30 minutes. The batch is idempotent! Can it be re-run? Yes.") == [
        "Retries run every 30 minutes.",
        "The batch is idempotent!",
        "Can it be re-run?",
    ]
    assert sentences("批处理每30分钟重试一次。批处理是幂等的,可以重新运行。") == [
        "批处理每30分钟重试一次。",
        "批处理是幂等的,可以重新运行。",
    ]


def test_a_decision_taken_without_the_sentence_signal_is_the_one_the_full_signals_give() -> None:
    """The sentence signal is computed only where it can change the decision (it costs an encoder pass over
    every sentence of the top sources): wherever the gate decides without it, any sentence value agrees."""
    import math
    import random

    gate = RelevanceGate.load()
    rng = random.Random(7)
    decided = 0
    for _ in range(4000):
        question = rng.choice(["How long is retention?", "Какой срок хранения?", "保留多久?"])
        partial = Signals(rng.uniform(0, 1), math.nan, rng.uniform(0, 1), cross_lingual=rng.random() < 0.5)
        decision = gate.decided(question, partial)
        if decision is None:
            continue
        decided += 1
        assert gate.relevant(question, partial) is decision
        for sentence in (-1.0, -0.2, 0.0, 0.3, 0.7, 1.0):
            assert gate.relevant(question, Signals(partial.dense, sentence, partial.coverage, partial.cross_lingual)) is decision
    assert decided > 1000  # the shortcut is taken often enough to matter (on uniform signals)


class _ScoredSentences:
    """Sentence vectors stand-in: each text's best sentence cosine is given; counts the texts it was asked to read."""

    def __init__(self, best: dict[str, float]) -> None:
        self.best = best
        self.read = 0

    def best_sentence(self, query: str, texts: list[str]) -> list[float]:
        self.read += len(texts)
        return [self.best[t] for t in texts]

    def closest_until(self, query: str, texts: list[str], enough) -> float:  # type: ignore[no-untyped-def]
        best = -1.0
        for text in texts:
            self.read += 1
            best = max(best, self.best[text])
            if enough(best):
                break
        return best


def test_sources_read_until_the_decision_is_settled_give_the_decision_every_sentence_gives() -> None:
    """The sentence signal is the best over the top sources; read in rank order, it stops once no later source can
    change the decision. Random sources and scores: the same decision as reading all of them, and fewer read."""
    import random

    gate = RelevanceGate.load()
    rng = random.Random(11)
    saved = 0
    for trial in range(1500):
        question = rng.choice(["How long is retention of the payments topic?", "Какой срок хранения?", "保留多久?"])
        texts = [f"source {trial}-{i} about retention" for i in range(6)]
        scores = {t: rng.uniform(-0.2, 0.9) for t in texts}
        top = [node(t, dense_score=rng.uniform(0.0, 0.8), lang="en") for t in texts]
        early, full = _ScoredSentences(scores), _ScoredSentences(scores)
        found = signals(question, top, top, early, gate)  # type: ignore[arg-type]
        exact = signals(question, top, top, full)  # type: ignore[arg-type]
        assert exact.sentence == max(scores.values())
        assert gate.relevant(question, found) == gate.relevant(question, exact)
        saved += full.read - early.read
    assert saved > 1500, "the early stop reads fewer sources often enough to matter"
