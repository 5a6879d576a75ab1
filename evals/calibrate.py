"""Calibrate the relevance gate (query_engine/relevance.py) on the dev splits.

Each corpus below is ingested like the retrieval eval; its own questions are positives (something
relevant is there) and questions of the other sets are negatives (asked of a knowledge base that
cannot answer them), plus prom_runbooks' alerts without a runbook, negatives everywhere. Every question
goes through `AnswerEngine.retrieve`, the path answers take, and its three signals are kept. Per query
language a logistic regression is fitted, and the threshold is the highest that refuses at most
`target_refusal` of the positives. Figures are reported both in-sample and with two-fold
cross-validation over corpora-question pairs split by question id.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from assets.parse import detect_language
from evals.datasets import load_dataset
from evals.suite import ingested
from kb.settings import EmbeddingSettings, PlatformSettings
from query_engine.engine import AnswerEngine
from query_engine.relevance import FEATURES, GATE_FILE, LanguageGate, RelevanceGate, Signals, gate_key, save_gate
from query_engine.rerank import default_reranker

# Question pools: (set, variant, how many). Translations of one xquad question are separate pools.
POOLS: dict[str, tuple[str, str | None, int]] = {
    "prom_runbooks": ("prom_runbooks", None, 34),
    "aws_docs_qa": ("aws_docs_qa", None, 34),
    "k8s_examples_manifests": ("k8s_examples_manifests", None, 41),
    "xquad_en": ("xquad_en_ru_zh", "en", 120),
    "xquad_ru": ("xquad_en_ru_zh", "ru", 120),
    "xquad_zh": ("xquad_en_ru_zh", "zh", 120),
    "cmrc2018_dev_zh": ("cmrc2018_dev_zh", None, 120),
}
ALERTS_WITHOUT_RUNBOOK = "alerts_without_runbook"
# Corpora: (set, corpus language variant, the pools it answers). xquad's translations share paragraph
# ids, so its questions in every language are answerable from its corpus in every language.
XQUAD = ("xquad_en", "xquad_ru", "xquad_zh")
CORPORA: tuple[tuple[str, str | None, tuple[str, ...]], ...] = (
    ("prom_runbooks", None, ("prom_runbooks",)),
    ("aws_docs_qa", None, ("aws_docs_qa",)),
    ("k8s_examples_manifests", None, ("k8s_examples_manifests",)),
    ("xquad_en_ru_zh", "en", XQUAD),
    # English questions are embedded by the English model alone, which does not read Russian: they are
    # not counted on the Russian corpus, as positives or negatives (README, "Known gaps").
    ("xquad_en_ru_zh", "ru", ("xquad_ru", "xquad_zh")),
    ("cmrc2018_dev_zh", None, ("cmrc2018_dev_zh",)),
)
# Encyclopedia questions asked of another encyclopedia corpus are left out as negatives: a question about
# a city finds an article on a neighbouring topic, which retrieval signals cannot tell from an answer, and
# a team's knowledge base is not an encyclopedia. Every other pair of a question and a corpus it does not
# belong to is a negative: general questions of technical documents, technical questions of encyclopedia
# articles, one technical set's questions of another's documents, alerts without a runbook of any corpus.
ENCYCLOPEDIC = frozenset({*XQUAD, "cmrc2018_dev_zh", "xquad_en_ru_zh"})
# A cross-lingual gate is fitted only with this many answerable and unanswerable pairs, and only where the
# language's gate refuses more than this multiple of the target share of them (measured: ru 5.8 %, zh 4.2 %
# at a 3 % target; zh's own gate of them refused fewer off-topic questions in the answer gate).
MIN_CLASS_SAMPLES = 30
CROSS_GATE_AFTER = 1.5
# Collecting signals needs a gate object; its decisions are not used.
_NEUTRAL = RelevanceGate({"en": LanguageGate(0.0, (0.0, 0.0, 0.0), 0.5)})


@dataclass(frozen=True)
class Sample:
    corpus: str
    pool: str
    question_id: str
    language: str
    signals: tuple[float, float, float]
    relevant: bool
    cross_lingual: bool = False  # the best source is in another language than the question

    @property
    def key(self) -> str:
        return gate_key(self.language, self.cross_lingual)


def pool_questions(evalsets: Path, pool: str) -> list[tuple[str, str]]:
    """(id, text) of a pool's questions."""
    if pool == ALERTS_WITHOUT_RUNBOOK:
        rows = [
            json.loads(line)
            for line in (evalsets / "prom_runbooks" / "alerts_without_runbook.jsonl").read_text().splitlines()
            if line.strip()
        ]
        return [(r["alert"], f"{r.get('summary', '')} {r.get('description', '')}".strip()) for r in rows]
    name, variant, limit = POOLS[pool]
    return [(q.id, q.text) for q in load_dataset(evalsets / name, variant, None, None).queries[:limit]]


