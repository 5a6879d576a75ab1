"""`kb bench ingest`: whole-pipeline throughput against embedding alone on the same chunks, and a no-op reindex."""

from __future__ import annotations

import random
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import dagster as dg
from rich.console import Console

from assets import stages
from assets.chunk import Chunker
from assets.collections import CollectionSpec, SourceSpec, load_specs
from assets.extract import FolderSource
from kb.ingest import ingest_collections
from kb.platform import free_port
from kb.postgres import EmbeddedPostgres
from kb.settings import PROJECT_ROOT, EmbeddingSettings, PlatformSettings
from pipelines.resources import EmbedderResource, EventQueueResource, IndexResource, StorageResource

_WORDS = (
    "payment gateway acquirer ledger settlement refund capture authorisation merchant card token fraud score "
    "kafka partition consumer lag redis failover idempotency key retry timeout certificate rotation deployment "
    "replica namespace alert runbook incident rollback latency budget reconciliation batch webhook signature"
).split()


def generate_corpus(folder: Path, documents: int, paragraphs: int, seed: int = 7) -> None:
    """Deterministic markdown documents of random payments vocabulary: sized for a chunk count, not for meaning."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for d in range(documents):
        lines = [f"# Generated document {d}"]
        for p in range(paragraphs):
            sentences = (" ".join(rng.choices(_WORDS, k=rng.randint(8, 16))).capitalize() + "." for _ in range(4))
            lines.append(f"## Section {p}\n\n" + " ".join(sentences))
        (folder / f"doc-{d:05d}.md").write_text("\n\n".join(lines) + "\n", encoding="utf-8")


def _embedding_alone(specs: list[CollectionSpec], embedder: Any) -> tuple[int, float]:
    """Chunk every collection with the pipeline's own stages (untimed), then time only the embedding."""
    texts: list[str] = []
    for spec in specs:
        raw = FolderSource(Path(spec.source.path)).documents(PlatformSettings().max_file_bytes)
        extracted = stages.ExtractResult(raw, {d.doc_id: "bench" for d in raw}, 0, [])
        documents, _ = stages.mask(stages.parse(extracted, spec).documents)
        texts += [c.text for c in stages.chunk(documents, Chunker(spec, embedder.count_tokens))]
    started = time.perf_counter()
    embedder.embed_passages(texts)
    return len(texts), time.perf_counter() - started


def _measure(name: str, specs: list[CollectionSpec], resources: dict[str, Any], console: Console) -> dict[str, Any]:
    embedder = resources["embedder"].get()
    console.log(f"{name}: embedding alone")
    chunks, embed_seconds = _embedding_alone(specs, embedder)
    instance = dg.DagsterInstance.ephemeral()
    console.log(f"{name}: full pipeline, {chunks} chunks")
    started = time.perf_counter()
    first = ingest_collections(specs, resources, instance)
    full_seconds = time.perf_counter() - started
    console.log(f"{name}: no-op reindex")
    started = time.perf_counter()
    again = ingest_collections(specs, resources, instance)
    noop_seconds = time.perf_counter() - started
    assert all(r["ok"] for r in first.values()), first
    pipeline_rate = sum(r["chunks"] for r in first.values()) / full_seconds
    embed_rate = chunks / embed_seconds
    return {
        "chunks": chunks,
        "pipeline_chunks_per_s": round(pipeline_rate, 2),
        "embedding_alone_chunks_per_s": round(embed_rate, 2),
        "pipeline_to_embedding_ratio": round(pipeline_rate / embed_rate, 3),
        "full_ingest_s": round(full_seconds, 2),
        "noop_reindex_s": round(noop_seconds, 2),
        "noop_to_full_ratio": round(noop_seconds / full_seconds, 4),
        "noop_reembedded": sum(r["embedded"] for r in again.values()),
    }


def run_ingest_benchmark(target_chunks: int, console: Console) -> dict[str, Any]:
    """The sample knowledge base and a generated corpus, each on a fresh index in a private embedded
    PostgreSQL (pgvector, the default backend)."""
    work = Path(tempfile.mkdtemp(prefix="kb-bench-"))
    server = EmbeddedPostgres(work / "postgres", port=free_port())
    url = server.start()
    embedding = EmbeddingSettings()
    resources = {
        "index": IndexResource(database_url=url),
        "embedder": EmbedderResource(
            model_dir=str(embedding.model_dir),
            pooling=embedding.pooling,
            batch_size=embedding.batch_size,
            max_length=embedding.max_length,
        ),
        "storage": StorageResource(data_dir=str(work / "data")),
        "events": EventQueueResource(database_url=url),
    }
    try:
        samples = load_specs(PlatformSettings().collections_file, PROJECT_ROOT)
        results = {"sample_knowledge_base": _measure("samples", samples, resources, console)}
        # 64-token chunks; a ~70-token section (with its heading path) makes two: ~10 chunks per document.
        documents = max(1, target_chunks // 10)
        generate_corpus(work / "generated", documents, paragraphs=5)
        spec = CollectionSpec(
            name="bench_generated",
            chunk_tokens=64,
            chunk_overlap=8,
            splitter="prose",
            source=SourceSpec(path=str(work / "generated")),
        )
        results["generated_corpus"] = _measure("generated", [spec], resources, console)
        return {
            "backend": "pgvector (embedded PostgreSQL)",
            "embedding_model": str(embedding.model_dir.relative_to(embedding.model_dir.parents[1])),
            **results,
        }
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2) if ordered else 0.0

    return {"p50": pick(0.5), "p95": pick(0.95)}


