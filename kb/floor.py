"""The floor that `kb bench query` compares retrieval with (issue 16): the same chunks in Qdrant's own engine run
in-process (`qdrant-edge-py`), HNSW dense and BM25 sparse candidates fused by RRF inside one query, no Python
around it, plus the embedder's bare forward pass for the question. Benchmark-only: the platform does not use it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from assets.embed import Embedder
from assets.index import IndexPoint
from assets.sparse import query_terms

DENSE, SPARSE = "dense", "bm25"
BATCH = 1000


@dataclass
class FloorTiming:
    embed_ms: float
    search_ms: float
    ids: list[str]

    @property
    def total_ms(self) -> float:
        return self.embed_ms + self.search_ms


class EdgeFloor:
    """One Qdrant Edge shard holding the bench's chunks: cosine HNSW on the dense vector, the stored BM25 term
    weights as a sparse vector with Qdrant's IDF modifier (the same scoring as `QdrantIndex`)."""

    def __init__(self, folder: Path, dimension: int) -> None:
        from qdrant_edge import Distance, EdgeConfig, EdgeShard, EdgeSparseVectorParams, EdgeVectorParams, Modifier

        config = EdgeConfig(
            vectors={DENSE: EdgeVectorParams(size=dimension, distance=Distance.Cosine)},
            sparse_vectors={SPARSE: EdgeSparseVectorParams(modifier=Modifier.Idf)},
        )
        self.shard = EdgeShard.create(str(folder), config)

    def load(self, points: Sequence[IndexPoint]) -> None:
        """Upsert in batches, then let the engine build its indexes (HNSW past its indexing threshold)."""
        from qdrant_edge import Point, SparseVector, UpdateOperation

        for start in range(0, len(points), BATCH):
            batch = [
                Point(p.chunk_id, {DENSE: p.dense.tolist(), SPARSE: SparseVector(list(p.sparse.indices), list(p.sparse.values))})
                for p in points[start : start + BATCH]
            ]
            self.shard.update(UpdateOperation.upsert_points(batch))
        self.shard.optimize()  # blocks until the engine plans no more optimisations

    def search(self, vector: NDArray[np.float32], terms: Sequence[int], limit: int = 10, candidates: int = 50) -> list[str]:
        """Dense and sparse candidates fused by RRF (k = 60, as ours) in one query inside the engine."""
        from qdrant_edge import Fusion, Prefetch, Query, QueryRequest, SparseVector

        prefetches = [Prefetch(limit=candidates, query=Query.Nearest(vector.tolist(), using=DENSE))]
        if terms:
            sparse = SparseVector(list(terms), [1.0] * len(terms))
            prefetches.append(Prefetch(limit=candidates, query=Query.Nearest(sparse, using=SPARSE)))
        request = QueryRequest(limit=limit, query=Fusion.Rrf(k=60), prefetches=prefetches, with_payload=False)
        return [str(p.id) for p in self.shard.query(request)]

    def dense(self, vector: NDArray[np.float32], limit: int = 10) -> list[str]:
        """HNSW dense search alone (its recall is measured against exact search)."""
        from qdrant_edge import Query, QueryRequest

        request = QueryRequest(limit=limit, query=Query.Nearest(vector.tolist(), using=DENSE), with_payload=False)
        return [str(p.id) for p in self.shard.query(request)]

    def close(self) -> None:
        self.shard.close()


def floor_of(question: str, embedder: Embedder, floor: EdgeFloor) -> FloorTiming:
    """The bare forward pass (one question, no cache, no thread hop), then the engine's fused search."""
    started = time.perf_counter()
    vector = embedder.embed_queries([question])[0]
    embedded = time.perf_counter()
    ids = floor.search(vector, query_terms(question))
    return FloorTiming((embedded - started) * 1000, (time.perf_counter() - embedded) * 1000, ids)


def ratios(retrieval_ms: dict[str, float], floor_ms: dict[str, float]) -> dict[str, Any]:
    """Ours against the floor, at p50 and p95 (the issue's aims: ≤ 1.5 and ≤ 2)."""
    return {
        "retrieval_to_floor_p50": round(retrieval_ms["p50"] / max(floor_ms["p50"], 1e-6), 2),
        "retrieval_to_floor_p95": round(retrieval_ms["p95"] / max(floor_ms["p95"], 1e-6), 2),
    }
