"""Choose the evidence a source sentence needs before the engine quotes it in place of a refusal
(`QUOTE_THRESHOLD` in query_engine/engine.py).

The quote applies only where the relevance gate judged the sources relevant and the model still wrote no
statement a source supports. So each dev question goes through `AnswerEngine.retrieve` with the real
gate; for those it lets through, the closest passage (query_engine/context.py) is scored:
- answerable questions: whether the quoted sentence comes from a relevant document, and (sets with
  reference answers) whether it contains the answer in the corpus's language;
- unanswerable ones (the set's alerts without a runbook, general-knowledge questions in en/ru/zh): any
  quote is wrong, since it cites a knowledge-base document for something it does not say.
The engine quotes only sentences of sources in another language than the question (within one language an
alert without a runbook shares most words with its neighbours' runbooks, and no threshold kept it out), so
the threshold is the lowest on a grid at which no unanswerable question the gate let through would get a
quote from a source in another language; the same-language curve is reported alongside."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from evals.answers import contains, no_answer_questions, off_topic_questions
from evals.datasets import load_dataset
from evals.suite import ingested
from kb.settings import EmbeddingSettings, PlatformSettings
from query_engine.context import closest_passage
from query_engine.engine import AnswerEngine
from query_engine.prompts import question_language
from query_engine.rerank import default_reranker

# (set, question variant, corpus variant): xquad's questions in every language over its English corpus
# (the case the quote is for: a small model refusing across languages), and runbooks with their alerts.
CASES: tuple[tuple[str, str | None, str | None], ...] = (
    ("xquad_en_ru_zh", "en", "en"),
    ("xquad_en_ru_zh", "ru", "en"),
    ("xquad_en_ru_zh", "zh", "en"),
    ("prom_runbooks", None, None),
)
GRID = tuple(round(0.30 + 0.05 * i, 2) for i in range(12))


@dataclass(frozen=True)
class QuoteSample:
    case: str
    question: str
    answerable: bool
    score: float
    relevant_source: bool  # the quoted sentence's document is one the question was written for
    holds_answer: bool | None  # the sentence contains a reference answer (None: the set has none)
    cross_lingual: bool  # the quoted sentence's source is in another language than the question


def collect(evalsets: Path, limit: int, probes: int, console: Console) -> list[QuoteSample]:
    platform, embedding = PlatformSettings(), EmbeddingSettings()
    embedder = embedding.load()
    samples: list[QuoteSample] = []
    corpora: dict[tuple[str, str | None], list[tuple[str | None, str | None]]] = {}
    for name, variant, corpus in CASES:
        corpora.setdefault((name, corpus), []).append((variant, corpus))
    for (name, corpus), variants in corpora.items():
        first = load_dataset(evalsets / name, variants[0][0], corpus, None)
        with ingested(first, platform, embedder, console) as (built, index, _):
            engine = AnswerEngine(index, embedder, [built.collection], default_reranker(embedder=embedder, specs=[built.spec]),
                                  None, dense_languages=embedding.languages)  # fmt: skip
            for variant, corpus_variant in variants:
                evalset = load_dataset(evalsets / name, variant, corpus_variant, None)
                label = evalset.label
                language = variant if variant in ("en", "ru", "zh") else "en"
                asked = [
                    (q.text, True, evalset.qrels.get(q.id, set()), evalset.answers.get(q.id, [])) for q in evalset.queries[:limit]
                ]
                asked += [(t, False, set(), []) for t in no_answer_questions(evalsets / name, probes)]
                asked += [(t, False, set(), []) for t in off_topic_questions(language, probes)]
                with console.status(f"closest passages on {label}"):
                    for text, answerable, relevant, references in asked:
                        sample = _sample(engine, label, text, answerable, relevant, references, built.doc_of_file)
                        if sample is not None:
                            samples.append(sample)
                console.log(f"{label}: {sum(s.case == label for s in samples)} questions let through by the gate")
    return samples


def _sample(engine: AnswerEngine, label: str, text: str, answerable: bool, relevant: set[str], references: list[str],
            doc_of_file: dict[str, str]) -> QuoteSample | None:  # fmt: skip
    retrieval = engine.retrieve(text)
    if not retrieval.answerable:
        return None  # refused before any answer: no quote either
    passage = closest_passage(engine.evidence(text, retrieval) or [])
    if passage is None:
        return None
    source = retrieval.sources[passage.source]
    holds = any(contains(passage.text, r) for r in references) if references else None
    from_relevant = doc_of_file.get(source.doc_id, source.doc_id) in relevant
    cross_lingual = question_language(source.text) != question_language(text)
    return QuoteSample(label, text, answerable, round(passage.score, 4), from_relevant, holds, cross_lingual)


def summarise(samples: list[QuoteSample]) -> dict[str, Any]:
    """The curves across languages (what the engine quotes) and within one language, and the threshold."""
    across = _curve([s for s in samples if s.cross_lingual])
    safe = [c["threshold"] for c in across if c["unanswerable_quoted"] == 0]
    return {
        "answerable_let_through": sum(s.answerable for s in samples),
        "unanswerable_let_through": sum(not s.answerable for s in samples),
        "cross_lingual_let_through": sum(s.cross_lingual for s in samples),
        "chosen_threshold": min(safe) if safe else None,
        "curve_across_languages": across,
        "curve_within_a_language": _curve([s for s in samples if not s.cross_lingual]),
    }


def _curve(samples: list[QuoteSample]) -> list[dict[str, Any]]:
    """Per threshold of the grid: how many answerable questions would get a quote, from a relevant document,
    holding the answer; how many unanswerable ones would get one (each a wrong citation)."""
    curve = []
    for threshold in GRID:
        quoted = [s for s in samples if s.score >= threshold]
        good = [s for s in quoted if s.answerable]
        with_answer = [s for s in good if s.holds_answer is not None]
        holding = sum(bool(s.holds_answer) for s in with_answer) / len(with_answer) if with_answer else None
        curve.append({
            "threshold": threshold,
            "answerable_quoted": len(good),
            "from_relevant_document": round(sum(s.relevant_source for s in good) / len(good), 4) if good else None,
            "holding_the_answer": round(holding, 4) if holding is not None else None,
            "unanswerable_quoted": len(quoted) - len(good),
        })  # fmt: skip
    return curve


def quote_threshold(evalsets: Path, limit: int, probes: int, console: Console) -> dict[str, Any]:
    samples = collect(evalsets, limit, probes, console)
    return {**summarise(samples), "samples": [asdict(s) for s in samples]}
