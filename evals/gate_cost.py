"""What the relevance gate costs with the sentence signal computed only where it decides (the default) against
every signal computed (`exact_signals`, what calibration uses): per case, how many questions skipped the sentence
pass, the gate's time on a cold and a warm sentence cache, and whether every decision was the same.

Each mode starts on a cold sentence cache (the corpus's chunks never seen) and asks every question twice: a cold
and a warm pass."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from rich.console import Console

from evals.answers import off_topic_questions
from evals.datasets import load_dataset
from evals.suite import ingested
from kb.settings import EmbeddingSettings, PlatformSettings
from query_engine.engine import AnswerEngine
from query_engine.rerank import default_reranker, sentence_vectors

CASES: tuple[tuple[str, str | None, tuple[str | None, ...]], ...] = (
    ("xquad_en_ru_zh", "en", ("en", "ru", "zh")),
    ("prom_runbooks", None, (None,)),
)


def gate_cost(evalsets: Path, limit: int, probes: int, console: Console) -> dict[str, Any]:
    platform, embedding = PlatformSettings(), EmbeddingSettings()
    embedder = embedding.load()
    cases: dict[str, Any] = {}
    for name, corpus, variants in CASES:
        first = load_dataset(evalsets / name, variants[0], corpus, None)
        with ingested(first, platform, embedder, console) as (built, index, _):
            for variant in variants:
                evalset = load_dataset(evalsets / name, variant, corpus, None)
                questions = [q.text for q in evalset.queries[:limit]] + off_topic_questions(variant or "en", probes)
                runs: dict[str, list[tuple[bool, bool, float]]] = {}
                for mode in ("exact", "lazy"):
                    # Each mode starts on a cold sentence cache (one per process and encoder, shared by the reranker).
                    sentence_vectors.cache_clear()
                    reranker = default_reranker(embedder=embedder, specs=[built.spec])
                    engine = AnswerEngine(index, embedder, [built.collection], reranker, None,
                                          dense_languages=embedding.languages, exact_signals=mode == "exact")  # fmt: skip
                    for temperature in ("cold", "warm"):
                        runs[f"{mode}_{temperature}"] = [_asked(engine, q) for q in questions]
                cases[evalset.label] = _summary(runs, len(questions))
                console.log(f"{evalset.label}: {cases[evalset.label]}")
    return {"cases": cases}


def _asked(engine: AnswerEngine, question: str) -> tuple[bool, bool, float]:
    """(relevant, sentence pass skipped, gate ms)."""
    retrieval = engine.retrieve(question)
    skipped = retrieval.signals is not None and math.isnan(retrieval.signals.sentence)
    return retrieval.answerable, skipped, retrieval.timings["gate_ms"]


def _summary(runs: dict[str, list[tuple[bool, bool, float]]], questions: int) -> dict[str, Any]:
    decisions = [[r[0] for r in rows] for rows in runs.values()]
    return {
        "questions": questions,
        "sentence_pass_skipped": sum(r[1] for r in runs["lazy_cold"]),
        "same_decisions": all(d == decisions[0] for d in decisions),
        **{f"gate_ms_p50_{key}": round(statistics.median(r[2] for r in rows), 2) for key, rows in runs.items()},
    }
