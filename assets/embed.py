"""Dense embeddings with FlagEmbedding, from a local model directory only."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
from numpy.typing import NDArray


class Embedder:
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
        self._model = FlagModel(
            str(model_dir),
            pooling_method=pooling,
            normalize_embeddings=True,
            use_fp16=False,
            devices="cpu",
            batch_size=batch_size,
            passage_max_length=max_length,
            query_max_length=min(max_length, 128),
        )
        self.tokenizer = self._model.tokenizer
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
        vectors = self._model.encode_queries(texts, batch_size=self.batch_size)
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), self.dimension)


def model_fingerprint(model_dir: Path, pooling: str) -> str:
    """Identifies the vectors a model makes, without loading it: part of every document's hash."""
    return f"{model_dir.name}-{_config_digest(model_dir)}-{pooling}"


def _config_digest(model_dir: Path) -> str:
    # The weights' identity without hashing hundreds of MB: config plus weight file sizes.
    parts = [(model_dir / "config.json").read_bytes()]
    parts.extend(str(p.stat().st_size).encode() for p in sorted(model_dir.glob("*.safetensors")))
    return hashlib.sha256(b"".join(parts)).hexdigest()[:8]
