"""The connectors.yaml contract: keys, defaults, off without url, tokens from the environment only."""

from __future__ import annotations

from pathlib import Path

import pytest

from connectors.config import load_connectors, parse_connectors, replayed_systems
from kb.settings import PROJECT_ROOT


def test_defaults_follow_the_operators_guide() -> None:
    config = parse_connectors({})
    limits = {n: config.get(n).rate_limit_per_minute for n in ("gitea", "kubernetes", "swarm", "loki", "cicd", "docs")}
    ttls = {n: config.get(n).cache_ttl_seconds for n in ("gitea", "kubernetes", "swarm", "loki", "cicd", "docs")}
    assert limits == {"gitea": 100, "kubernetes": 50, "swarm": 50, "loki": 30, "cicd": 40, "docs": 60}
    assert ttls == {"gitea": 300, "kubernetes": 60, "swarm": 120, "loki": 0, "cicd": 30, "docs": 600}
    assert config.enabled() == ["docs"]  # no url: off; docs is on by default
    assert config.kubernetes.namespaces.allow == ["production", "staging"] and config.kubernetes.namespaces.deny == [
        "kube-system"
    ]
    assert (config.loki.max_range_hours, config.loki.max_lines) == (24, 5000)


def test_tokens_come_from_the_named_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    config = parse_connectors({"gitea": {"url": "http://gitea", "token_env": "MY_GITEA_TOKEN"}})
    assert config.gitea.token() is None
    monkeypatch.setenv("MY_GITEA_TOKEN", "t0ken")
    assert config.gitea.token() == "t0ken"
    with pytest.raises(ValueError):
        parse_connectors({"gitea": {"url": "http://gitea", "token": "inline-secret"}})  # no such key: tokens never in the file


def test_external_servers_and_bad_values_are_checked() -> None:
    config = parse_connectors({"grafana": {"mcp_command": ["mcp-grafana", "--disable-write"]}, "docs": {"enabled": False}})
    assert config.enabled() == ["grafana"] and config.live() == ["grafana"]
    with pytest.raises(ValueError):
        parse_connectors({"grafana": {}})  # neither mcp_command nor mcp_url
    with pytest.raises(ValueError):
        parse_connectors({"swarm": {"url": "ftp://docker"}})


def test_shipped_file_serves_the_sample_company(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_connectors(PROJECT_ROOT / "connectors.yaml")
    assert set(config.live()) == {"gitea", "kubernetes", "loki", "cicd"}
    for _, folder in replayed_systems(config):
        assert (PROJECT_ROOT / folder).is_dir(), folder
    monkeypatch.setenv("KB_CONNECTORS_FILE", str(tmp_path / "missing.yaml"))
    assert load_connectors().enabled() == ["docs"]
    (tmp_path / "bad.yaml").write_text("kubernetes: {url: http://x, rate_limit_per_minute: 0}")
    with pytest.raises(ValueError, match="bad.yaml"):
        load_connectors(tmp_path / "bad.yaml")
