"""One contract, two backends: pgvector in the embedded PostgreSQL and Qdrant in local mode."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from assets.chunk import chunk_id
from assets.index import IndexPoint, PgVectorIndex, QdrantIndex, VectorIndex
from assets.sparse import bm25_document_vector, query_terms

TEXTS = {
    "kafka.md": "Consumer lag on the payments events topic: scale the Kafka consumer to the partition count.",
    "redis.md": "Redis primary failover for idempotency keys: promote a replica with cluster failover takeover.",
    "ru.md": "Повторный запуск расчётного батча безопасен: батч идемпотентен.",
}


@pytest.fixture(params=["pgvector", "qdrant"])
def index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VectorIndex]:
    backend: VectorIndex
    if request.param == "pgvector":
        backend = PgVectorIndex(request.getfixturevalue("postgres_url"))
    else:
        backend = QdrantIndex(path=tmp_path / "qdrant")
    backend.drop_collection("contract")
    backend.ensure_collection("contract", request.getfixturevalue("embedder").dimension)
    yield backend
    backend.drop_collection("contract")
    backend.close()


def points(embedder, texts: dict[str, str], doc_hash: str = "v1") -> list[IndexPoint]:  # type: ignore[no-untyped-def]
    vectors = embedder.embed_passages(list(texts.values()))
    return [
        IndexPoint(chunk_id("contract", doc, 0), doc, doc_hash, 0, f"hash-{doc}-{text[:8]}", text,
                   {"path": doc, "lang": "ru" if doc == "ru.md" else "en"}, vector, bm25_document_vector(text, 20))
        for (doc, text), vector in zip(texts.items(), vectors, strict=True)
    ]  # fmt: skip


def test_written_points_are_found_by_dense_and_sparse_search(index: VectorIndex, embedder) -> None:  # type: ignore[no-untyped-def]
    index.write("contract", points(embedder, TEXTS), [])
    assert index.count("contract") == 3
    dense = index.dense_search("contract", embedder.embed_queries(["kafka consumer lag"])[0], 3)
    assert dense[0].doc_id == "kafka.md" and dense[0].score > dense[-1].score
    sparse = index.sparse_search("contract", query_terms("redis failover"), 3)
    assert [h.doc_id for h in sparse] == ["redis.md"]
    assert index.sparse_search("contract", query_terms("расчётных батчей"), 3)[0].doc_id == "ru.md"


def test_document_access_lists_filter_every_search_before_ranking(index: VectorIndex, embedder) -> None:  # type: ignore[no-untyped-def]
    restricted = points(embedder, TEXTS)
    restricted[0] = IndexPoint(
        **{**restricted[0].__dict__, "metadata": {**restricted[0].metadata, "acl_groups": "devops, treasury"}}
    )
    index.write("contract", restricted, [])
    vector = embedder.embed_queries(["kafka consumer lag"])[0]
    everything = {h.doc_id for h in index.dense_search("contract", vector, 3)}
    assert "kafka.md" in everything  # no groups given: an operator's own view, every chunk
    for groups in ([], ["viewer"], ["payments"]):
        assert "kafka.md" not in {h.doc_id for h in index.dense_search("contract", vector, 3, groups=groups)}
        assert index.sparse_search("contract", query_terms("kafka consumer partition"), 3, groups=groups) == []
        assert index.document_chunks("contract", "kafka.md", groups=groups) == []
        assert {h.doc_id for h in index.dense_search("contract", vector, 3, groups=groups)} == {"redis.md", "ru.md"}
    assert [h.doc_id for h in index.sparse_search("contract", query_terms("kafka consumer"), 3, groups=["treasury"])] == [
        "kafka.md"
    ]
    assert index.document_chunks("contract", "kafka.md", groups=["devops"])[0].metadata["acl_groups"] == ["devops", "treasury"]
    # Filters and access lists combine.
    assert index.dense_search("contract", vector, 3, {"lang": "en"}, groups=["viewer"])[0].doc_id == "redis.md"


def test_metadata_filters_narrow_both_searches(index: VectorIndex, embedder) -> None:  # type: ignore[no-untyped-def]
    index.write("contract", points(embedder, TEXTS), [])
    vector = embedder.embed_queries(["kafka consumer lag"])[0]
    assert {h.doc_id for h in index.dense_search("contract", vector, 3, {"lang": "ru"})} == {"ru.md"}
    assert index.sparse_search("contract", query_terms("kafka"), 3, {"path": ["redis.md"]}) == []


def test_upsert_is_idempotent_and_delete_removes_points(index: VectorIndex, embedder) -> None:  # type: ignore[no-untyped-def]
    batch = points(embedder, TEXTS)
    index.write("contract", batch, [])
    index.write("contract", batch, [])
    assert index.count("contract") == 3
    index.write("contract", [], [batch[0].chunk_id])
    assert index.count("contract") == 2
    assert {c.doc_id for c in index.stored_chunks("contract")} == {"redis.md", "ru.md"}


def test_stored_hashes_and_vectors_support_incremental_runs(index: VectorIndex, embedder) -> None:  # type: ignore[no-untyped-def]
    batch = points(embedder, TEXTS)
    index.write("contract", batch, [])
    assert index.document_hashes("contract") == {"kafka.md": "v1", "redis.md": "v1", "ru.md": "v1"}
    stored = index.vectors_by_chunk_hash("contract", ["kafka.md"])
    assert list(stored) == [batch[0].chunk_hash]
    assert np.allclose(stored[batch[0].chunk_hash], batch[0].dense, atol=1e-5)


def test_document_chunks_come_back_in_order(index: VectorIndex, embedder) -> None:  # type: ignore[no-untyped-def]
    first = points(embedder, {"kafka.md": TEXTS["kafka.md"]})[0]
    second = IndexPoint(
        chunk_id("contract", "kafka.md", 1), "kafka.md", "v1", 1, "h2", "second part", {}, first.dense, first.sparse
    )
    index.write("contract", [second, first], [])
    assert [h.text for h in index.document_chunks("contract", "kafka.md")] == [first.text, "second part"]
    assert index.document_chunks("contract", "missing.md") == []


def test_a_document_with_disagreeing_chunk_hashes_is_marked_for_rewrite(index: VectorIndex, embedder) -> None:  # type: ignore[no-untyped-def]
    first = points(embedder, {"kafka.md": TEXTS["kafka.md"]}, "v1")[0]
    second = IndexPoint(
        chunk_id("contract", "kafka.md", 1), "kafka.md", "v2", 1, "other", "more text", {}, first.dense, first.sparse
    )
    index.write("contract", [first, second], [])
    assert index.document_hashes("contract") == {"kafka.md": ""}


def test_pgvector_write_is_atomic(postgres_url: str, embedder) -> None:  # type: ignore[no-untyped-def]
    index = PgVectorIndex(postgres_url)
    index.drop_collection("atomic")
    index.ensure_collection("atomic", embedder.dimension)
    good = points(embedder, TEXTS)
    index.write("atomic", good[:1], [])
    broken = IndexPoint("not-a-uuid", "x.md", "v1", 0, "h", "t", {}, good[1].dense, good[1].sparse)
    with pytest.raises(Exception):  # noqa: B017 - any database error must roll back the whole write
        index.write("atomic", [good[2], broken], [good[0].chunk_id])
    assert [c.doc_id for c in index.stored_chunks("atomic")] == ["kafka.md"]
    index.drop_collection("atomic")
    index.close()


def test_pgvector_builds_its_hnsw_graph_with_the_measured_parameters(postgres_url: str, embedder) -> None:  # type: ignore[no-untyped-def]
    import psycopg

    index = PgVectorIndex(postgres_url)
    index.drop_collection("graph")
    index.ensure_collection("graph", embedder.dimension)
    many = [
        IndexPoint(chunk_id("graph", f"d{i}.md", 0), f"d{i}.md", "v1", 0, f"h{i}", f"text {i}", {}, p.dense, p.sparse)
        for i, p in enumerate(points(embedder, TEXTS) * 700)
    ]
    with psycopg.connect(postgres_url) as conn:
        for rows in ([], many):  # as created, then as rebuilt after a bulk load
            if rows:
                index.write("graph", rows, [])
            definition = conn.execute(
                "SELECT indexdef FROM pg_indexes WHERE indexname = %s", (f"{PgVectorIndex._table('graph')}_hnsw",)
            ).fetchone()
            assert definition is not None and "m='16'" in definition[0] and "ef_construction='128'" in definition[0]
    assert index.count("graph") == len(many)
    index.drop_collection("graph")
    index.close()


def test_pgvector_document_frequencies_follow_every_write(postgres_url: str, embedder) -> None:  # type: ignore[no-untyped-def]
    index = PgVectorIndex(postgres_url)
    index.drop_collection("dfs")
    index.ensure_collection("dfs", embedder.dimension)
    first = points(embedder, TEXTS)
    index.write("dfs", first, [])
    changed = points(embedder, {"kafka.md": "Kafka consumer lag again: add consumers, never partitions."}, "v2")
    index.write("dfs", changed, [first[1].chunk_id])  # kafka.md replaced, redis.md deleted
    counted = "SELECT term, count(*) FROM kb_chunks_dfs, unnest(terms || -1) AS term GROUP BY term"
    kept = "SELECT term, df FROM kb_chunks_dfs_df WHERE df > 0"
    assert dict(index._rows(kept)) == dict(index._rows(counted))
    assert dict(index._rows(kept))[-1] == 2
    # An index written before the frequency table existed gets it on the next ensure_collection.
    index._rows("DROP TABLE kb_chunks_dfs_df")
    index.ensure_collection("dfs", embedder.dimension)
    assert dict(index._rows(kept)) == dict(index._rows(counted))
    assert [h.doc_id for h in index.sparse_search("dfs", query_terms("kafka partitions"), 3)] == ["kafka.md"]
    index.drop_collection("dfs")
    index.close()


def test_a_new_embedding_dimension_replaces_the_collection(index: VectorIndex, embedder) -> None:  # type: ignore[no-untyped-def]
    index.write("contract", points(embedder, TEXTS), [])
    index.ensure_collection("contract", embedder.dimension)
    assert index.count("contract") == 3  # same model: kept
    index.ensure_collection("contract", 512)
    assert index.count("contract") == 0
    vector = np.ones(512, dtype=np.float32) / np.sqrt(512)
    index.write("contract", [IndexPoint(chunk_id("contract", "x.md", 0), "x.md", "v1", 0, "h", "text", {}, vector,
                                        bm25_document_vector("text", 20))], [])  # fmt: skip
    assert [h.doc_id for h in index.dense_search("contract", vector, 3)] == ["x.md"]


def test_every_write_and_drop_gives_the_collection_a_new_version(index: VectorIndex, embedder) -> None:  # type: ignore[no-untyped-def]
    """Caches key on the version (query_engine/cache.py): it must change with every change to what a search can
    return, never come back to an earlier value, and not move for collections that were not touched."""
    seen = [index.versions(["contract", "elsewhere"])]
    index.write("contract", points(embedder, TEXTS), [])
    seen.append(index.versions(["contract", "elsewhere"]))
    index.write("contract", [], [chunk_id("contract", "ru.md", 0)])
    seen.append(index.versions(["contract", "elsewhere"]))
    index.drop_collection("contract")
    seen.append(index.versions(["contract", "elsewhere"]))
    index.ensure_collection("contract", embedder.dimension)
    index.write("contract", points(embedder, TEXTS), [])
    seen.append(index.versions(["contract", "elsewhere"]))
    contract = [v["contract"] for v in seen]
    assert len(set(contract)) == len(contract), contract
    assert {v["elsewhere"] for v in seen} == {"0"}
    assert index.versions([]) == {}
