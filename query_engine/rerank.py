"""Rerankers as LlamaIndex node postprocessors.

- `CrossEncoderReranker`: a FlagEmbedding cross-encoder (bge-reranker-v2-m3 in production) from a
  local model directory.
- `EvidenceReranker` (default; no cross-encoder weights ship in any package here): rescores the
  fused candidates with the evidence fusion threw away, and is kept only while the evals show it
  raising nDCG@10 over plain fusion.
- `PassThrough`: keeps the fused order (the baseline the evals compare against).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import NodeWithScore, QueryBundle

from assets.sparse import analyze

# Metadata fields that name what a chunk is about: a match there says more than one in the body.
FIELDS = ("title", "headings", "path", "symbol", "name", "kind")


class PassThrough(BaseNodePostprocessor):
    """No reranking: the retriever's fused order."""

    @classmethod
    def class_name(cls) -> str:
        return "PassThrough"

    def _postprocess_nodes(self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None) -> list[NodeWithScore]:
        return nodes


class CrossEncoderReranker(BaseNodePostprocessor):
    """Scores (query, chunk) pairs with a FlagEmbedding cross-encoder loaded from `model_dir`."""

    model_dir: str = Field(description="Local directory of a FlagEmbedding reranker (e.g. bge-reranker-v2-m3).")
    top_n: int = Field(default=10, description="How many nodes to keep.")
    max_length: int = Field(default=512)
    _model: object = PrivateAttr()

    def __init__(self, **data: object) -> None:
        super().__init__(**data)
        from FlagEmbedding import FlagReranker

        if not (Path(self.model_dir) / "config.json").exists():
            raise FileNotFoundError(f"reranker model directory {self.model_dir} has no config.json")
        self._model = FlagReranker(self.model_dir, use_fp16=False, devices="cpu")

    @classmethod
    def class_name(cls) -> str:
        return "CrossEncoderReranker"

    def _postprocess_nodes(self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None) -> list[NodeWithScore]:
        if query_bundle is None or not nodes:
            return nodes
        pairs = [(query_bundle.query_str, n.node.get_content()) for n in nodes]
        scores = self._model.compute_score(pairs, max_length=self.max_length)  # type: ignore[attr-defined]
        ranked = sorted(
            zip(nodes, scores if isinstance(scores, list) else [scores], strict=True), key=lambda p: p[1], reverse=True
        )
        return [NodeWithScore(node=n.node, score=float(s)) for n, s in ranked[: self.top_n]]


def _min_max(values: dict[int, float]) -> dict[int, float]:
    if not values:
        return {}
    low, high = min(values.values()), max(values.values())
    return {i: (v - low) / (high - low) if high > low else 1.0 for i, v in values.items()}


class EvidenceReranker(BaseNodePostprocessor):
    """Rescore fused candidates with three signals that rank fusion ignores:

    1. the scores themselves: a convex combination of per-query min-max normalised cosine and BM25
       scores (rank fusion keeps only the order);
    2. field match: the share of the query's terms found in the chunk's title, headings, path or symbol;
    3. document evidence: a document with several strong candidate chunks outranks one lucky chunk.
    """

    # Chosen on the dev splits of ../shared/evalsets (README, "Retrieval quality"): the score-based fusion
    # carries the gain; field and document evidence add little there and are kept small.
    dense_weight: float = Field(default=0.7, description="Weight of the normalised dense score against BM25.")
    field_weight: float = Field(default=0.1, description="Weight of query terms matched in title/path/headings.")
    document_weight: float = Field(default=0.1, description="Weight of the document's second-best chunk score.")
    top_n: int | None = Field(default=None, description="How many nodes to keep (all when None).")

    @classmethod
    def class_name(cls) -> str:
        return "EvidenceReranker"

    def _postprocess_nodes(self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None) -> list[NodeWithScore]:
        if query_bundle is None or not nodes:
            return nodes
        dense = _min_max(
            {i: m["dense_score"] for i, n in enumerate(nodes) if (m := n.node.metadata).get("dense_score") is not None}
        )
        sparse = _min_max(
            {i: m["sparse_score"] for i, n in enumerate(nodes) if (m := n.node.metadata).get("sparse_score") is not None}
        )
        query_terms = set(analyze(query_bundle.query_str))
        base = {}
        for i, node in enumerate(nodes):
            score = self.dense_weight * dense.get(i, 0.0) + (1 - self.dense_weight) * sparse.get(i, 0.0)
            if query_terms:
                fields = " ".join(str(node.node.metadata.get(f, "")) for f in FIELDS)
                score += self.field_weight * len(query_terms & set(analyze(fields))) / len(query_terms)
            base[i] = score
        by_document: dict[str, list[float]] = defaultdict(list)
        for i, node in enumerate(nodes):
            by_document[str(node.node.metadata.get("doc_id", node.node.node_id))].append(base[i])
        support = {doc: sorted(scores, reverse=True)[1] if len(scores) > 1 else 0.0 for doc, scores in by_document.items()}
        rescored = [
            NodeWithScore(
                node=node.node,
                score=base[i] + self.document_weight * support[str(node.node.metadata.get("doc_id", node.node.node_id))],
            )
            for i, node in enumerate(nodes)
        ]
        rescored.sort(key=lambda n: n.score or 0.0, reverse=True)
        return rescored[: self.top_n] if self.top_n else rescored


def default_reranker(model_dir: str | None = None) -> BaseNodePostprocessor:
    """The cross-encoder when a model directory is configured, else the evidence reranker."""
    return CrossEncoderReranker(model_dir=model_dir) if model_dir else EvidenceReranker()
