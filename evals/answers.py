"""Answer quality: containment and token F1 against reference answers, citation precision, and
refusals on questions the corpus cannot answer (prom_runbooks' alerts without a runbook)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console

from evals.datasets import DatasetError, load_dataset
from evals.suite import ingested
from kb.settings import EmbeddingSettings, LLMSettings, PlatformSettings
from query_engine.engine import AnswerEngine
from query_engine.llm import build_llm
from query_engine.prompts import NOT_FOUND
from query_engine.rerank import default_reranker

_CJK = re.compile(r"[\u3400-\u9fff]")


def tokens(text: str) -> list[str]:
    """Lower-cased words; CJK text as characters (references are short spans)."""
    text = re.sub(r"\[\d+\]", " ", text.lower())
    return list(re.findall(r"[\u3400-\u9fff]|[^\W_]+", text))


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = tokens(prediction), tokens(reference)
    common = sum((Counter(pred) & Counter(ref)).values())
    if not common:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def contains(prediction: str, reference: str) -> bool:
    squash = (
        (lambda s: re.sub(r"\s+", " ", s.lower()).strip()) if not _CJK.search(reference) else (lambda s: re.sub(r"\s+", "", s))
    )
    return squash(reference) in squash(prediction)


def refused(text: str) -> bool:
    return any(phrase.rstrip(".。") in text for phrase in NOT_FOUND.values())


def evaluate_answers(
    dataset: Path,
    variant: str | None,
    collection: str | None,
    limit: int,
    llm_url: str,
    platform: PlatformSettings,
    embedding: EmbeddingSettings,
    llm: LLMSettings,
    console: Console,
) -> dict[str, Any]:
    evalset = load_dataset(dataset, variant, None, collection)
    if not evalset.answers and not (dataset / "alerts_without_runbook.jsonl").exists():
        raise DatasetError(f"{dataset}: no answers file and no no-answer probes")
    embedder = embedding.load()
    with ingested(evalset, platform, embedder, console) as (built, index, name):
        model = build_llm(llm.backend, llm_url, llm.model, llm.api_key, llm.context_window, llm.max_answer_tokens, llm.timeout_s)
        engine = AnswerEngine(
            index,
            embedder,
            [built.collection],
            default_reranker(),
            model,
            llm.context_window,
            llm.max_answer_tokens,
            dense_languages=embedding.languages,
        )
        answered = [q for q in evalset.queries if evalset.answers.get(q.id)][:limit]
        rows = []
        started = time.perf_counter()
        for query in answered:
            answer = asyncio.run(engine.answer(query.text))
            refs = evalset.answers[query.id]
            cited = {built.doc_of_file.get(s.doc_id, s.doc_id) for s in answer.sources if s.cited}
            relevant = evalset.qrels.get(query.id, set())
            rows.append(
                {
                    "contains": any(contains(answer.text, r) for r in refs),
                    "f1": max(token_f1(answer.text, r) for r in refs),
                    "cited": len(cited),
                    "cited_relevant": len(cited & relevant),
                    "refused": refused(answer.text),
                }
            )
        probes = _no_answer_probes(dataset, limit)
        refusals = [refused(asyncio.run(engine.answer(text)).text) for text in probes]
        seconds = time.perf_counter() - started
    n = max(len(rows), 1)
    cited_total = sum(r["cited"] for r in rows)
    return {
        "dataset": evalset.label,
        "collection": name,
        "model": llm.model,
        "questions": len(rows),
        "answer_containment": round(sum(r["contains"] for r in rows) / n, 4),
        "token_f1": round(sum(r["f1"] for r in rows) / n, 4),
        "citation_precision": round(sum(r["cited_relevant"] for r in rows) / cited_total, 4) if cited_total else None,
        "answers_with_citations": round(sum(1 for r in rows if r["cited"]) / n, 4),
        "refused_answerable": round(sum(r["refused"] for r in rows) / n, 4),
        "no_answer_probes": len(refusals),
        "no_answer_refusal_rate": round(sum(refusals) / len(refusals), 4) if refusals else None,
        "seconds_per_answer": round(seconds / max(len(rows) + len(refusals), 1), 2),
    }


def _no_answer_probes(dataset: Path, limit: int) -> list[str]:
    path = dataset / "alerts_without_runbook.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [f"{r.get('summary', '')} {r.get('description', '')}".strip() for r in rows][:limit]
