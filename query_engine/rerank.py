"""Rerankers as LlamaIndex node postprocessors.

- `CrossEncoderReranker`: a FlagEmbedding cross-encoder (bge-reranker-v2-m3 in production) from a
  local model directory.
- `EvidenceReranker` (default; no cross-encoder weights ship in any package here): rescores the
  fused candidates with the evidence fusion threw away, and is kept only while the evals show it
  raising nDCG@10 over plain fusion.
- `PassThrough`: keeps the fused order (the baseline the evals compare against).
"""

from __future__ import annotations

import re
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from threading import Lock

import numpy as np
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import NodeWithScore, QueryBundle
from numpy.typing import NDArray

from assets.collections import CollectionSpec
from assets.embed import Embedder, multilingual_encoder
from assets.parse import detect_language
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


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[。！？；])|\n+")


def sentences(text: str, min_chars: int = 12, limit: int = 32) -> list[str]:
    """A chunk's sentences (and lines), the units a question is usually answered by."""
    return [s.strip() for s in _SENTENCE_END.split(text) if len(s.strip()) >= min_chars][:limit]


class SentenceVectors:
    """Sentence vectors of chunk texts from a (fast) multilingual encoder, cached by chunk text: the
    same chunks come back for related questions, and encoding them is most of this stage's cost."""

    def __init__(self, encoder: Embedder, capacity: int = 20_000, split: Callable[[str], list[str]] | None = None) -> None:
        self.encoder = encoder
        self.capacity = capacity
        self.split = split or sentences  # the units a text's vectors stand for, in order
        self._cache: OrderedDict[str, NDArray[np.float32]] = OrderedDict()
        self._lock = Lock()

    def of(self, texts: list[str]) -> list[NDArray[np.float32]]:
        with self._lock:
            missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            split = [self.split(t) or [t[:500]] for t in missing]
            flat = self.encoder.embed_passages([s for parts in split for s in parts])
            with self._lock:
                start = 0
                for text, parts in zip(missing, split, strict=True):
                    self._cache[text] = flat[start : start + len(parts)]
                    start += len(parts)
                while len(self._cache) > self.capacity:
                    self._cache.popitem(last=False)
        with self._lock:
            for t in texts:
                self._cache.move_to_end(t)
            return [self._cache[t] for t in texts]

    def best_sentence(self, query: str, texts: list[str]) -> list[float]:
        """Per text, the cosine of the question to its closest sentence."""
        vector = self.encoder.embed_queries([query])[0]
        return [float(np.max(m @ vector)) if len(m) else 0.0 for m in self.of(texts)]

    def closest_until(self, query: str, texts: Sequence[str], enough: Callable[[float], bool]) -> float:
        """The best cosine of the question to a sentence of the texts, embedding them one text at a time in order and
        stopping once `enough` holds for the best so far."""
        vector = self.encoder.embed_queries([query])[0]
        best = -1.0
        for text in texts:
            (matrix,) = self.of([text])
            best = max(best, float(np.max(matrix @ vector)) if len(matrix) else 0.0)
            if enough(best):
                break
        return best


@cache
def sentence_vectors(encoder: Embedder) -> SentenceVectors:
    """One cache per encoder and process, shared by reranking and the relevance gate."""
    return SentenceVectors(encoder)


