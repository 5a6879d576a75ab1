"""Everything the API holds for its lifetime, built once from the settings."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import httpx
from llama_index.core.llms import LLM

from api.metrics import register_backup_collector, register_quarantine_collector, register_usage_collector
from assets.collections import CollectionSpec, load_specs
from assets.index import PgVectorIndex, QdrantIndex, VectorIndex
from connectors.config import OURS, ConnectorsConfig, load_connectors
from kb.access.audit import AuditLog, audit_key
from kb.access.identity import Identity
from kb.access.keys import KeyStore
from kb.access.ldap import LDAPAuthenticator
from kb.access.oidc import OIDCVerifier
from kb.access.ratelimit import RateLimiter
from kb.access.roles import Access, RolesConfig, load_roles
from kb.settings import (
    AgentSettings,
    APISettings,
    AuthSettings,
    CacheSettings,
    EmbeddingSettings,
    IndexSettings,
    LLMSettings,
    PlatformSettings,
    PostgresSettings,
)
from pipelines.definitions import database_url
from query_engine.agent import Agent
from query_engine.cache import build_cache
from query_engine.engine import AnswerEngine
from query_engine.knowledge import EngineKnowledgeBase
from query_engine.llm import build_llm
from query_engine.memory import SessionStore, migrate
from query_engine.rerank import default_reranker
from query_engine.routing import TASKS
from query_engine.tools.guard import Guard, PostgresCallLog, ToolCall
from query_engine.tools.mcp_client import ConnectorClients


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
    connectors: ConnectorsConfig = field(default_factory=ConnectorsConfig)
    auth: AuthSettings = field(default_factory=AuthSettings)
    roles: RolesConfig | None = None
    audit_key: bytes | None = None
    guard: Guard | None = None
    clients: ConnectorClients | None = None
    agent: Agent | None = None

    @cached_property
    def keys(self) -> KeyStore:
        return KeyStore(self.database_url, self.sessions.engine)

    @cached_property
    def limiter(self) -> RateLimiter:
        return RateLimiter(self.sessions.engine)

    @cached_property
    def audit(self) -> AuditLog:
        return AuditLog(self.database_url, self.audit_key or audit_key(self.platform.data_dir, self.auth.audit_key))

    @cached_property
    def role_config(self) -> RolesConfig:
        return self.roles or load_roles(self.auth.roles_file)

    @cached_property
    def oidc(self) -> OIDCVerifier | None:
        a = self.auth
        if not (a.oidc_issuer and a.oidc_audience and a.oidc_jwks_url):
            return None
        return OIDCVerifier(a.oidc_issuer, a.oidc_audience, a.oidc_jwks_url, groups_claim=a.oidc_groups_claim,
                            username_claim=a.oidc_username_claim)  # fmt: skip

    @cached_property
    def ldap(self) -> LDAPAuthenticator | None:
        a = self.auth
        if not (a.ldap_url and a.ldap_user_dn_template):
            return None
        return LDAPAuthenticator(a.ldap_url, a.ldap_user_dn_template, a.ldap_group_base or "", group_filter=a.ldap_group_filter)

    def access_of(self, identity: Identity) -> Access:
        """What `identity` may read among the configured collections and connectors."""
        return self.role_config.access(identity, [s.name for s in self.specs], [*OURS, *self.connectors.external])

    @cached_property
    def knowledge(self) -> EngineKnowledgeBase:
        """Built once: every MCP search and agent answer reads it."""
        return EngineKnowledgeBase(self.engine, self.specs)

    async def start_connectors(self) -> None:
        """One MCP session per live connector; the agent answers chat once any is on."""
        if self.guard is None:
            self.guard = Guard(self.connectors, AuditedCallLog(PostgresCallLog(self.database_url), self.audit))
        if not self.connectors.live() or self.engine.llm is None:
            return
        self.clients = await ConnectorClients(self.connectors, connectors_file()).start()
        for name, reason in self.clients.failed.items():
            logging.getLogger(__name__).error("connector %s did not start: %s", name, reason)
        llm, bounds = self.llm_settings, AgentSettings()
        self.agent = Agent(self.engine.llm, self.knowledge, self.clients.tools, self.guard, context_window=llm.context_window,
                           max_answer_tokens=llm.max_answer_tokens, max_tool_calls=bounds.max_tool_calls,
                           time_budget_s=bounds.time_budget_s)  # fmt: skip

    async def stop_connectors(self) -> None:
        if self.clients is not None:
            await self.clients.aclose()

    _llms: dict[str, LLM] = field(default_factory=dict)

    @property
    def model_names(self) -> list[str]:
        """'default' (routed per task), the task routes, and every model a route names."""
        routes = self.llm_settings.route_table()
        return list(dict.fromkeys(["default", *TASKS, self.llm_settings.model, *routes.values()]))

    def llm_for(self, model: str) -> LLM | None:
        """The LLM client for a model name on the configured server, one per name."""
        if model == self.llm_settings.model:
            return self.engine.llm
        if model not in self._llms:
            s = self.llm_settings
            self._llms[model] = build_llm(s.backend, self.llm_base_url, model, s.api_key, s.context_window, s.max_answer_tokens,
                                          s.timeout_s)  # fmt: skip
        return self._llms[model]

    def llm_reachable(self) -> bool:
        url = self.llm_base_url.rstrip("/") + ("/api/tags" if self.llm_settings.backend == "ollama" else "/models")
        # A server started with an API key (vLLM --api-key) answers /models only with it.
        key = self.llm_settings.api_key
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        try:
            return httpx.get(url, timeout=2, headers=headers).status_code == 200
        except httpx.HTTPError:
            return False


@dataclass
class AuditedCallLog:
    """Every tool call in kb_tool_calls (the connectors' own record) and in the audit chain."""

    calls: PostgresCallLog
    audit: AuditLog

    def record(self, call: ToolCall) -> None:
        self.calls.record(call)
        self.audit.record(call.user, "tool_call", target=f"{call.connector}.{call.tool}", outcome=call.outcome,
                          detail={"arguments": call.arguments, "ms": call.ms, "cached": call.cached})  # fmt: skip


def llm_base_url(llm: LLMSettings, platform: PlatformSettings) -> str:
    return llm.base_url or f"http://{platform.host}:{llm.port}/v1"


def build_state() -> AppState:
    platform, postgres, index_settings = PlatformSettings(), PostgresSettings(), IndexSettings()
    embedding, api, llm_settings, auth = EmbeddingSettings(), APISettings(), LLMSettings(), AuthSettings()
    check_auth_mode(auth, api)
    url = database_url(platform, postgres)
    migrate(url)
    register_backup_collector(url)  # kb_backup_last_success_timestamp on /metrics
    register_usage_collector(url)  # active users, sessions, messages per session, feedback votes
    register_quarantine_collector(url)  # kb_quarantined_documents{collection,reason}
    specs = load_specs(platform.collections_file)
    index: VectorIndex = (
        QdrantIndex(
            url=index_settings.qdrant_url,
            path=index_settings.qdrant_path,
            api_key=index_settings.qdrant_api_key,
            layouts={s.name: s.qdrant for s in specs},
        )  # fmt: skip
        if index_settings.backend == "qdrant"
        else PgVectorIndex(url)
    )
    embedder = embedding.load()
    base_url = llm_base_url(llm_settings, platform)
    llm = build_llm(llm_settings.backend, base_url, llm_settings.model, llm_settings.api_key, llm_settings.context_window,
                    llm_settings.max_answer_tokens, llm_settings.timeout_s)  # fmt: skip
    reranker = default_reranker(str(api.reranker_model_dir) if api.reranker_model_dir else None, embedder, specs)
    caching = CacheSettings()
    cache = build_cache(caching.enabled, caching.redis_url, caching.ttl_s, caching.max_entries)
    engine = AnswerEngine(index, embedder, [s.name for s in specs], reranker, llm, llm_settings.context_window,
                          llm_settings.max_answer_tokens, dense_languages=embedding.languages,
                          source_tokens=llm_settings.source_tokens, cache=cache)  # fmt: skip
    return AppState(platform, api, llm_settings, specs, index, engine, SessionStore(url), url, base_url,
                    load_connectors(connectors_file()), auth, load_roles(auth.roles_file))  # fmt: skip


def check_auth_mode(auth: AuthSettings, api: APISettings) -> None:
    """Sign-in can be turned off only on an operator's own machine."""
    if auth.mode == "off" and api.environment != "local":
        raise ValueError("KB_AUTH_MODE=off is only allowed with KB_API_ENVIRONMENT=local")


def connectors_file() -> Path | None:
    """The file the connectors' servers read too: KB_CONNECTORS_FILE, else the repository's connectors.yaml."""
    path = Path(os.environ.get("KB_CONNECTORS_FILE") or Path(__file__).resolve().parent.parent / "connectors.yaml")
    return path if path.exists() else None


def static_dir() -> Path:
    return Path(__file__).parent / "static"
