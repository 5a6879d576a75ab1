"""`kb bench ingest`: whole-pipeline throughput against embedding alone on the same chunks, and a no-op reindex."""

from __future__ import annotations

import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import dagster as dg
from rich.console import Console

from assets import stages
from assets.chunk import Chunker
from assets.collections import CollectionSpec, SourceSpec, load_specs
from assets.extract import FolderSource
from kb.ingest import ingest_collections
from kb.platform import Platform, free_port
from kb.postgres import EmbeddedPostgres
from kb.settings import PROJECT_ROOT, EmbeddingSettings, IndexSettings, LLMSettings, PlatformSettings, PostgresSettings
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
        masked = stages.mask(stages.parse(extracted, spec).documents)
        texts += [c.text for c in stages.chunk(masked.documents, Chunker(spec, embedder)).chunks]
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


def _bench_resources(url: str, work: Path) -> dict[str, Any]:
    """Dagster resources on the bench's private database and scratch folder."""
    return {
        "index": IndexResource(database_url=url),
        "embedder": EmbedderResource(**EmbeddingSettings().resource_fields()),
        "storage": StorageResource(data_dir=str(work / "data")),
        "events": EventQueueResource(database_url=url),
    }


def run_ingest_benchmark(target_chunks: int, console: Console) -> dict[str, Any]:
    """The sample knowledge base and a generated corpus, each on a fresh index in a private embedded
    PostgreSQL (pgvector, the default backend)."""
    work = Path(tempfile.mkdtemp(prefix="kb-bench-"))
    server = EmbeddedPostgres(work / "postgres", port=free_port())
    url = server.start()
    embedding = EmbeddingSettings()
    resources = _bench_resources(url, work)
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


_FUNCTION_WORDS = (
    "the of and to a in is for that on with as by it be this are from or at an not if when which can after all"
).split()
_SYLLABLES = "ka lo mi nu pe ra si to ve zu ba de fi go hu ja ke li mo ny".split()


def zipf_vocabulary(size: int) -> list[str]:
    """English function words first, then generated words that grow longer with rank, as real ones do."""
    generated = []
    n = 0
    while len(generated) < size - len(_FUNCTION_WORDS):
        n += 1
        word, rest = "", n
        while rest:
            rest, digit = divmod(rest, len(_SYLLABLES))
            word += _SYLLABLES[digit]
        generated.append(word + "x")  # a consonant ending keeps the stemmer from merging words
    return _FUNCTION_WORDS + generated


def synthetic_texts(count: int, words: int, seed: int, vocabulary: int = 50_000) -> list[str]:
    """Texts whose word frequencies follow Zipf's law (exponent 1.07, as in English): BM25 search cost
    depends on how many chunks hold each query term, so a flat toy vocabulary would misstate it."""
    import numpy as np

    vocab = np.array(zipf_vocabulary(vocabulary))
    weights = 1.0 / (np.arange(vocabulary) + 2.7) ** 1.07
    drawn = np.random.default_rng(seed).choice(vocabulary, size=(count, words), p=weights / weights.sum())
    return [" ".join(vocab[row]) for row in drawn]


def bench_questions(texts: list[str], count: int, seed: int = 5) -> list[str]:
    """Questions as people type them: a run of 5 to 9 words from some chunk (function words included)."""
    rng = random.Random(seed)
    questions = []
    for _ in range(count):
        words = rng.choice(texts).split()
        length = rng.randint(5, 9)
        start = rng.randrange(len(words) - length)
        questions.append(" ".join(words[start : start + length]) + "?")
    return questions


