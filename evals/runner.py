"""Retrieval evals: a set's corpus goes through the project's own ingestion stages into a fresh index,
its queries through the project's own retrieval, and every system is scored in the same run."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from llama_index.core.postprocessor.types import BaseNodePostprocessor

from assets import stages
from assets.chunk import Chunker
from assets.collections import CollectionSpec
from assets.embed import Embedder
from assets.extract import RawDocument, sha256
from assets.index import VectorIndex
from assets.parse import document_kind
from evals.datasets import EvalSet
from evals.metrics import dedupe, score_run
from query_engine.retrieval import HybridRetriever, to_node

SUFFIX = {"prose": ".md", "code": ".py", "yaml": ".yaml"}
SYSTEMS = ("bm25", "dense", "hybrid", "hybrid_rerank")


@dataclass(frozen=True)
class BuiltIndex:
    collection: str
    doc_of_file: dict[str, str]
    chunks: int
    seconds: float
    spec: CollectionSpec  # the collection's settings under the eval collection's name


def corpus_documents(evalset: EvalSet, spec: CollectionSpec) -> tuple[list[RawDocument], dict[str, str]]:
    """The corpus as source files: ids get the collection's file type when they have none, and prose
    documents get their title as a heading, as a page in a docs folder would have."""
    raws, doc_of_file = [], {}
    for doc in evalset.corpus:
        file_id = doc.id if document_kind(doc.id, "unknown") != "unknown" else doc.id + SUFFIX[spec.splitter]
        text = doc.text
        if spec.splitter == "prose" and doc.title and doc.title != doc.id and not text.lstrip().startswith("#"):
            text = f"# {doc.title}\n\n{text}"
        content = text.encode("utf-8")
        raws.append(RawDocument(file_id, content, sha256(content), len(content), {"path": file_id}))
        doc_of_file[file_id] = doc.id
    return raws, doc_of_file


def build_index(evalset: EvalSet, spec: CollectionSpec, embedder: Embedder, index: VectorIndex) -> BuiltIndex:
    """Ingest the corpus with the collection's chunking into a fresh index collection."""
    collection = "eval_" + re.sub(r"[^a-z0-9_]", "_", evalset.label.lower())[:50]
    spec = spec.model_copy(update={"name": collection})
    started = time.perf_counter()
    index.drop_collection(collection)
    raws, doc_of_file = corpus_documents(evalset, spec)
    extracted = stages.ExtractResult(raws, {r.doc_id: r.content_hash for r in raws}, 0, [])
    report = stages.ingest_batch(extracted, spec, Chunker(spec, embedder), embedder, index)
    return BuiltIndex(collection, doc_of_file, report.chunks, time.perf_counter() - started, spec)


def run_systems(
    evalset: EvalSet,
    built: BuiltIndex,
    embedder: Embedder,
    index: VectorIndex,
    reranker: BaseNodePostprocessor,
    candidates: int = 100,
    dense_languages: list[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """BM25, dense, hybrid and hybrid+rerank on the same index, scored at document level."""
    # Only hybrid is language-gated: the bm25 and dense rows stay the plain baselines.
    retrievers = {mode: HybridRetriever(index, embedder, [built.collection], top_k=candidates, candidates=candidates, mode=mode,
                                        dense_languages=dense_languages if mode == "hybrid" else None)
                  for mode in ("sparse", "dense", "hybrid")}  # fmt: skip
    rankings: dict[str, dict[str, list[str]]] = {system: {} for system in SYSTEMS}
    seconds: dict[str, float] = dict.fromkeys(SYSTEMS, 0.0)
    for query in evalset.queries:
        for system, mode in (("bm25", "sparse"), ("dense", "dense"), ("hybrid", "hybrid")):
            started = time.perf_counter()
            found = retrievers[mode].search(query.text)
            seconds[system] += time.perf_counter() - started
            rankings[system][query.id] = dedupe(built.doc_of_file[c.hit.doc_id] for c in found)
            if system == "hybrid":
                # hybrid_rerank's time is the hybrid search plus the reranking of its candidates
                reranked = reranker.postprocess_nodes([to_node(c) for c in found], query_str=query.text)
                seconds["hybrid_rerank"] += time.perf_counter() - started
                rankings["hybrid_rerank"][query.id] = dedupe(built.doc_of_file[n.node.metadata["doc_id"]] for n in reranked)
    results = {system: score_run(rankings[system], evalset.qrels) for system in SYSTEMS}
    for system in SYSTEMS:
        results[system]["ms_per_query"] = round(1000 * seconds[system] / max(len(evalset.queries), 1), 1)
    return results


def run_peer(evalset: EvalSet, built: BuiltIndex, embedder: Embedder, index: VectorIndex) -> dict[str, Any]:
    """The LlamaIndex peer (kb/peer.py) over the chunks and vectors of the same index, scored like the systems."""
    from kb.peer import LlamaIndexPeer, stored_points

    peer = LlamaIndexPeer(stored_points(index, built.collection), embedder)
    rankings: dict[str, list[str]] = {}
    started = time.perf_counter()
    for query in evalset.queries:
        rankings[query.id] = dedupe(built.doc_of_file[d] for d in peer.documents(query.text))
    result = score_run(rankings, evalset.qrels)
    result["ms_per_query"] = round(1000 * (time.perf_counter() - started) / max(len(evalset.queries), 1), 1)
    return result
