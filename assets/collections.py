"""Collection specs as data, loaded from the operators' YAML config."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, Field, field_validator, model_validator

# Bump when parsing, masking or chunking changes output, so every document is re-chunked.
PIPELINE_VERSION = "4"

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


class SourceSpec(BaseModel, frozen=True):
    """Where a collection's documents come from."""

    kind: Literal["folder", "git"] = "folder"
    path: str = Field(description="Folder, or git repository path/URL.")
    ref: str = Field(default="HEAD", description="Git ref to read (git sources only).")
    subdir: str = Field(default="", description="Only files under this folder of the repository.")
    include: tuple[str, ...] = Field(default=("**/*",), description="Glob patterns of files to take.")
    repository: str = Field(default="", description="Repository full name whose push webhooks refresh this collection.")


class QdrantSpec(BaseModel, frozen=True):
    """How a collection is spread over a Qdrant server or cluster when it is created (pgvector ignores it);
    the server's defaults where unset."""

    shard_number: int | None = Field(default=None, ge=1)
    replication_factor: int | None = Field(default=None, ge=1)


class CollectionSpec(BaseModel, frozen=True):
    """One collection: how its documents are chunked, what metadata they keep, when they refresh."""

    name: str
    description: str = ""
    chunk_tokens: int = Field(gt=16, le=8192)
    chunk_overlap: int = Field(ge=0)
    splitter: Literal["prose", "code", "yaml"] = "prose"
    metadata: tuple[str, ...] = ()
    schedule: str | None = None
    source: SourceSpec
    # How much reranking trusts the dense score against BM25 in this collection (query time only, so not
    # part of the fingerprint); chosen per kind of content on the dev splits (README, "Retrieval quality").
    dense_weight: float = Field(default=0.7, ge=0.0, le=1.0)
    # How much a chunk gains from its document's second-best chunk (several chunks of one document on the
    # question); 0 where it measurably hurt (manifests: one file holding many resources is not more relevant).
    document_weight: float = Field(default=0.1, ge=0.0, le=1.0)
    qdrant: QdrantSpec = QdrantSpec()

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"collection name {value!r} must be lowercase letters, digits and '_'")
        return value

    @model_validator(mode="after")
    def _overlap_below_size(self) -> CollectionSpec:
        if self.chunk_overlap >= self.chunk_tokens:
            raise ValueError(f"{self.name}: chunk_overlap must be smaller than chunk_tokens")
        return self

    def fingerprint(self, embedding_model: str) -> str:
        """What, besides a document's bytes, decides its chunks and vectors."""
        parts = [PIPELINE_VERSION, self.splitter, str(self.chunk_tokens), str(self.chunk_overlap), embedding_model]
        parts.extend(self.metadata)
        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]


def load_specs(path: Path, base_dir: Path | None = None) -> list[CollectionSpec]:
    """Read the collections file; relative folder sources resolve against `base_dir` (default: its folder)."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    base = base_dir or path.parent
    specs = []
    for name, body in (raw.get("collections") or {}).items():
        source = dict(body.get("source") or {})
        if source.get("kind", "folder") == "folder" or not _looks_remote(source.get("path", "")):
            source["path"] = str((base / source["path"]).resolve())
        specs.append(CollectionSpec.model_validate({**body, "name": name, "source": source}))
    if not specs:
        raise ValueError(f"{path}: no collections defined")
    return specs


def _looks_remote(path: str) -> bool:
    return "://" in path or path.startswith("git@")
