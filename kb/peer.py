"""The peer that `kb bench query` and `kb eval retrieval --peer` compare with (issue 16): the hybrid pipeline a
LlamaIndex user builds from its documentation — an in-memory `VectorStoreIndex`, `BM25Retriever` (bm25s) and
`QueryFusionRetriever` with reciprocal-rank fusion — over the same chunks, vectors and query embedder as ours.
Benchmark-only: the platform does not use it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from llama_index.core import VectorStoreIndex
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.llms.mock import MockLLM
from llama_index.core.retrievers import QueryFusionRetriever
from llama_index.core.schema import TextNode
from llama_index.retrievers.bm25 import BM25Retriever
from numpy.typing import NDArray
from pydantic import PrivateAttr

from assets.embed import Embedder
from assets.index import VectorIndex

CANDIDATES = 50  # per retriever, as the floor's prefetches
TOP_K = 10


class _QueryEmbedding(BaseEmbedding):
    """Our embedder as LlamaIndex's embedding interface (queries only: the chunks come with their vectors)."""

    _embedder: Embedder = PrivateAttr()

    def __init__(self, embedder: Embedder) -> None:
        super().__init__(model_name=embedder.model_id, embed_batch_size=1)
        self._embedder = embedder

    def _get_query_embedding(self, query: str) -> list[float]:
        return [float(x) for x in self._embedder.embed_queries([query])[0]]

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return [float(x) for x in self._embedder.embed_passages([text])[0]]


class Chunk(Protocol):
    """What the peer is built from (an `IndexPoint` is one)."""

    chunk_id: str
    doc_id: str
    text: str
    dense: NDArray[np.float32]


@dataclass(frozen=True)
class StoredPoint:
    chunk_id: str
    doc_id: str
    text: str
    dense: NDArray[np.float32]


@dataclass
class PeerTiming:
    ms: float
    ids: list[str]


class LlamaIndexPeer:
    """Dense (the stored vectors, brute force in `SimpleVectorStore`) and BM25 candidates fused by RRF in
    `QueryFusionRetriever`, one query, no query rewriting (`num_queries=1`, so its LLM is never called)."""

    def __init__(self, points: Sequence[Chunk], embedder: Embedder) -> None:
        nodes = [
            TextNode(id_=p.chunk_id, text=p.text, embedding=[float(x) for x in p.dense], metadata={"doc_id": p.doc_id})
            for p in points
        ]
        embed_model = _QueryEmbedding(embedder)
        index = VectorStoreIndex(nodes, embed_model=embed_model)
        dense = index.as_retriever(similarity_top_k=CANDIDATES)
        sparse = BM25Retriever.from_defaults(nodes=nodes, similarity_top_k=min(CANDIDATES, len(nodes)))
        self.retriever = QueryFusionRetriever(
            [dense, sparse], llm=MockLLM(), mode="reciprocal_rerank", similarity_top_k=TOP_K, num_queries=1,
            use_async=False,
        )  # fmt: skip

    def search(self, question: str) -> list[str]:
        """The ids of the top chunks."""
        return [n.node.node_id for n in self.retriever.retrieve(question)]

    def documents(self, question: str) -> list[str]:
        """The documents of the top chunks, best first."""
        return [str(n.node.metadata["doc_id"]) for n in self.retriever.retrieve(question)]


def peer_of(question: str, peer: LlamaIndexPeer) -> PeerTiming:
    started = time.perf_counter()
    ids = peer.search(question)
    return PeerTiming((time.perf_counter() - started) * 1000, ids)


def stored_points(index: VectorIndex, collection: str) -> list[StoredPoint]:
    """Every chunk of an index collection with its text and stored vector: the peer reads what ours reads."""
    stored = index.stored_chunks(collection)
    doc_ids = sorted({c.doc_id for c in stored})
    vectors = index.vectors_by_chunk_hash(collection, doc_ids)
    hash_of = {c.chunk_id: c.chunk_hash for c in stored}
    return [
        StoredPoint(hit.chunk_id, hit.doc_id, hit.text, vectors[hash_of[hit.chunk_id]])
        for doc_id in doc_ids
        for hit in index.document_chunks(collection, doc_id)
    ]