def collect(evalsets: Path, console: Console, known: Sequence[Sample] = ()) -> list[Sample]:
    """Signals of every pool's questions on every corpus; corpora already in `known` are not run again."""
    platform, embedding = PlatformSettings(), EmbeddingSettings()
    embedder = embedding.load()
    questions = {pool: pool_questions(evalsets, pool) for pool in [*POOLS, ALERTS_WITHOUT_RUNBOOK]}
    samples: list[Sample] = list(known)
    done = {s.corpus for s in known}
    for name, corpus_variant, own in CORPORA:
        evalset = load_dataset(evalsets / name, corpus_variant, corpus_variant, None)
        if evalset.label in done:
            continue
        with ingested(evalset, platform, embedder, console) as (built, index, _):
            reranker = default_reranker(embedder=embedder, specs=[built.spec])
            engine = AnswerEngine(index, embedder, [built.collection], reranker, None,
                                  dense_languages=embedding.languages, gate=_NEUTRAL, exact_signals=True)  # fmt: skip
            label = evalset.label
            with console.status(f"signals on {label}"):
                for pool, items in questions.items():
                    for qid, text in items:
                        found = engine.retrieve(text).signals
                        assert found is not None
                        samples.append(Sample(label, pool, qid, detect_language(text), tuple(found.vector()),  # type: ignore[arg-type]
                                              pool in own, found.cross_lingual))  # fmt: skip
        console.log(f"{label}: {sum(s.corpus == label for s in samples)} questions")
    return samples


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-2, steps: int = 50) -> tuple[float, np.ndarray]:
    """Newton's method on the L2-regularised log-loss; a few features, so no library is needed."""
    design = np.hstack([np.ones((len(x), 1)), x])
    w = np.zeros(design.shape[1])
    penalty = np.diag([0.0] + [l2] * x.shape[1])
    for _ in range(steps):
        p = 1 / (1 + np.exp(-np.clip(design @ w, -40, 40)))
        gradient = design.T @ (p - y) + penalty @ w
        hessian = design.T @ (design * (p * (1 - p))[:, None]) + penalty + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return float(w[0]), w[1:]


def fit_gate(samples: list[Sample], target_refusal: float) -> LanguageGate:
    x = np.array([s.signals for s in samples], dtype=float)
    y = np.array([s.relevant for s in samples], dtype=float)
    bias, weights = fit_logistic(x, y)
    gate = LanguageGate(bias, (float(weights[0]), float(weights[1]), float(weights[2])), 0.5)
    positives = sorted(gate.probability(_signals(s)) for s in samples if s.relevant)
    # The highest threshold that still lets (1 - target) of the answerable questions through.
    cut = positives[int(np.floor(target_refusal * len(positives)))] if positives else 0.5
    return LanguageGate(bias, gate.weights, float(cut))


def _signals(sample: Sample) -> Signals:
    return Signals(*sample.signals)


