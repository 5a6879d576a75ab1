"""The MCP endpoint's DNS-rebinding protection: loopback plus the names an operator serves the API by."""

from __future__ import annotations

import pytest

from api.main import mcp_transport_security
from kb.settings import APISettings


def test_loopback_only_by_default() -> None:
    security = mcp_transport_security(APISettings())
    assert security.enable_dns_rebinding_protection
    assert security.allowed_hosts == ["127.0.0.1:*", "localhost:*", "[::1]:*"]


def test_names_behind_a_proxy_are_allowed_hosts_and_origins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KB_API_ALLOWED_HOSTS", '["kb.example.internal", "kb.example.internal:8443"]')
    security = mcp_transport_security(APISettings())
    assert {"kb.example.internal", "kb.example.internal:8443"} <= set(security.allowed_hosts)
    assert "https://kb.example.internal" in security.allowed_origins and "evil.example" not in str(security.allowed_origins)