class EvidenceReranker(BaseNodePostprocessor):
    """Rescore fused candidates with three signals that rank fusion ignores:

    1. the scores themselves: a convex combination of per-query min-max normalised cosine and BM25
       scores (rank fusion keeps only the order);
    2. field match: the share of the query's terms found in the chunk's title, headings, path or symbol;
    3. document evidence: a document with several strong candidate chunks outranks one lucky chunk;
    4. with a multilingual sentence encoder, sentence evidence: the question's cosine to the closest
       sentence of each of the first `sentence_candidates` chunks joins their dense score (a whole-chunk
       vector blurs the one sentence that answers; measured on xquad ru→en dense-only nDCG@10: whole chunk
       0.831, best sentence 0.820, their sum 0.866).
    """

    # Chosen on the dev splits of ../shared/evalsets (README, "Retrieval quality"): the score-based fusion
    # carries the gain; field and document evidence add little there and are kept small.
    dense_weight: float = Field(default=0.7, description="Weight of the normalised dense score against BM25.")
    collection_weights: dict[str, float] = Field(default_factory=dict, description="dense_weight by collection, where set.")
    cross_language_dense_weight: float = Field(default=0.9, description="dense_weight for a chunk in another language.")
    field_weight: float = Field(default=0.1, description="Weight of query terms matched in title/path/headings.")
    document_weight: float = Field(default=0.1, description="Weight of the document's second-best chunk score.")
    collection_document_weights: dict[str, float] = Field(
        default_factory=dict, description="document_weight by collection, where set."
    )
    top_n: int | None = Field(default=None, description="How many nodes to keep (all when None).")
    sentence_candidates: int = Field(default=30, description="Leading candidates that get sentence evidence.")
    sentence_languages: tuple[str, ...] = Field(default=("ru", "zh"), description="Query languages given sentence evidence.")
    _sentences: SentenceVectors | None = PrivateAttr(default=None)

    def __init__(self, encoder: Embedder | None = None, **data: object) -> None:
        super().__init__(**data)
        self._sentences = sentence_vectors(encoder) if encoder is not None else None

    @classmethod
    def class_name(cls) -> str:
        return "EvidenceReranker"

    def _dense_weight(self, node: NodeWithScore, query_language: str) -> float:
        """The collection's weight when the chunk is in the question's language; across languages BM25 can
        match only names and numbers, so the dense score carries most of the decision."""
        metadata = node.node.metadata
        if metadata.get("lang") not in (None, query_language):
            return self.cross_language_dense_weight
        return self.collection_weights.get(str(metadata.get("collection")), self.dense_weight)

    def _document_weight(self, node: NodeWithScore) -> float:
        return self.collection_document_weights.get(str(node.node.metadata.get("collection")), self.document_weight)

    def _dense_evidence(self, nodes: list[NodeWithScore], query: str) -> dict[int, float]:
        dense = {i: m["dense_score"] for i, n in enumerate(nodes) if (m := n.node.metadata).get("dense_score") is not None}
        if self._sentences is None or detect_language(query) not in self.sentence_languages or not dense:
            return dense
        lead = [i for i in range(len(nodes)) if i in dense][: self.sentence_candidates]
        best = dict(zip(lead, self._sentences.best_sentence(query, [nodes[i].node.get_content() for i in lead]), strict=True))
        # Chunks past the leading ones keep only their whole-chunk score, below any that got both.
        return {i: dense[i] + best[i] if i in best else dense[i] - 1.0 for i in dense}

    def _postprocess_nodes(self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None) -> list[NodeWithScore]:
        if query_bundle is None or not nodes:
            return nodes
        dense = _min_max(self._dense_evidence(nodes, query_bundle.query_str))
        sparse = _min_max(
            {i: m["sparse_score"] for i, n in enumerate(nodes) if (m := n.node.metadata).get("sparse_score") is not None}
        )
        query_terms = set(analyze(query_bundle.query_str))
        language = detect_language(query_bundle.query_str)
        base = {}
        for i, node in enumerate(nodes):
            weight = self._dense_weight(node, language)
            score = weight * dense.get(i, 0.0) + (1 - weight) * sparse.get(i, 0.0)
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
                score=base[i] + self._document_weight(node) * support[str(node.node.metadata.get("doc_id", node.node.node_id))],
            )
            for i, node in enumerate(nodes)
        ]
        rescored.sort(key=lambda n: n.score or 0.0, reverse=True)
        return rescored[: self.top_n] if self.top_n else rescored


def default_reranker(
    model_dir: str | None = None, embedder: Embedder | None = None, specs: Sequence[CollectionSpec] = ()
) -> BaseNodePostprocessor:
    """The cross-encoder when a model directory is configured, else the evidence reranker with each
    collection's dense weight (and sentence evidence when the embedder has a multilingual model)."""
    if model_dir:
        return CrossEncoderReranker(model_dir=model_dir)
    encoder = multilingual_encoder(embedder) if embedder is not None else None
    return EvidenceReranker(
        encoder=encoder,
        collection_weights={s.name: s.dense_weight for s in specs},
        collection_document_weights={s.name: s.document_weight for s in specs},
    )
