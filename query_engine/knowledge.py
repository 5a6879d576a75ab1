"""The query engine as the `KnowledgeBase` the docs MCP server and the agent search."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from assets.collections import CollectionSpec
from query_engine.engine import AnswerEngine, SourceRef


class EngineKnowledgeBase:
    def __init__(self, engine: AnswerEngine, specs: Sequence[CollectionSpec]) -> None:
        self.engine = engine
        self.specs = list(specs)

    def collections(self) -> list[dict[str, Any]]:
        return [{"name": s.name, "description": s.description} for s in self.specs]

    def sources(self, query: str, collections: list[str] | None = None, filters: dict[str, str | list[str]] | None = None,
                top_k: int = 5) -> list[SourceRef]:  # fmt: skip
        """The reranked sources, or none when nothing is relevant enough to answer from."""
        retrieval = self.engine.retrieve(query, collections, filters)
        return retrieval.sources[:top_k] if retrieval.answerable else []

    def search(self, query: str, collections: list[str] | None = None, filters: dict[str, str | list[str]] | None = None,
               top_k: int = 5) -> list[dict[str, Any]]:  # fmt: skip
        return [{"collection": s.collection, "path": s.doc_id, "section": s.section, "score": round(s.score, 4),
                 "text": s.text} for s in self.sources(query, collections, filters, top_k)]  # fmt: skip

    def document(self, collection: str, path: str) -> list[dict[str, Any]] | None:
        if collection not in {s.name for s in self.specs}:
            return None
        hits = self.engine.index.document_chunks(collection, path)
        return [{"text": h.text, "metadata": h.metadata} for h in hits] or None