class SyntheticPoints(Sequence[Any]):
    """Index points made on demand from their texts and vectors: a point's BM25 vector (a tuple of term ids and one
    of weights, ~8 KB as Python objects) would make a million points ~8 GiB held at once; the index and the floor
    read them once, in order."""

    def __init__(self, texts: list[str], vectors: Any) -> None:
        self.texts = texts
        self.vectors = vectors

    def __len__(self) -> int:
        return len(self.texts)

    @overload
    def __getitem__(self, n: int) -> Any: ...
    @overload
    def __getitem__(self, n: slice) -> list[Any]: ...
    def __getitem__(self, n: int | slice) -> Any:
        if isinstance(n, slice):
            return [self._point(i) for i in range(*n.indices(len(self)))]
        return self._point(range(len(self))[n])

    def _point(self, n: int) -> Any:
        from assets.index import IndexPoint
        from assets.sparse import bm25_document_vector

        text = self.texts[n]
        return IndexPoint(_point_id(n), f"doc-{n // 10}.md", "h", n % 10, f"c{n}", text, {"lang": "en"},
                          self.vectors[n], bm25_document_vector(text, 200))  # fmt: skip

    def ids(self) -> list[str]:
        return [_point_id(n) for n in range(len(self))]


def _point_id(n: int) -> str:
    return str(uuid.UUID(int=n + 1))


def synthetic_points(chunks: int, base: Any, seed: int = 11) -> SyntheticPoints:
    """Zipf-distributed text of 200 words a chunk, with vectors grown from real passages' embeddings
    (kb/bench_quality.py): latency and recall depend on the index's size and shape, and embedding 100,000 chunks
    here would take hours. Questions are drawn from the texts."""
    from kb.bench_quality import grown_vectors

    return SyntheticPoints(synthetic_texts(chunks, 200, seed), grown_vectors(base, chunks, seed))


def _fill_synthetic(index: Any, collection: str, points: list[Any], dimension: int) -> None:
    index.ensure_collection(collection, dimension)
    # One write: a bulk load builds the HNSW graph once instead of inserting row by row.
    index.write(collection, points, [])


def _per_client(search: Callable[[str], Any], questions: list[str], n_clients: int) -> list[Any]:
    """`search` for the same questions on as many threads as clients, each thread its share in turn (the floor and
    the peer are timed the way ours is)."""
    from concurrent.futures import ThreadPoolExecutor

    def work_on(slot: int) -> list[Any]:
        return [search(q) for q in questions[slot::n_clients]]

    with ThreadPoolExecutor(n_clients) as pool:
        return [t for part in pool.map(work_on, range(n_clients)) for t in part]


RECALL_QUERIES = 50
PEER_MAX_CHUNKS = 100_000  # LlamaIndex's in-memory store holds vectors as Python lists: 1M chunks would need ~30 GiB


def _dense_recall(url: str, collection: str, floor: Any, vectors: Any, base: Any, ids: list[str]) -> dict[str, float]:
    """recall@10 against exact cosine search of every vector: pgvector's HNSW (ours) and Qdrant's (the floor), for
    held-out vectors drawn like the indexed ones."""
    from assets.index import PgVectorIndex
    from kb.bench_quality import exact_top, grown_vectors, recall_at_10

    queries = grown_vectors(base, RECALL_QUERIES, seed=97)
    exact = [[ids[r] for r in row] for row in exact_top(vectors, queries)]
    index = PgVectorIndex(url)
    try:
        ours = [[h.chunk_id for h in index.dense_search(collection, q, 10)] for q in queries]
    finally:
        index.close()
    floor_found = [floor.dense(q, 10) for q in queries]
    return {"dense": recall_at_10(ours, exact), "floor_dense": recall_at_10(floor_found, exact)}


PEER_EVAL_SET = "prom_runbooks"


def _peer_quality(embedding: EmbeddingSettings, console: Console) -> dict[str, Any]:
    """nDCG@10 of ours (hybrid + rerank) and of the peer over the same chunks of one shared eval set."""
    from evals.suite import evaluate_retrieval
    from kb.bench_quality import EVALSETS

    dataset = EVALSETS / PEER_EVAL_SET
    if not dataset.is_dir():
        return {"skipped": f"{dataset} is not here (the eval sets live beside the checkout)"}
    result = evaluate_retrieval(dataset, None, None, None, None, PlatformSettings(), embedding, console, peer=True)
    systems = result["systems"]
    return {
        "set": result["dataset"],
        "queries": result["queries"],
        "ndcg@10": {"ours": systems["hybrid_rerank"]["ndcg@10"], "peer": systems["llamaindex_peer"]["ndcg@10"]},
        "ms_per_query": {"ours": systems["hybrid_rerank"]["ms_per_query"], "peer": systems["llamaindex_peer"]["ms_per_query"]},
    }


