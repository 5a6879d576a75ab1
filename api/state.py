"""Everything the API holds for its lifetime, built once from the settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx

from assets.collections import CollectionSpec, load_specs
from assets.index import PgVectorIndex, QdrantIndex, VectorIndex
from kb.settings import APISettings, EmbeddingSettings, IndexSettings, LLMSettings, PlatformSettings, PostgresSettings
from pipelines.definitions import database_url
from query_engine.engine import AnswerEngine
from query_engine.llm import build_llm
from query_engine.memory import SessionStore, migrate
from query_engine.rerank import default_reranker


@dataclass
class AppState:
    platform: PlatformSettings
    api: APISettings
    llm_settings: LLMSettings
    specs: list[CollectionSpec]
    index: VectorIndex
    engine: AnswerEngine
    sessions: SessionStore
    database_url: str
    llm_base_url: str

    @property
    def model_names(self) -> list[str]:
        return ["default", self.llm_settings.model]

    def llm_reachable(self) -> bool:
        url = self.llm_base_url.rstrip("/") + ("/api/tags" if self.llm_settings.backend == "ollama" else "/models")
        try:
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False


def llm_base_url(llm: LLMSettings, platform: PlatformSettings) -> str:
    return llm.base_url or f"http://{platform.host}:{llm.port}/v1"


def build_state() -> AppState:
    platform, postgres, index_settings = PlatformSettings(), PostgresSettings(), IndexSettings()
    embedding, api, llm_settings = EmbeddingSettings(), APISettings(), LLMSettings()
    url = database_url(platform, postgres)
    migrate(url)
    index: VectorIndex = (
        QdrantIndex(url=index_settings.qdrant_url, path=index_settings.qdrant_path, api_key=index_settings.qdrant_api_key)
        if index_settings.backend == "qdrant"
        else PgVectorIndex(url)
    )
    embedder = embedding.load()
    specs = load_specs(platform.collections_file)
    base_url = llm_base_url(llm_settings, platform)
    llm = build_llm(llm_settings.backend, base_url, llm_settings.model, llm_settings.api_key, llm_settings.context_window,
                    llm_settings.max_answer_tokens, llm_settings.timeout_s)  # fmt: skip
    reranker = default_reranker(str(api.reranker_model_dir) if api.reranker_model_dir else None)
    engine = AnswerEngine(index, embedder, [s.name for s in specs], reranker, llm, llm_settings.context_window,
                          llm_settings.max_answer_tokens, dense_languages=embedding.languages)  # fmt: skip
    return AppState(platform, api, llm_settings, specs, index, engine, SessionStore(url), url, base_url)


def static_dir() -> Path:
    return Path(__file__).parent / "static"
