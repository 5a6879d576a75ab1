"""`kb bench ingest`: whole-pipeline throughput against embedding alone on the same chunks, and a no-op reindex."""

from __future__ import annotations

import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import dagster as dg
from rich.console import Console

from assets import stages
from assets.chunk import Chunker
from assets.collections import CollectionSpec, SourceSpec, load_specs
from assets.extract import FolderSource
from kb.ingest import ingest_collections
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


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_ingest_benchmark(target_chunks: int, console: Console) -> dict[str, Any]:
    """The sample knowledge base and a generated corpus, each on a fresh index in a private embedded
    PostgreSQL (pgvector, the default backend)."""
    work = Path(tempfile.mkdtemp(prefix="kb-bench-"))
    server = EmbeddedPostgres(work / "postgres", port=_free_port())
    url = server.start()
    embedding = EmbeddingSettings()
    resources = {
        "index": IndexResource(database_url=url),
        "embedder": EmbedderResource(model_dir=str(embedding.model_dir), pooling=embedding.pooling,
                                     batch_size=embedding.batch_size, max_length=embedding.max_length),
        "storage": StorageResource(data_dir=str(work / "data")),
        "events": EventQueueResource(database_url=url),
    }  # fmt: skip
    try:
        samples = load_specs(PlatformSettings().collections_file, PROJECT_ROOT)
        results = {"sample_knowledge_base": _measure("samples", samples, resources, console)}
        # 64-token chunks; a ~70-token section (with its heading path) makes two: ~10 chunks per document.
        documents = max(1, target_chunks // 10)
        generate_corpus(work / "generated", documents, paragraphs=5)
        spec = CollectionSpec(name="bench_generated", chunk_tokens=64, chunk_overlap=8, splitter="prose",
                              source=SourceSpec(path=str(work / "generated")))  # fmt: skip
        results["generated_corpus"] = _measure("generated", [spec], resources, console)
        return {
            "backend": "pgvector (embedded PostgreSQL)",
            "embedding_model": str(embedding.model_dir.relative_to(embedding.model_dir.parents[1])),
            **results,
        }
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