def run_query_benchmark(
    sizes: list[int], clients: list[int], queries: int, console: Console, llm_model: Path | None = None, llm_questions: int = 0
) -> dict[str, Any]:
    """p50/p95 per retrieval stage (embed, search, fuse, rerank) by index size and concurrent clients;
    the API's overhead: /v1/query (answer=false) against the same retrieval in-process; and, with an LLM
    model, time to first token and tokens/s through /v1/chat/completions against the LLM server direct."""
    from concurrent.futures import ThreadPoolExecutor

    import yaml

    from assets.index import PgVectorIndex
    from kb.bench_quality import describe, embedding_base, folder_mb, resident_mb, table_mb
    from kb.floor import EdgeFloor, floor_of, ratios
    from kb.peer import LlamaIndexPeer, peer_of
    from query_engine.engine import AnswerEngine
    from query_engine.rerank import EvidenceReranker

    work = Path(tempfile.mkdtemp(prefix="kb-bench-q-"))
    server = EmbeddedPostgres(work / "postgres", port=free_port())
    url = server.start()
    embedding = EmbeddingSettings()
    embedder = embedding.load()
    console.log("embedding the real passages the index vectors are grown from")
    real, origin = embedding_base(embedder)
    questions: list[str] = []
    results: dict[str, Any] = {
        "backend": "pgvector (embedded PostgreSQL, HNSW)",
        "queries": queries,
        "vectors": describe(origin),
        "peer": "LlamaIndex VectorStoreIndex (in memory) + BM25Retriever (bm25s) + QueryFusionRetriever (RRF), same vectors",
        "sizes": {},
    }
    try:
        loader = PgVectorIndex(url)
        for size in sizes:
            collection = f"bench_q{size}"
            console.log(f"filling {collection} and the floor's engine with {size} synthetic chunks")
            points = synthetic_points(size, real)
            started = time.perf_counter()
            _fill_synthetic(loader, collection, points, embedder.dimension)
            fill_s = time.perf_counter() - started
            floor = EdgeFloor(work / f"edge-{size}", embedder.dimension)
            started = time.perf_counter()
            floor.load(points)
            floor_fill_s = time.perf_counter() - started
            questions = bench_questions(points.texts, queries)
            vectors, ids = points.vectors, points.ids()
            peer = LlamaIndexPeer(points, embedder) if size <= PEER_MAX_CHUNKS else None
            del points
            by_clients: dict[str, Any] = {
                "index_build_s": {"pgvector": round(fill_s, 1), "floor": round(floor_fill_s, 1)},
                "disk_mb": {
                    "pgvector": table_mb(url, [PgVectorIndex._table(collection), PgVectorIndex._df_table(collection)]),
                    "floor": folder_mb(work / f"edge-{size}"),
                },
                "resident_mb": resident_mb([pid for pid in [server.postmaster_pid()] if pid]),
            }
            console.log(f"{collection}: recall@10 against exact search")
            by_clients["recall_at_10"] = _dense_recall(url, collection, floor, vectors, real, ids)
            del vectors, ids
            for n_clients in clients:
                engines = [
                    AnswerEngine(PgVectorIndex(url), embedder, [collection], EvidenceReranker(), None) for _ in range(n_clients)
                ]
                timings: list[dict[str, float]] = []

                def work_on(
                    slot: int, engines: list[AnswerEngine] = engines, n_clients: int = n_clients, questions: list[str] = questions
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
                stages_ = ("embed_ms", "dense_search_ms", "sparse_search_ms", "search_ms", "fuse_ms", "rerank_ms", "gate_ms",
                           "retrieval_ms")  # fmt: skip
                entry = {s: _percentiles([t[s] for t in timings]) for s in stages_}
                floors = _per_client(lambda q, floor=floor: floor_of(q, embedder, floor), questions, n_clients)
                entry["floor_ms"] = _percentiles([f.total_ms for f in floors])
                entry["floor_embed_ms"] = _percentiles([f.embed_ms for f in floors])
                entry["floor_search_ms"] = _percentiles([f.search_ms for f in floors])
                if peer is not None:
                    peers = _per_client(lambda q, peer=peer: peer_of(q, peer), questions, n_clients)
                    entry["peer_ms"] = _percentiles([t.ms for t in peers])
                by_clients[f"{n_clients}_clients"] = {**entry, **ratios(entry["retrieval_ms"], entry["floor_ms"])}
            by_clients["bm25_candidates"] = _pruning_agreement(url, collection, questions)
            # The sparse stage's only approximation is its rare-term candidate list (assets/sparse.py).
            by_clients["recall_at_10"]["sparse"] = by_clients["bm25_candidates"]["exact_top10_kept"]
            if peer is None:
                by_clients["peer_skipped"] = f"above {PEER_MAX_CHUNKS} chunks the peer's in-memory store does not fit"
            del peer
            by_clients["cache"] = _cache_benchmark(url, embedder, collection, questions)
            floor.close()
            results["sizes"][str(size)] = by_clients
        # API overhead on the largest index, one client: the same retrieval through uvicorn + FastAPI.
        size = sizes[-1]
        config = work / "collections.yaml"
        config.write_text(
            yaml.safe_dump(
                {"collections": {f"bench_q{size}": {"chunk_tokens": 64, "chunk_overlap": 8, "source": {"path": str(work)}}}}
            )
        )
        runtime = Platform(PlatformSettings(), PostgresSettings(), IndexSettings())
        try:
            # The cache off: the API must do the same retrieval as the in-process engine it is compared with.
            env = {"DATABASE_URL": url, "KB_COLLECTIONS_FILE": str(config), "KB_CACHE_ENABLED": "false"}
            base = _start_api(runtime, work, env)
            engine = AnswerEngine(PgVectorIndex(url), embedder, [f"bench_q{size}"], EvidenceReranker(), None)
            results["api_overhead"] = _api_overhead(base, engine, questions)
        finally:
            runtime.stop()
        results["peer_quality"] = _peer_quality(embedding, console)
        if llm_model is not None and llm_questions > 0:
            results["llm"] = _llm_benchmark(url, work, llm_model, SAMPLE_QUESTIONS[:llm_questions], console)
        return results
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


# Questions the sample knowledge base answers, in the three languages the assistant speaks.
SAMPLE_QUESTIONS = [
    "How do I handle consumer lag on the payments events Kafka topic?",
    "What happened in the Redis failover incident and what was changed afterwards?",
    "How is the card gateway TLS certificate renewed?",
    "Как безопасно перезапустить расчётный батч?",
    "通知服务积压时应该怎么处理?",
    "What does the ledger service do when reconciliation finds a mismatch?",
    "Which resources limit the gateway-core deployment in Kubernetes?",
    "How are idempotency keys used in the payments API?",
]


def _start_api(runtime: Platform, work: Path, env: dict[str, str]) -> str:
    """The API as `kb up` starts it, on a free port, with `env` on top of this process's environment. Sign-in is
    off (a local bench on loopback; an API key check is one indexed lookup per request, not what is measured)."""
    port = free_port()
    base = runtime.start_api(port, work / "logs", {"KB_AUTH_MODE": "off", "KB_API_ENVIRONMENT": "local", **env})
    runtime.wait_for(f"{base}/healthz", "the API", timeout=120)
    return base


def _llm_benchmark(url: str, work: Path, llm_model: Path, questions: list[str], console: Console) -> dict[str, Any]:
    """Time to first token and tokens/s of answers on the sample knowledge base (ingested into the bench's
    database), through the chat API and with the same prompts sent to the LLM server directly."""
    from assets.index import PgVectorIndex
    from query_engine.engine import AnswerEngine
    from query_engine.rerank import default_reranker

    embedding, llm = EmbeddingSettings(), LLMSettings()
    samples = load_specs(PlatformSettings().collections_file, PROJECT_ROOT)
    console.log("LLM: ingesting the sample knowledge base")
    ingest_collections(samples, _bench_resources(url, work), dg.DagsterInstance.ephemeral())
    runtime = Platform(PlatformSettings(), PostgresSettings(), IndexSettings())
    try:
        llm_port = free_port()
        llm_url = runtime.start_llm(llm_model, llm.model, llm_port, llm.context_window, llm.threads, work / "logs",
                                    llm.parallel)  # fmt: skip
        runtime.wait_for(f"{llm_url}/models", "the LLM server", timeout=300)
        # The cache off: the concurrent answers repeat the sequential ones' questions and must reach the LLM.
        env = {"DATABASE_URL": url, "KB_LLM_BACKEND": "embedded", "KB_LLM_PORT": str(llm_port), "KB_CACHE_ENABLED": "false"}
        base = _start_api(runtime, work, env)
        embedder = embedding.load()
        reranker = default_reranker(embedder=embedder, specs=samples)
        engine = AnswerEngine(PgVectorIndex(url), embedder, [s.name for s in samples], reranker, None,
                              llm.context_window, llm.max_answer_tokens, dense_languages=embedding.languages,
                              source_tokens=llm.source_tokens)  # fmt: skip
        console.log(f"LLM: {len(questions)} answers through the API and direct ({llm.model})")
        sequential = _llm_through_api(base, llm_url, engine, questions, llm)
        console.log(f"LLM: {CONCURRENT_ANSWERS} answers at once through the API ({llm.parallel} server slots)")
        concurrent = _concurrent_answers(base, llm_url, questions, CONCURRENT_ANSWERS)
        single = sequential["tokens_per_s_api"]["p50"] if sequential["answers"] else 0.0
        concurrent["aggregate_to_single_p50"] = round(concurrent["aggregate_tokens_per_s"] / max(single, 1e-6), 3)
        return {"model": llm.model, "parallel_slots": llm.parallel, **sequential, "concurrent": concurrent}
    finally:
        runtime.stop()


def _pruning_agreement(url: str, collection: str, questions: list[str]) -> dict[str, Any]:
    """BM25 with rare-term candidates (the default) against exact scoring of every chunk that holds any
    query term: latency of each, and the share of the exact top 10 that the default keeps."""
    from assets.index import PgVectorIndex
    from assets.sparse import query_terms

    runs: dict[str, tuple[list[list[str]], list[float]]] = {}
    for name, index in (("default", PgVectorIndex(url)), ("exact", PgVectorIndex(url, common_term_share=1.0))):
        ranked, times = [], []
        for question in questions:
            started = time.perf_counter()
            hits = index.sparse_search(collection, query_terms(question), 50)
            times.append((time.perf_counter() - started) * 1000)
            ranked.append([h.chunk_id for h in hits[:10]])
        index.close()
        runs[name] = (ranked, times)
    kept = [len(set(d) & set(e)) / max(len(e), 1) for d, e in zip(runs["default"][0], runs["exact"][0], strict=True)]
    return {
        "default_ms": _percentiles(runs["default"][1]),
        "exact_ms": _percentiles(runs["exact"][1]),
        "exact_top10_kept": round(sum(kept) / max(len(kept), 1), 3),
    }


def _cache_benchmark(url: str, embedder: Any, collection: str, questions: list[str]) -> dict[str, Any]:
    """Retrieval with the cache (in-process; Redis too when KB_CACHE_REDIS_URL is set): every question asked
    twice, the second time as another user of the same groups would ask it (other case and spacing). Hit rate and
    hit latency (the index version lookup included) against the misses' full retrieval."""
    from assets.index import PgVectorIndex
    from kb.settings import CacheSettings
    from query_engine.cache import LocalStore, QueryCache, RedisStore
    from query_engine.engine import AnswerEngine
    from query_engine.rerank import EvidenceReranker

    stores: dict[str, Any] = {"in_process": LocalStore(len(questions) * 4, 3600)}
    if (redis_url := CacheSettings().redis_url) is not None:
        stores["redis"] = RedisStore(redis_url)
    results: dict[str, Any] = {}
    for name, store in stores.items():
        cache = QueryCache(store)
        engine = AnswerEngine(PgVectorIndex(url), embedder, [collection], EvidenceReranker(), None, cache=cache)
        misses, hits = [], []
        for question in questions:
            for times, asked in ((misses, question), (hits, f"  {question.upper()} ")):
                started = time.perf_counter()
                engine.retrieve(asked, groups=["bench"])
                times.append((time.perf_counter() - started) * 1000)
        hit, miss = cache.lookups[("retrieval", "hit")], cache.lookups[("retrieval", "miss")]
        results[name] = {
            "hit_rate": round(hit / max(hit + miss, 1), 3),
            "hit_ms": _percentiles(hits),
            "miss_ms": _percentiles(misses),
        }
        engine.index.close()
    return results


def _api_overhead(base: str, engine: Any, questions: list[str]) -> dict[str, Any]:
    """The same retrieval in-process and through /v1/query (answer=false), in alternating order."""
    import httpx

    direct, through_api = [], []
    with httpx.Client(timeout=60) as client:

        def via_api(question: str) -> None:
            client.post(f"{base}/v1/query", json={"question": question, "answer": False}).raise_for_status()

        for n, question in enumerate(questions):
            # Whichever runs second finds the database pages of this question warm: alternate the order.
            calls = [(direct, engine.retrieve), (through_api, via_api)]
            for times, call in calls if n % 2 else reversed(calls):
                started = time.perf_counter()
                call(question)
                times.append((time.perf_counter() - started) * 1000)
    return {
        "in_process_ms": _percentiles(direct),
        "api_ms": _percentiles(through_api),
        "ratio_p50": round(_percentiles(through_api)["p50"] / max(_percentiles(direct)["p50"], 1e-6), 3),
    }


@dataclass
class TimedStream:
    """A streamed OpenAI chat answer, timed from before the request is sent (a server may hold back its
    headers until the first token); `timings` is llama.cpp's own report from the last chunk, where sent."""

    first_s: float | None
    total_s: float
    text: str
    timings: dict[str, Any]


def _timed_stream(request: Callable[[], Any]) -> TimedStream:
    started = time.perf_counter()
    first: float | None = None
    parts = []
    timings: dict[str, Any] = {}
    for chunk in request():
        timings = (chunk.model_extra or {}).get("timings") or timings
        text = chunk.choices[0].delta.content if chunk.choices else None
        if text:
            first = first if first is not None else time.perf_counter() - started
            parts.append(text)
    return TimedStream(first, time.perf_counter() - started, "".join(parts), timings)


def _server_tokens(llm_url: str, text: str) -> int:
    """Tokens of an answer by the LLM server's own tokenizer, without the citation markers the API adds."""
    import re

    import httpx

    plain = re.sub(r"\s*\[\d+\]", "", text)
    server = llm_url.removesuffix("/v1")
    return len(httpx.post(f"{server}/tokenize", json={"content": plain}, timeout=30).json()["tokens"])


def _decode_rate(llm_url: str, stream: TimedStream) -> float:
    """Generated tokens per second from the first token to the last."""
    return _server_tokens(llm_url, stream.text) / max(stream.total_s - (stream.first_s or 0.0), 1e-3)


def _llm_through_api(base: str, llm_url: str, engine: Any, questions: list[str], llm: LLMSettings) -> dict[str, Any]:
    """Per question, the chat API streams an answer (retrieval, prompt, LLM), then the same prompt (the
    compact context the API builds) goes to the LLM server directly. The direct call skips llama.cpp's prompt
    cache, so it pays the whole prompt; its own timings give the prompt's tokens and processing time."""
    from openai import OpenAI

    api = OpenAI(base_url=f"{base}/v1", api_key="bench", timeout=600)
    direct = OpenAI(base_url=llm_url, api_key="bench", timeout=600)
    rows: list[dict[str, float]] = []
    for question in questions:
        through_api = _timed_stream(
            lambda: api.chat.completions.create(model="default", messages=[{"role": "user", "content": question}], stream=True)  # noqa: B023
        )
        retrieval = engine.retrieve(question)
        if through_api.first_s is None or not retrieval.answerable:
            continue  # refused without an LLM call: nothing to compare
        evidence = engine.evidence(question, retrieval)
        messages: list[Any] = [
            {"role": m.role.value, "content": m.content or ""} for m in engine.messages(question, retrieval, evidence=evidence)
        ]
        whole: list[Any] = [{"role": m.role.value, "content": m.content or ""} for m in engine.messages(question, retrieval)]
        direct_answer = _timed_stream(
            lambda: direct.chat.completions.create(
                model=llm.model,
                messages=messages,  # noqa: B023 - called at once, inside this iteration
                stream=True,
                temperature=0,
                max_tokens=llm.max_answer_tokens,
                extra_body={"cache_prompt": False},
            )
        )
        if direct_answer.first_s is None:
            continue
        rows.append({
            "ttft_api_ms": through_api.first_s * 1000, "ttft_direct_ms": direct_answer.first_s * 1000,
            "tokens_per_s_api": _decode_rate(llm_url, through_api), "tokens_per_s_direct": _decode_rate(llm_url, direct_answer),
            "prompt_tokens": float(direct_answer.timings.get("prompt_n", 0)),
            "prompt_ms": float(direct_answer.timings.get("prompt_ms", 0.0)),
            "prompt_tokens_whole_sources": float(_server_tokens(llm_url, " ".join(m["content"] for m in whole))),
        })  # fmt: skip
    summary: dict[str, Any] = {"answers": len(rows)}
    keys = ("ttft_api_ms", "ttft_direct_ms", "tokens_per_s_api", "tokens_per_s_direct", "prompt_tokens", "prompt_ms",
            "prompt_tokens_whole_sources")  # fmt: skip
    for key in keys:
        summary[key] = _percentiles([r[key] for r in rows])
    if rows:
        summary["ttft_ratio_p50"] = round(summary["ttft_api_ms"]["p50"] / max(summary["ttft_direct_ms"]["p50"], 1e-6), 3)
        summary["tokens_per_s_ratio_p50"] = round(
            summary["tokens_per_s_api"]["p50"] / max(summary["tokens_per_s_direct"]["p50"], 1e-6), 3
        )
    return summary


# Answers streamed at once through the API (the load point: an incident channel asking together).
CONCURRENT_ANSWERS = 4


def _concurrent_answers(base: str, llm_url: str, questions: list[str], count: int) -> dict[str, Any]:
    """`count` answers streamed through the chat API at the same moment: each one's time to first token and
    the aggregate generated tokens/s over the span in which any of them was generating."""
    from concurrent.futures import ThreadPoolExecutor

    from openai import OpenAI

    api = OpenAI(base_url=f"{base}/v1", api_key="bench", timeout=600)
    asked = [questions[i % len(questions)] for i in range(count)]

    def ask(question: str) -> tuple[float, TimedStream]:
        started = time.perf_counter()
        stream = _timed_stream(
            lambda: api.chat.completions.create(model="default", messages=[{"role": "user", "content": question}], stream=True)
        )
        return started, stream

    with ThreadPoolExecutor(count) as pool:
        answers = list(pool.map(ask, asked))
    generating = [(started + s.first_s, started + s.total_s, s.text) for started, s in answers if s.first_s is not None]
    span = max((end for _, end, _ in generating), default=0.0) - min((begin for begin, _, _ in generating), default=0.0)
    tokens = sum(_server_tokens(llm_url, text) for _, _, text in generating)
    return {
        "answers": count,
        "answered_by_llm": len(generating),
        "ttft_ms": _percentiles([s.first_s * 1000 for _, s in answers if s.first_s is not None]),
        "aggregate_tokens_per_s": round(tokens / max(span, 1e-3), 2),
    }


# ---------------------------------------------------------------------------------------------------------
# `kb bench mask`: the masker's run time on adversarial text against ordinary text, at three sizes.

_PEM_HEADER = "-----BEGIN RSA PRIVATE KEY-----"
_MIX_UNITS = (
    f"{_PEM_HEADER}\n",
    f'"{_PEM_HEADER}\\n"\n',
    "password=password=password=abc ",
    "  tls.key: |\n    " + _PEM_HEADER + "\n    MIIEowIBAAKCAQEA7bq1Q3dQ3dQ3dQ3dQ3dQ3d\n",
    "eyJeyJ-eyJ sk-sk- AKIAAKIA ghp_ glagent- //a/:_authToken ",
    "password: `a `a `a ",
    "+7 916 123 45 67 (415) 555-2671 4111 1111 1111 1111 12345678901234567890 ",
    "PuTTY-User-Key-File-2: ssh-rsa ",
    "admin-admin-admin-admin% a.a.a.a.a:// ",
    "?a=%41&b=%42&pwd=p%40ss ",
)


def _repeated(unit: str, size: int) -> str:
    """`unit` repeated to `size` characters."""
    return (unit * (size // len(unit) + 1))[:size]


def _base64_run(size: int, seed: int = 3) -> str:
    """One run of random base64 with no break in it (an inlined image, a blob), `size` characters."""
    import base64

    return base64.b64encode(random.Random(seed).randbytes(size * 3 // 4 + 3)).decode()[:size]


def _ordinary_text(size: int, seed: int = 7) -> str:
    """Markdown paragraphs of the payments vocabulary: what the masker reads most of the time."""
    rng = random.Random(seed)
    parts, total = [], 0
    while total < size:
        paragraph = " ".join(" ".join(rng.choices(_WORDS, k=rng.randint(8, 16))).capitalize() + "." for _ in range(4))
        parts.append(f"## Section {len(parts)}\n\n{paragraph}\n\n")
        total += len(parts[-1])
    return "".join(parts)[:size]


# Each shape a function of the size in characters (ASCII: characters are bytes).
MASK_SHAPES: dict[str, Callable[[int], str]] = {
    "ordinary_text": _ordinary_text,
    "unterminated_pem_headers": lambda n: _repeated(f"{_PEM_HEADER}\n", n),
    "unterminated_pem_headers_quoted": lambda n: _repeated(f'"{_PEM_HEADER}\\n" +\n', n),
    "one_line": lambda n: _repeated("".join(u.replace("\n", " ") for u in _MIX_UNITS), n),
    "key_blocks": lambda n: "kind: Secret\nstringData:\n" + _repeated(_MIX_UNITS[3], n - 26),
    "password_assignments": lambda n: _repeated("password=", n),
    "base64_run": _base64_run,
    "digits_and_phones": lambda n: _repeated(_MIX_UNITS[6], n),
    "mix": lambda n: _repeated("".join(_MIX_UNITS), n),
}


def _time_masking(text: str) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of masking `text`. The masker is one thread of pure Python and regex work:
    its CPU time is the work done, and does not count the time a busy machine keeps it waiting."""
    from assets.mask import mask_secrets

    cpu, wall = time.process_time(), time.perf_counter()
    mask_secrets(text)
    return time.process_time() - cpu, time.perf_counter() - wall


def run_mask_benchmark(largest_mb: float, console: Console, shapes: list[str] | None = None) -> dict[str, Any]:
    """CPU seconds (wall seconds beside them) and MB/s of `mask_secrets` per shape at a tenth, a quarter and all
    of `largest_mb`; the ratio of the largest size's seconds to the smallest's (10 when time grows linearly
    with the input) and each shape's throughput against ordinary text's, both at the largest size."""
    sizes = [largest_mb / 10, largest_mb / 4, largest_mb]
    results: dict[str, Any] = {}
    for name in shapes or list(MASK_SHAPES):
        rows = {}
        for mb in sizes:
            text = MASK_SHAPES[name](int(mb * 1_000_000))
            console.log(f"mask {name}: {mb:g} MB")
            seconds, wall = _time_masking(text)
            rows[f"{mb:g}_mb"] = {
                "seconds": round(seconds, 3),
                "wall_seconds": round(wall, 3),
                "mb_per_s": round(mb / max(seconds, 1e-9), 3),
            }
        first, last = rows[f"{sizes[0]:g}_mb"], rows[f"{sizes[-1]:g}_mb"]
        results[name] = {**rows, "time_ratio_largest_to_smallest": round(last["seconds"] / max(first["seconds"], 1e-9), 2)}
    if "ordinary_text" in results:
        baseline = results["ordinary_text"][f"{sizes[-1]:g}_mb"]["mb_per_s"]
        for row in results.values():
            row["throughput_vs_ordinary"] = round(row[f"{sizes[-1]:g}_mb"]["mb_per_s"] / max(baseline, 1e-9), 3)
    return {"sizes_mb": sizes, "size_ratio": round(sizes[-1] / sizes[0], 2), "shapes": results}
