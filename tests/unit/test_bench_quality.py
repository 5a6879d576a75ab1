"""The vectors `kb bench query` fills its indexes with, and its recall check (kb/bench_quality.py)."""

from __future__ import annotations

import numpy as np

from kb.bench_quality import base_passages, exact_top, grown_vectors, recall_at_10


def _base(n: int = 40, dimension: int = 32) -> np.ndarray:
    vectors = np.random.default_rng(1).standard_normal((n, dimension)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_grown_vectors_are_unit_vectors_near_the_real_ones() -> None:
    base = _base()
    grown = grown_vectors(base, 2000, seed=4)
    assert grown.shape == (2000, base.shape[1]) and grown.dtype == np.float32
    assert np.allclose(np.linalg.norm(grown, axis=1), 1.0, atol=1e-5)
    # Each grown vector stays closer to some real vector than random directions are to one another (clusters kept).
    nearest = (grown @ base.T).max(axis=1)
    assert float(np.median(nearest)) > 0.8 > float(np.abs(base @ base.T - np.eye(len(base))).max())


def test_grown_vectors_are_reproducible_and_differ_by_seed() -> None:
    base = _base()
    assert np.array_equal(grown_vectors(base, 50, seed=4), grown_vectors(base, 50, seed=4))
    assert not np.array_equal(grown_vectors(base, 50, seed=4), grown_vectors(base, 50, seed=5))


def test_exact_top_is_the_brute_force_top_across_slices() -> None:
    vectors = grown_vectors(_base(), 250_000, seed=2)  # more than one scanning slice
    queries = grown_vectors(_base(), 5, seed=9)
    expected = [list(np.argsort(-(vectors @ q))[:10]) for q in queries]
    assert exact_top(vectors, queries) == expected


def test_recall_at_10_is_the_share_of_the_exact_top_10_found() -> None:
    exact = [[str(i) for i in range(10)], [str(i) for i in range(10, 20)]]
    found = [[str(i) for i in range(10)], [str(i) for i in range(15, 25)]]
    assert recall_at_10(found, exact) == 0.75


def test_the_sample_knowledge_base_is_the_base_when_no_eval_sets_are_beside_the_checkout(tmp_path) -> None:  # type: ignore[no-untyped-def]
    texts, origin = base_passages(tmp_path / "none", limit=25)
    assert len(texts) == 25 and "sample knowledge base" in origin and all(len(t) > 30 for t in texts)


def test_synthetic_points_are_made_on_demand_the_same_each_time() -> None:
    from kb.bench import synthetic_points

    points = synthetic_points(30, _base(), seed=2)
    assert len(points) == 30 and len(points[5:9]) == 4 and points[-1].chunk_id == points[29].chunk_id
    first, again = points[7], points[7]
    assert first.chunk_id == again.chunk_id and first.sparse == again.sparse
    assert first.text == points.texts[7] and np.array_equal(first.dense, points.vectors[7])
    assert [p.chunk_id for p in points] == points.ids() and len(set(points.ids())) == 30


def test_the_hnsw_build_memory_holds_the_graph_within_a_share_of_the_machine() -> None:
    from assets.index import HNSW_MEMORY_FLOOR_MB, hnsw_build_memory_mb

    # 100,000 vectors of 896 floats built a 391 MB graph: the setting must hold it.
    assert 391 < hnsw_build_memory_mb(100_000, 896, total_mb=24_000) < 600
    assert 3_900 < hnsw_build_memory_mb(1_000_000, 896, total_mb=24_000) < 6_000
    assert hnsw_build_memory_mb(1_000_000, 896, total_mb=8_000) == 2_000  # capped at a quarter of the machine
    assert hnsw_build_memory_mb(2_000, 896, total_mb=24_000) == HNSW_MEMORY_FLOOR_MB
