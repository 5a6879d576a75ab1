"""Ranking metrics at document level, binary relevance."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence


def recall_at(ranked: Sequence[str], relevant: set[str], k: int) -> float:
    return len(set(ranked[:k]) & relevant) / len(relevant) if relevant else 0.0


def ndcg_at(ranked: Sequence[str], relevant: set[str], k: int) -> float:
    dcg = sum(1 / math.log2(i + 2) for i, doc in enumerate(ranked[:k]) if doc in relevant)
    ideal = sum(1 / math.log2(i + 2) for i in range(min(len(relevant), k)))
    return dcg / ideal if ideal else 0.0


def mrr_at(ranked: Sequence[str], relevant: set[str], k: int) -> float:
    return next((1 / (i + 1) for i, doc in enumerate(ranked[:k]) if doc in relevant), 0.0)


def score_run(rankings: dict[str, list[str]], qrels: dict[str, set[str]]) -> dict[str, float]:
    """Mean Recall@5, Recall@10, nDCG@10 and MRR@10 over the queries with relevance labels."""
    ids = [q for q in rankings if qrels.get(q)]
    if not ids:
        return {"recall@5": 0.0, "recall@10": 0.0, "ndcg@10": 0.0, "mrr@10": 0.0, "queries": 0}

    def mean(values: Iterable[float]) -> float:
        return round(sum(values) / len(ids), 4)

    return {
        "recall@5": mean(recall_at(rankings[q], qrels[q], 5) for q in ids),
        "recall@10": mean(recall_at(rankings[q], qrels[q], 10) for q in ids),
        "ndcg@10": mean(ndcg_at(rankings[q], qrels[q], 10) for q in ids),
        "mrr@10": mean(mrr_at(rankings[q], qrels[q], 10) for q in ids),
        "queries": len(ids),
    }


def dedupe(doc_ids: Iterable[str]) -> list[str]:
    """Chunk hits to a document ranking: each document at the rank of its best chunk."""
    seen: dict[str, None] = {}
    for doc in doc_ids:
        seen.setdefault(doc, None)
    return list(seen)
