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
