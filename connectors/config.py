"""The connectors' configuration contract: `connectors.yaml` (or the file in `KB_CONNECTORS_FILE`).

One top-level key per connector (`gitea`, `kubernetes`, `swarm`, `loki`, `cicd`, `docs`); a connector
without `url` is off (docs, the knowledge base itself, is on by default). Tokens never live in the
file: `token_env` names the environment variable that holds one. Any other top-level key is an
external MCP server an operator adds (`mcp_command` for stdio or `mcp_url` for streamable HTTP); it
passes the same guard as ours.
"""

from __future__ import annotations

import fnmatch
import os
from datetime import datetime
from pathlib import Path
from typing import Any, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator


class AllowDeny(BaseModel):
    """Glob allow and deny lists; deny wins, and an empty allow list allows nothing."""

    model_config = ConfigDict(extra="forbid")

    allow: list[str] = Field(default_factory=list)
    deny: list[str] = Field(default_factory=list)

    def permits(self, name: str) -> bool:
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in self.deny):
            return False
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.allow)


class ConnectorConfig(BaseModel):
    """Keys every connector shares."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(default=None, description="Where the system's API answers; no url: the connector is off.")
    token_env: str | None = Field(default=None, description="Name of the environment variable that holds the token.")
    rate_limit_per_minute: int = Field(default=60, ge=1)
    cache_ttl_seconds: float = Field(default=0, ge=0, description="0: results are never cached.")
    timeout_seconds: float = Field(default=10.0, gt=0, description="Per call, including the system's answer.")
    max_output_chars: int = Field(default=12_000, ge=200, description="Tool output beyond this is cut, with a note.")
    replay: str | None = Field(
        default=None,
        description="A folder of recorded API payloads that `kb up` serves at `url` (the sample company); "
        "remove it when pointing at a real system.",
    )

    @model_validator(mode="after")
    def _positive_limits(self) -> Self:
        # Subclasses redeclare the defaults, which drops the bounds of the base field: check them here.
        if self.rate_limit_per_minute < 1 or self.cache_ttl_seconds < 0 or self.timeout_seconds <= 0:
            raise ValueError("rate_limit_per_minute must be ≥ 1, cache_ttl_seconds ≥ 0 and timeout_seconds > 0")
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.url)

    def token(self) -> str | None:
        """The token from the environment, never from the file."""
        return os.environ.get(self.token_env) if self.token_env else None


class GiteaConfig(ConnectorConfig):
    rate_limit_per_minute: int = 100
    cache_ttl_seconds: float = 300
    repos: AllowDeny = Field(default_factory=AllowDeny, description="Repositories as owner/name globs (devops/*).")


class KubernetesConfig(ConnectorConfig):
    rate_limit_per_minute: int = 50
    cache_ttl_seconds: float = 60
    namespaces: AllowDeny = Field(default_factory=lambda: AllowDeny(allow=["production", "staging"], deny=["kube-system"]))
    max_log_lines: int = Field(default=500, ge=1, description="Upper bound on tail lines of one pod log.")
    recorded_now: datetime | None = Field(
        default=None,
        description="A fixed 'now' for recorded payloads (with `replay`): the time windows of `events` end there; "
        "unset: the real clock.",
    )


class SwarmConfig(ConnectorConfig):
    rate_limit_per_minute: int = 50
    cache_ttl_seconds: float = 120
    max_log_lines: int = Field(default=500, ge=1)

    @model_validator(mode="after")
    def _docker_url(self) -> Self:
        if self.url and not self.url.startswith(("unix://", "tcp://", "http://", "https://")):
            raise ValueError("swarm.url must be unix:///path/to/docker.sock, tcp://host:port or http(s)://")
        return self


class LokiConfig(ConnectorConfig):
    rate_limit_per_minute: int = 30
    cache_ttl_seconds: float = 0
    max_range_hours: float = Field(default=24, gt=0)
    max_lines: int = Field(default=5000, ge=1)
    namespaces: AllowDeny | None = Field(
        default=None, description="Namespaces a LogQL selector may name; unset: the kubernetes connector's lists."
    )
    recorded_now: datetime | None = Field(
        default=None,
        description="A fixed 'now' for recorded streams (with `replay`): every query's range ends there; unset: the real clock.",
    )


class CicdConfig(ConnectorConfig):
    """`url` is the CI (Gitea Actions: the Gitea URL); `argocd_url` is ArgoCD. Either one turns it on."""

    rate_limit_per_minute: int = 40
    cache_ttl_seconds: float = 30
    argocd_url: str | None = None
    argocd_token_env: str | None = None
    argocd_replay: str | None = Field(default=None, description="Recorded ArgoCD payloads `kb up` serves at argocd_url.")
    repos: AllowDeny | None = Field(default=None, description="Repositories whose builds may be read; unset: gitea's list.")

    @property
    def enabled(self) -> bool:
        return bool(self.url or self.argocd_url)

    def argocd_token(self) -> str | None:
        return os.environ.get(self.argocd_token_env) if self.argocd_token_env else None


class DocsConfig(ConnectorConfig):
    """The knowledge base itself: on unless `enabled: false`."""

    rate_limit_per_minute: int = 60
    cache_ttl_seconds: float = 600
    on: bool = Field(default=True, validation_alias="enabled")

    @property
    def enabled(self) -> bool:
        return self.on


class ExternalServerConfig(ConnectorConfig):
    """An MCP server the operator adds: stdio (`mcp_command`) or streamable HTTP (`mcp_url`)."""

    mcp_command: list[str] | None = None
    mcp_url: str | None = None
    env: dict[str, str] = Field(default_factory=dict, description="Environment of a stdio server (values may be ${VAR}).")
    allowed_tools: list[str] | None = Field(default=None, description="Only these tools are offered; unset: all.")
    arguments: dict[str, AllowDeny] = Field(
        default_factory=dict, description="Allow and deny lists per argument name, checked before every call."
    )

    @model_validator(mode="after")
    def _one_transport(self) -> Self:
        if bool(self.mcp_command) == bool(self.mcp_url):
            raise ValueError("an external MCP server needs exactly one of mcp_command (stdio) or mcp_url (HTTP)")
        return self

    @property
    def enabled(self) -> bool:
        return True


class ConnectorsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    gitea: GiteaConfig = Field(default_factory=GiteaConfig)
    kubernetes: KubernetesConfig = Field(default_factory=KubernetesConfig)
    swarm: SwarmConfig = Field(default_factory=SwarmConfig)
    loki: LokiConfig = Field(default_factory=LokiConfig)
    cicd: CicdConfig = Field(default_factory=CicdConfig)
    docs: DocsConfig = Field(default_factory=DocsConfig)
    external: dict[str, ExternalServerConfig] = Field(default_factory=dict)

    def get(self, name: str) -> ConnectorConfig:
        if name in self.external:
            return self.external[name]
        return getattr(self, name)  # type: ignore[no-any-return]

    def enabled(self) -> list[str]:
        """Names of the connectors that are on, ours first."""
        ours = [n for n in ("gitea", "kubernetes", "swarm", "loki", "cicd", "docs") if getattr(self, n).enabled]
        return ours + list(self.external)

    def live(self) -> list[str]:
        """Enabled connectors to live systems (everything but the knowledge base)."""
        return [n for n in self.enabled() if n != "docs"]

    def loki_namespaces(self) -> AllowDeny:
        return self.loki.namespaces or self.kubernetes.namespaces


OURS = ("gitea", "kubernetes", "swarm", "loki", "cicd", "docs")


def replayed_systems(config: ConnectorsConfig) -> list[tuple[str, str]]:
    """(url, folder) of every recorded system the configuration asks `kb up` to serve."""
    pairs = [(c.url, c.replay) for c in (config.gitea, config.kubernetes, config.loki, config.cicd) if c.url and c.replay]
    if config.cicd.argocd_url and config.cicd.argocd_replay:
        pairs.append((config.cicd.argocd_url, config.cicd.argocd_replay))
    return list(dict.fromkeys(pairs))


def parse_connectors(data: dict[str, Any] | None) -> ConnectorsConfig:
    """The file's mapping as a config; keys other than ours are external MCP servers."""
    data = dict(data or {})
    ours = {k: (v if v is not None else {}) for k, v in data.items() if k in OURS}
    external = {k: v for k, v in data.items() if k not in OURS}
    return ConnectorsConfig(**ours, external=external)


def load_connectors(path: Path | None = None) -> ConnectorsConfig:
    """`path`, else `KB_CONNECTORS_FILE`, else `connectors.yaml` at the repository root; no file: docs only."""
    path = path or Path(os.environ.get("KB_CONNECTORS_FILE") or Path(__file__).resolve().parent.parent / "connectors.yaml")
    if not path.exists():
        return ConnectorsConfig()
    try:
        return parse_connectors(yaml.safe_load(path.read_text()))
    except (yaml.YAMLError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from exc
