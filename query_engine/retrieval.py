"""Hybrid retrieval over the index: dense and BM25 candidates per collection, fused by reciprocal rank."""

from __future__ import annotations

import contextvars
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
from numpy.typing import NDArray

from assets.embed import Embedder
from assets.index import Filters, Groups, Hit, VectorIndex
from assets.parse import detect_language
from assets.sparse import query_terms
from query_engine.cache import QueryCache

Mode = Literal["dense", "sparse", "hybrid"]
# Shared by every retriever in the process; a search holds a worker only while it waits on the index.
_SEARCHES = ThreadPoolExecutor(max_workers=8, thread_name_prefix="kb-sparse")


@dataclass(frozen=True)
class Candidate:
    """A chunk found by one or both searches, with its rank in each list (1-based; None: not found)."""

    collection: str
    hit: Hit
    dense_rank: int | None = None
    sparse_rank: int | None = None
    dense_score: float | None = None
    sparse_score: float | None = None
    score: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)


def reciprocal_rank_fusion(
    dense: dict[str, list[Hit]], sparse: dict[str, list[Hit]], k: int = 60, sparse_weight: float = 1.0
) -> list[Candidate]:
    """RRF over every (collection, search) list: score = Σ w / (k + rank). Rank-based, so BM25 and
    cosine scores never have to be put on one scale."""
    merged: dict[tuple[str, str], Candidate] = {}
    for collection, hits in dense.items():
        for rank, hit in enumerate(hits, start=1):
            merged[(collection, hit.chunk_id)] = Candidate(collection, hit, dense_rank=rank, dense_score=hit.score)
    for collection, hits in sparse.items():
        for rank, hit in enumerate(hits, start=1):
            found = merged.get((collection, hit.chunk_id))
            merged[(collection, hit.chunk_id)] = (
                Candidate(collection, hit, sparse_rank=rank, sparse_score=hit.score)
                if found is None
                else Candidate(collection, found.hit, found.dense_rank, rank, found.dense_score, hit.score)
            )
    scored = [
        Candidate(
            c.collection,
            c.hit,
            c.dense_rank,
            c.sparse_rank,
            c.dense_score,
            c.sparse_score,
            score=(1 / (k + c.dense_rank) if c.dense_rank else 0.0)
            + (sparse_weight / (k + c.sparse_rank) if c.sparse_rank else 0.0),
        )
        for c in merged.values()
    ]
    return sorted(scored, key=lambda c: c.score, reverse=True)


def _single_list(results: dict[str, list[Hit]], attribute: str) -> list[Candidate]:
    """Candidates of one search across collections, ordered by that search's score."""
    candidates = [
        Candidate(collection, hit, score=hit.score, **{f"{attribute}_rank": rank, f"{attribute}_score": hit.score})  # type: ignore[arg-type]
        for collection, hits in results.items()
        for rank, hit in enumerate(hits, start=1)
    ]
    return sorted(candidates, key=lambda c: c.score, reverse=True)


class _Clock:
    def __init__(self, timings: dict[str, float] | None) -> None:
        self.timings = timings
        self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        if self.timings is not None:
            self.timings[name] = round((now - self.last) * 1000, 2)
        self.last = now

    def note(self, name: str, seconds: float) -> None:
        if self.timings is not None:
            self.timings[name] = round(seconds * 1000, 2)