def _fill_synthetic(index: Any, collection: str, chunks: int, dimension: int, seed: int = 11) -> None:
    """Random unit vectors and random payments-vocabulary text: retrieval latency depends on the index
    size and shape, not on what the vectors mean, and embedding 100,000 chunks here would take hours."""
    import numpy as np

    from assets.index import IndexPoint
    from assets.sparse import bm25_document_vector

    rng = random.Random(seed)
    vectors = np.random.default_rng(seed).standard_normal((chunks, dimension)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index.ensure_collection(collection, dimension)
    points = []
    for n in range(chunks):
        text = " ".join(rng.choices(_WORDS, k=40))
        points.append(IndexPoint(str(uuid.UUID(int=n + 1)), f"doc-{n // 10}.md", "h", n % 10, f"c{n}", text, {"lang": "en"},
                                 vectors[n], bm25_document_vector(text, 40)))  # fmt: skip
    # One write: a bulk load builds the HNSW graph once instead of inserting row by row.
    index.write(collection, points, [])


def run_query_benchmark(sizes: list[int], clients: list[int], queries: int, console: Console) -> dict[str, Any]:
    """p50/p95 per retrieval stage (embed, search, fuse, rerank) by index size and concurrent clients,
    and the API's overhead: /v1/query (answer=false) against the same retrieval in-process."""
    import os
    import subprocess
    import sys
    from concurrent.futures import ThreadPoolExecutor

    import httpx
    import yaml

    from assets.embed import Embedder
    from assets.index import PgVectorIndex
    from query_engine.engine import AnswerEngine
    from query_engine.rerank import EvidenceReranker

    work = Path(tempfile.mkdtemp(prefix="kb-bench-q-"))
    server = EmbeddedPostgres(work / "postgres", port=free_port())
    url = server.start()
    embedding = EmbeddingSettings()
    embedder = Embedder(embedding.model_dir, embedding.pooling, embedding.batch_size, embedding.max_length)
    rng = random.Random(5)
    questions = [" ".join(rng.choices(_WORDS, k=8)) + "?" for _ in range(queries)]
    results: dict[str, Any] = {"backend": "pgvector (embedded PostgreSQL, HNSW)", "queries": queries, "sizes": {}}
    try:
        loader = PgVectorIndex(url)
        for size in sizes:
            collection = f"bench_q{size}"
            console.log(f"filling {collection} with {size} synthetic chunks")
            _fill_synthetic(loader, collection, size, embedder.dimension)
            by_clients: dict[str, Any] = {}
            for n_clients in clients:
                engines = [
                    AnswerEngine(PgVectorIndex(url), embedder, [collection], EvidenceReranker(), None) for _ in range(n_clients)
                ]
                timings: list[dict[str, float]] = []

                def work_on(
                    slot: int, engines: list[AnswerEngine] = engines, n_clients: int = n_clients
                ) -> list[dict[str, float]]:
                    out = []
                    for question in questions[slot::n_clients]:
                        started = time.perf_counter()
                        retrieval = engines[slot].retrieve(question)
                        out.append({**retrieval.timings, "retrieval_ms": (time.perf_counter() - started) * 1000})
                    return out

                console.log(f"{collection}: {n_clients} client(s)")
                with ThreadPoolExecutor(n_clients) as pool:
                    for part in pool.map(work_on, range(n_clients)):
                        timings.extend(part)
                stages_ = ("embed_ms", "search_ms", "fuse_ms", "rerank_ms", "retrieval_ms")
                by_clients[f"{n_clients}_clients"] = {s: _percentiles([t[s] for t in timings]) for s in stages_}
            results["sizes"][str(size)] = by_clients
        # API overhead on the largest index, one client: the same retrieval through uvicorn + FastAPI.
        size = sizes[-1]
        config = work / "collections.yaml"
        config.write_text(
            yaml.safe_dump(
                {"collections": {f"bench_q{size}": {"chunk_tokens": 64, "chunk_overlap": 8, "source": {"path": str(work)}}}}
            )
        )
        port = free_port()
        env = {**os.environ, "DATABASE_URL": url, "KB_COLLECTIONS_FILE": str(config), "KB_API_PORT": str(port)}
        api = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "api.main:create_app", "--port", str(port), "--log-level", "warning"],
            env=env,
            cwd=PROJECT_ROOT,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.5)
            engine = AnswerEngine(PgVectorIndex(url), embedder, [f"bench_q{size}"], EvidenceReranker(), None)
            direct, through_api = [], []
            with httpx.Client(timeout=60) as client:
                for question in questions:
                    started = time.perf_counter()
                    engine.retrieve(question)
                    direct.append((time.perf_counter() - started) * 1000)
                    started = time.perf_counter()
                    response = client.post(f"{base}/v1/query", json={"question": question, "answer": False})
                    through_api.append((time.perf_counter() - started) * 1000)
                    response.raise_for_status()
            results["api_overhead"] = {
                "in_process_ms": _percentiles(direct),
                "api_ms": _percentiles(through_api),
                "ratio_p50": round(_percentiles(through_api)["p50"] / max(_percentiles(direct)["p50"], 1e-6), 3),
            }
        finally:
            api.terminate()
            api.wait(timeout=30)
        return results
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
