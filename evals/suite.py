"""One evaluation of a set end to end: load, ingest into a fresh index, run and score every system."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console

from assets.collections import load_specs
from assets.embed import Embedder
from assets.index import QdrantIndex
from evals.datasets import DatasetError, EvalSet, load_dataset
from evals.runner import BuiltIndex, build_index, run_systems
from kb.settings import EmbeddingSettings, PlatformSettings
from query_engine.rerank import default_reranker

DEFAULT_COLLECTION = "technical_docs"  # language sets map to no collection: prose chunking


@contextmanager
def ingested(
    evalset: EvalSet, platform: PlatformSettings, embedder: Embedder, console: Console
) -> Iterator[tuple[BuiltIndex, QdrantIndex, str]]:
    """The set's corpus ingested with its collection's chunking into a fresh Qdrant local-mode index in a
    scratch folder (exact search, shared with nothing), removed afterwards."""
    specs = {s.name: s for s in load_specs(platform.collections_file)}
    name = evalset.collection or DEFAULT_COLLECTION
    if name not in specs:
        raise DatasetError(f"collection {name!r} is not configured; pass --collection")
    scratch = Path(tempfile.mkdtemp(prefix="kb-eval-"))
    index = QdrantIndex(path=scratch)
    try:
        with console.status(f"ingesting {len(evalset.corpus)} documents of {evalset.label} with {name} chunking"):
            built = build_index(evalset, specs[name], embedder, index)
        yield built, index, name
    finally:
        index.close()
        shutil.rmtree(scratch, ignore_errors=True)


def evaluate_retrieval(
    dataset: Path,
    variant: str | None,
    corpus_variant: str | None,
    collection: str | None,
    limit: int | None,
    platform: PlatformSettings,
    embedding: EmbeddingSettings,
    console: Console,
) -> dict[str, Any]:
    evalset = load_dataset(dataset, variant, corpus_variant, collection)
    if limit:
        evalset.queries = evalset.queries[:limit]
    embedder = Embedder(embedding.model_dir, embedding.pooling, embedding.batch_size, embedding.max_length)
    with ingested(evalset, platform, embedder, console) as (built, index, name):
        with console.status(f"running {len(evalset.queries)} queries"):
            systems = run_systems(evalset, built, embedder, index, default_reranker(), dense_languages=embedding.languages)
    return {
        "dataset": evalset.label,
        "collection": name,
        "documents": len(evalset.corpus),
        "chunks": built.chunks,
        "queries": len(evalset.queries),
        "ingest_seconds": round(built.seconds, 1),
        "systems": systems,
    }