class HybridRetriever(BaseRetriever):
    """Dense + sparse search in each selected collection, fused; filters apply to both searches."""

    def __init__(
        self,
        index: VectorIndex,
        embedder: Embedder,
        collections: Sequence[str],
        top_k: int = 10,
        candidates: int = 50,
        mode: Mode = "hybrid",
        filters: Filters | None = None,
        rrf_k: int = 60,
        dense_languages: Sequence[str] | None = None,
        groups: Groups = None,
        cache: QueryCache | None = None,
    ) -> None:
        super().__init__()
        if not collections:
            raise ValueError("retrieval needs at least one collection")
        self.index = index
        self.embedder = embedder
        self.collections = list(collections)
        self.top_k = top_k
        self.candidates = max(candidates, top_k)
        self.mode = mode
        self.filters = filters
        self.groups = groups  # the caller's groups for document access lists (None: every document)
        self.rrf_k = rrf_k
        self.dense_languages = set(dense_languages) if dense_languages else None
        self.cache = cache  # query vectors by exact text (query_engine/cache.py)

    def search(self, query: str, timings: dict[str, float] | None = None) -> list[Candidate]:
        """Fused candidates, best first (up to `candidates`); stage times in ms go into `timings`."""
        clock = _Clock(timings)
        dense: dict[str, list[Hit]] = {}
        sparse: dict[str, list[Hit]] = {}
        # An embedding model that does not know the question's language returns noise that drowns the
        # lexical match in fusion (measured: xquad ru nDCG@10 0.96 BM25 alone, 0.42 fused with English-only
        # MiniLM); hybrid then relies on BM25 alone.
        mode = self.mode
        if mode == "hybrid" and self.dense_languages is not None and detect_language(query) not in self.dense_languages:
            mode = "sparse"
        # The BM25 search needs no embedding: it runs on a worker thread while the query is embedded
        # (both release the GIL: the database or Qdrant, and torch), so its time hides behind the model's.
        # In the request's context: its trace and log fields (request id, user) follow the search into the pool.
        sparse = contextvars.copy_context().run
        sparse_future = _SEARCHES.submit(sparse, self._sparse, query) if mode in ("sparse", "hybrid") else None
        if mode in ("dense", "hybrid"):
            vector = self._query_vector(query)
            clock.lap("embed_ms")
            started = time.perf_counter()
            scale = self.embedder.score_scale(query)
            dense = {
                c: _scaled(self.index.dense_search(c, vector, self.candidates, self.filters, self.groups), scale)
                for c in self.collections
            }
            clock.note("dense_search_ms", time.perf_counter() - started)
        if sparse_future is not None:
            sparse, seconds = sparse_future.result()
            clock.note("sparse_search_ms", seconds)
        # What searching added after the embedding: the two searches overlap it and each other.
        clock.lap("search_ms")
        if mode == "dense":
            found = _single_list(dense, "dense")
        elif mode == "sparse":
            found = _single_list(sparse, "sparse")
        else:
            found = reciprocal_rank_fusion(dense, sparse, self.rrf_k)
        clock.lap("fuse_ms")
        return found[: self.candidates]

    def _query_vector(self, query: str) -> NDArray[np.float32]:
        cached = self.cache.get_vector(self.embedder.model_id, query) if self.cache is not None else None
        if cached is not None and cached.shape == (self.embedder.dimension,):
            return cached
        vector = self.embedder.embed_queries([query])[0]
        if self.cache is not None:
            self.cache.put_vector(self.embedder.model_id, query, vector)
        return vector

    def _sparse(self, query: str) -> tuple[dict[str, list[Hit]], float]:
        started = time.perf_counter()
        terms = query_terms(query)
        hits = {c: self.index.sparse_search(c, terms, self.candidates, self.filters, self.groups) for c in self.collections}
        return hits, time.perf_counter() - started

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return [to_node(c) for c in self.search(query_bundle.query_str)[: self.top_k]]


def _scaled(hits: list[Hit], scale: float) -> list[Hit]:
    return hits if scale == 1.0 else [replace(h, score=h.score * scale) for h in hits]


def to_node(candidate: Candidate) -> NodeWithScore:
    hit = candidate.hit
    metadata = {
        **hit.metadata,
        "collection": candidate.collection,
        "doc_id": hit.doc_id,
        "dense_rank": candidate.dense_rank,
        "sparse_rank": candidate.sparse_rank,
        "dense_score": candidate.dense_score,
        "sparse_score": candidate.sparse_score,
    }
    return NodeWithScore(node=TextNode(id_=hit.chunk_id, text=hit.text, metadata=metadata), score=candidate.score)
