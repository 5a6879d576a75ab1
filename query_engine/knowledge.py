"""The query engine as the `KnowledgeBase` the docs MCP server and the agent search."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from assets.collections import CollectionSpec
from assets.index import Groups
from query_engine.engine import AnswerEngine, SourceRef


class EngineKnowledgeBase:
    """Search and documents, optionally scoped to what one caller may read: `readable` collections
    (None: all) and `groups` for document access lists (None: every document)."""

    def __init__(self, engine: AnswerEngine, specs: Sequence[CollectionSpec], readable: Sequence[str] | None = None,
                 groups: Groups = None) -> None:  # fmt: skip
        self.engine = engine
        self.specs = [s for s in specs if readable is None or s.name in readable]
        self.groups = groups

    def scoped(self, readable: Sequence[str] | None, groups: Groups) -> EngineKnowledgeBase:
        """The same knowledge base as one caller may read it."""
        return EngineKnowledgeBase(self.engine, self.specs, readable, groups)

    def collections(self) -> list[dict[str, Any]]:
        return [{"name": s.name, "description": s.description} for s in self.specs]

    def _names(self, requested: Sequence[str] | None) -> list[str]:
        names = [s.name for s in self.specs]
        if requested is None:
            if not names:
                raise ValueError("no collection is readable with your role")
            return names
        unknown = sorted(set(requested) - set(names))
        if unknown:  # not configured or not readable: the same answer, so it tells nothing about others
            raise ValueError(f"unknown collection(s): {', '.join(unknown)}")
        return list(requested)

    def sources(self, query: str, collections: list[str] | None = None, filters: dict[str, str | list[str]] | None = None,
                top_k: int = 5) -> list[SourceRef]:  # fmt: skip
        """The reranked sources, or none when nothing is relevant enough to answer from."""
        retrieval = self.engine.retrieve(query, self._names(collections), filters, self.groups)
        return retrieval.sources[:top_k] if retrieval.answerable else []

    def search(self, query: str, collections: list[str] | None = None, filters: dict[str, str | list[str]] | None = None,
               top_k: int = 5) -> list[dict[str, Any]]:  # fmt: skip
        return [{"collection": s.collection, "path": s.doc_id, "section": s.section, "score": round(s.score, 4),
                 "text": s.text} for s in self.sources(query, collections, filters, top_k)]  # fmt: skip

    def document(self, collection: str, path: str) -> list[dict[str, Any]] | None:
        if collection not in {s.name for s in self.specs}:
            return None
        hits = self.engine.index.document_chunks(collection, path, self.groups)
        return [{"text": h.text, "metadata": h.metadata} for h in hits] or None
