"""What `kb bench query` fills its indexes with and how it checks that speed bought no loss (issue 16).

HNSW on random unit vectors is the worst case for recall and says nothing about real data, and embedding a
million chunks here would take a day. So real passages are embedded once (the shared eval corpora beside the
checkout when they are there, the sample knowledge base otherwise) and grown to the index size: each vector is
one of them moved part of the way towards another and perturbed a little, which keeps the clusters and the
anisotropy of real embeddings. Questions for the recall check are drawn the same way and are not in the index.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from assets.embed import Embedder
from kb.settings import PROJECT_ROOT

EVALSETS = PROJECT_ROOT.parent / "shared" / "evalsets"
SAMPLE_KB = PROJECT_ROOT / "examples" / "knowledge_base"
BASE_PASSAGES = 1200
PASSAGE_CHARS = 600  # what a chunk's first sentences say; embedding whole documents would take minutes
TOWARDS_OTHER = 0.5  # at most this far towards another passage's vector
NOISE = 0.15  # norm of the Gaussian perturbation, against unit vectors


def base_passages(evalsets: Path = EVALSETS, limit: int = BASE_PASSAGES) -> tuple[list[str], str]:
    """Real passages, taken in turn from every eval corpus (or the sample knowledge base), and where from."""
    corpora = sorted(evalsets.glob("*/corpus*.jsonl")) if evalsets.is_dir() else []
    per_corpus = [_corpus_texts(path) for path in corpora]
    texts: list[str] = []
    for round_ in range(max((len(p) for p in per_corpus), default=0)):
        texts.extend(p[round_] for p in per_corpus if round_ < len(p))
        if len(texts) >= limit:
            return texts[:limit], f"{limit} passages of {len(corpora)} eval corpora in {evalsets}"
    if texts:
        return texts, f"{len(texts)} passages of {len(corpora)} eval corpora in {evalsets}"
    from query_engine.context import prose_sentences

    units = [
        u
        for path in sorted(SAMPLE_KB.rglob("*"))
        if path.is_file() and path.suffix in {".md", ".py", ".go", ".sql", ".sh", ".ts", ".yaml"}
        for u in prose_sentences(path.read_text(encoding="utf-8"))
        if len(u) > 30
    ]
    return units[:limit], f"{min(len(units), limit)} sentences of the sample knowledge base"


def _corpus_texts(path: Path) -> list[str]:
    texts = []
    for line in path.read_text(encoding="utf-8").split("\n"):  # not splitlines: texts hold U+2028
        if line.strip():
            record = json.loads(line)
            text = str(record.get("text") or "")
            if text.strip():
                texts.append(text[:PASSAGE_CHARS])
    return texts


def embedding_base(embedder: Embedder, evalsets: Path = EVALSETS, limit: int = BASE_PASSAGES) -> tuple[NDArray[np.float32], str]:
    texts, origin = base_passages(evalsets, limit)
    return np.asarray(embedder.embed_passages(texts), dtype=np.float32), origin


def grown_vectors(base: NDArray[np.float32], count: int, seed: int) -> NDArray[np.float32]:
    """`count` unit vectors near the real ones: base[i] moved up to TOWARDS_OTHER of the way to base[j], plus noise."""
    rng = np.random.default_rng(seed)
    vectors = np.empty((count, base.shape[1]), dtype=np.float32)
    for start in range(0, count, 50_000):  # in slices: a million at once would need several GiB of temporaries
        n = min(50_000, count - start)
        i, j = rng.integers(0, len(base), n), rng.integers(0, len(base), n)
        t = rng.uniform(0.0, TOWARDS_OTHER, (n, 1)).astype(np.float32)
        noise = rng.standard_normal((n, base.shape[1])).astype(np.float32) * (NOISE / np.sqrt(base.shape[1]))
        part = (1 - t) * base[i] + t * base[j] + noise
        vectors[start : start + n] = part / np.linalg.norm(part, axis=1, keepdims=True)
    return vectors


def exact_top(vectors: NDArray[np.float32], queries: NDArray[np.float32], k: int = 10) -> list[list[int]]:
    """Exact cosine top k (rows are unit vectors), scanning in slices to bound memory."""
    best_scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_rows = np.zeros((len(queries), 0), dtype=np.int64)
    for start in range(0, len(vectors), 100_000):
        scores = queries @ vectors[start : start + 100_000].T
        rows = np.argpartition(-scores, min(k, scores.shape[1] - 1), axis=1)[:, :k]
        best_scores = np.concatenate([best_scores, np.take_along_axis(scores, rows, axis=1)], axis=1)
        best_rows = np.concatenate([best_rows, rows + start], axis=1)
        keep = np.argsort(-best_scores, axis=1)[:, :k]
        best_scores, best_rows = np.take_along_axis(best_scores, keep, axis=1), np.take_along_axis(best_rows, keep, axis=1)
    return [list(map(int, row)) for row in best_rows]


def recall_at_10(found: Sequence[Sequence[str]], exact: Sequence[Sequence[str]]) -> float:
    """The share of the exact top 10 that an approximate search returned in its top 10, averaged over queries."""
    shares = [len(set(f[:10]) & set(e[:10])) / max(len(e[:10]), 1) for f, e in zip(found, exact, strict=True)]
    return round(sum(shares) / max(len(shares), 1), 3)


def folder_mb(folder: Path) -> float:
    return round(sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20, 1)


def resident_mb(pids: Sequence[int] = ()) -> dict[str, float]:
    """Resident memory of this process and of the given processes with their children (the PostgreSQL server)."""
    import psutil

    def tree(pid: int) -> float:
        try:
            root = psutil.Process(pid)
            return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
        except psutil.Error:
            return 0.0

    return {
        "bench_process": round(psutil.Process(os.getpid()).memory_info().rss / 2**20, 1),
        "postgres": round(sum(tree(pid) for pid in pids) / 2**20, 1),
    }


def table_mb(url: str, tables: Sequence[str]) -> float:
    """Tables with their indexes (HNSW, GIN) and TOAST, as PostgreSQL counts them."""
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT COALESCE(SUM(pg_total_relation_size(to_regclass(t))), 0) FROM unnest(%s::text[]) t", (list(tables),)
        ).fetchone()
    return round(int(row[0] if row else 0) / 2**20, 1)


def describe(origin: str) -> dict[str, Any]:
    return {
        "source": origin,
        "grown_by": f"a real passage's vector moved up to {TOWARDS_OTHER} of the way to another's, plus noise of norm {NOISE}",
    }
