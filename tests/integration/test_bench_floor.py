"""The benchmark's floor (kb/floor.py: Qdrant's engine in-process, dense and BM25 fused by RRF inside one query) and
its peer (kb/peer.py: LlamaIndex's documented hybrid pipeline) are computed from the same chunks and questions as the
platform's retrieval: on a small index all three rank the same chunks, so ratios of their latencies compare the same
work."""

from __future__ import annotations

from pathlib import Path

import pytest

from assets.index import PgVectorIndex
from kb.bench import _fill_synthetic, bench_questions, synthetic_points
from kb.bench_quality import embedding_base
from kb.floor import EdgeFloor, floor_of, ratios
from kb.peer import LlamaIndexPeer, peer_of, stored_points
from query_engine.retrieval import HybridRetriever


@pytest.fixture(scope="module")
def real(embedder):  # type: ignore[no-untyped-def]
    # The sample knowledge base's sentences (no eval sets here: a folder that does not exist).
    vectors, origin = embedding_base(embedder, Path("/nonexistent"), limit=60)
    assert "sample knowledge base" in origin and len(vectors) == 60
    return vectors


def test_the_floor_ranks_the_same_chunks_as_our_fused_retrieval(postgres_url: str, embedder, real, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    points = synthetic_points(300, real)
    index = PgVectorIndex(postgres_url)
    index.drop_collection("floor_contract")
    _fill_synthetic(index, "floor_contract", points, embedder.dimension)
    floor = EdgeFloor(tmp_path / "edge", embedder.dimension)
    floor.load(points)
    try:
        ids = {p.chunk_id for p in points}
        retriever = HybridRetriever(index, embedder, ["floor_contract"], top_k=10, candidates=50)
        overlaps = []
        for question in bench_questions([p.text for p in points], 12):
            ours = [c.hit.chunk_id for c in retriever.search(question)[:10]]
            timing = floor_of(question, embedder, floor)
            assert len(timing.ids) == 10 and set(timing.ids) <= ids
            assert timing.embed_ms > 0 and timing.search_ms > 0
            overlaps.append(len(set(ours) & set(timing.ids)) / 10)
        # Measured 0.94 on 500 chunks; the two HNSW graphs and BM25's rare-term candidates differ a little.
        assert sum(overlaps) / len(overlaps) >= 0.8, overlaps
    finally:
        floor.close()
        index.drop_collection("floor_contract")
        index.close()


def test_the_ratios_divide_ours_by_the_floor_at_each_percentile() -> None:
    assert ratios({"p50": 30.0, "p95": 90.0}, {"p50": 10.0, "p95": 30.0}) == {
        "retrieval_to_floor_p50": 3.0,
        "retrieval_to_floor_p95": 3.0,
    }


def test_the_peer_ranks_the_same_chunks_as_our_fused_retrieval(postgres_url: str, embedder, real) -> None:  # type: ignore[no-untyped-def]
    points = synthetic_points(300, real, seed=3)
    index = PgVectorIndex(postgres_url)
    index.drop_collection("peer_contract")
    _fill_synthetic(index, "peer_contract", points, embedder.dimension)
    try:
        # Built from what the index stores (as `kb eval retrieval --peer` does), not from the points written.
        stored = stored_points(index, "peer_contract")
        assert {p.chunk_id for p in stored} == {p.chunk_id for p in points}
        peer = LlamaIndexPeer(stored, embedder)
        retriever = HybridRetriever(index, embedder, ["peer_contract"], top_k=10, candidates=50)
        overlaps = []
        for question in bench_questions([p.text for p in points], 12):
            ours = [c.hit.chunk_id for c in retriever.search(question)[:10]]
            timing = peer_of(question, peer)
            assert len(timing.ids) == 10 and timing.ms > 0
            overlaps.append(len(set(ours) & set(timing.ids)) / 10)
        # Both fuse dense and BM25 candidates by RRF; their BM25 variants (ours: assets/sparse.py, the peer's: bm25s with
        # its own stemmer) differ, so the rankings differ a little.
        assert sum(overlaps) / len(overlaps) >= 0.6, overlaps
    finally:
        index.drop_collection("peer_contract")
        index.close()