def rates(gate: LanguageGate, samples: list[Sample]) -> dict[str, Any]:
    """Refused answerable questions, and refused questions per negative pool."""
    refused = [(s, gate.probability(_signals(s)) < gate.threshold) for s in samples]
    positives = [r for s, r in refused if s.relevant]
    by_pool: dict[str, list[bool]] = {}
    for s, r in refused:
        if not s.relevant:
            by_pool.setdefault(s.pool, []).append(r)
    negatives = [r for s, r in refused if not s.relevant]
    return {
        "answerable": len(positives),
        "refused_answerable": round(sum(positives) / max(len(positives), 1), 4),
        "unanswerable": len(negatives),
        "refused_unanswerable": round(sum(negatives) / max(len(negatives), 1), 4),
        "refused_by_negative_pool": {p: round(sum(v) / len(v), 4) for p, v in sorted(by_pool.items())},
    }


def _near_domain(sample: Sample) -> bool:
    return sample.pool in ENCYCLOPEDIC and sample.corpus.split(":")[0] in ENCYCLOPEDIC


def _counted(sample: Sample) -> bool:
    """Positives, and negatives that are not near-domain nor an English question of a Russian corpus."""
    if sample.pool == "xquad_en" and sample.corpus.endswith(":ru->ru"):
        return False
    return sample.relevant or not _near_domain(sample)


def _fold(sample: Sample) -> int:
    return hashlib.sha256(sample.question_id.encode()).digest()[0] % 2


def gate_samples(samples: Sequence[Sample], target_refusal: float, minimum: int = MIN_CLASS_SAMPLES) -> dict[str, list[Sample]]:
    """The samples each gate is fitted on: every question language on all of its samples, and its
    cross-lingual key (`ru>x`) on the pairs whose best source is in another language, only where the
    language's own gate refuses more than CROSS_GATE_AFTER times the target share of those answerable
    pairs (a gate of their own trades refused unanswerable questions for it: not worth it below that)
    and both classes have `minimum` samples. A key without a gate falls back to the language's."""
    fitted: dict[str, list[Sample]] = {}
    for language in sorted({s.language for s in samples}):
        fitted[language] = [s for s in samples if s.language == language]
        cross = [s for s in fitted[language] if s.cross_lingual]
        if min(sum(s.relevant for s in cross), sum(not s.relevant for s in cross)) < minimum:
            continue
        own_gate = fit_gate(fitted[language], target_refusal)
        answerable = [s for s in cross if s.relevant]
        refused = sum(own_gate.probability(_signals(s)) < own_gate.threshold for s in answerable) / len(answerable)
        if refused > CROSS_GATE_AFTER * target_refusal:
            fitted[gate_key(language, True)] = cross
    return fitted


def calibrate(evalsets: Path, output: Path | None, target_refusal: float, console: Console,
              samples_file: Path | None = None) -> dict[str, Any]:  # fmt: skip
    """Collect signals (or read them from `samples_file`), fit one gate per language, write the gate file."""
    started = time.perf_counter()
    known = []
    if samples_file and samples_file.exists():
        known = [Sample(**{**row, "signals": tuple(row["signals"])}) for row in json.loads(samples_file.read_text())]
    samples = collect(evalsets, console, known)
    if samples_file:
        samples_file.write_text(json.dumps([s.__dict__ for s in samples]))
    samples = [s for s in samples if _counted(s)]
    gates, report = {}, {}
    for language, own in gate_samples(samples, target_refusal).items():
        gates[language] = fit_gate(own, target_refusal)
        folds = [
            rates(fit_gate([s for s in own if _fold(s) != k], target_refusal), [s for s in own if _fold(s) == k]) for k in (0, 1)
        ]
        report[language] = {
            "in_sample": rates(gates[language], own),
            "cross_validated": {
                key: round(sum(f[key] for f in folds) / 2, 4) for key in ("refused_answerable", "refused_unanswerable")
            },
        }
    embedder_id = EmbeddingSettings().load().model_id
    about = {"command": "kb eval calibrate", "embedding": embedder_id, "target_refusal": target_refusal,
             "samples": len(samples), "features": list(FEATURES)}  # fmt: skip
    path = output or GATE_FILE
    save_gate(path, gates, about)
    return {**about, "gate_file": str(path), "languages": report, "seconds": round(time.perf_counter() - started, 1)}
