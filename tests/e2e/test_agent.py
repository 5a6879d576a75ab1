"""The agent on the running platform (`kb up` with the shipped connectors.yaml: the sample company's
recorded Kubernetes, Loki, Gitea and ArgoCD served on loopback) and the knowledge base as an MCP server."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import httpx2
import openai
import psycopg
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from kb.settings import PROJECT_ROOT
from tests.e2e.conftest import RunningPlatform

pytestmark = pytest.mark.e2e
INCIDENT = "Why are the gateway-core pods restarting in the payments namespace?"
SECRETS = ("Sup3rS3cret!2026",)


def planted_secrets() -> list[str]:
    """Every value the recordings plant as a secret: none may reach an answer."""
    pods = json.loads((PROJECT_ROOT / "examples/live_systems/kubernetes/namespaces/payments/pods.json").read_text())
    values = [e.get("value", "") for p in pods["items"] for c in p["spec"]["containers"] for e in c.get("env", [])
              if any(w in e["name"] for w in ("KEY", "PASSWORD", "TOKEN", "SECRET"))]  # fmt: skip
    return [v for v in values if v] + list(SECRETS)


def test_openai_sdk_gets_an_agent_answer_built_from_tool_results(platform: RunningPlatform) -> None:
    client = openai.OpenAI(base_url=f"{platform.api}/v1", api_key=platform.key_for("e2e-agent"), timeout=900, max_retries=0)
    reply = client.chat.completions.create(model="default", messages=[{"role": "user", "content": INCIDENT}])
    text, steps = reply.choices[0].message.content or "", reply.model_extra["steps"]
    assert text.strip()
    assert steps[0]["connector"] == "docs" and steps[0]["outcome"] == "ok"
    live = [s for s in steps if s["connector"] != "docs"]
    assert live and any(s["outcome"] == "ok" for s in live), steps
    assert {"connector", "tool", "arguments", "outcome", "ms", "cached"} <= set(steps[0])
    assert not any(secret in text for secret in planted_secrets())
    with psycopg.connect(platform.database_url) as conn:
        rows = conn.execute("SELECT connector, tool, outcome FROM kb_tool_calls WHERE user_name = 'e2e-agent'").fetchall()
    assert len(rows) == len(steps)  # every call recorded, the knowledge-base search included
    metrics = platform.http.get(f"{platform.api}/metrics").text
    assert 'mcp_requests_total{connector="docs",outcome="ok",tool="search"}' in metrics


def test_streamed_agent_answer_reports_progress_then_steps(platform: RunningPlatform) -> None:
    body = {
        "model": "default",
        "stream": True,
        "messages": [{"role": "user", "content": "What errors does gateway-core log in payments?"}],
    }
    kinds: list[str] = []
    final: dict = {}  # type: ignore[type-arg]
    with platform.http.stream("POST", f"{platform.api}/v1/chat/completions", json=body, timeout=900) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "progress" in chunk:
                kinds.append("progress")
            elif chunk["choices"][0]["delta"].get("content"):
                kinds.append("content")
            if "steps" in chunk:
                final = chunk
    assert "content" in kinds and final["steps"]
    if any(s["connector"] != "docs" for s in final["steps"]):  # live calls report progress before the answer streams
        assert kinds.index("progress") < kinds.index("content")


def test_denied_namespace_is_never_read(platform: RunningPlatform) -> None:
    body = {"question": "List the pods in the kube-system namespace", "agent": True, "user": "e2e-deny"}
    answer = platform.http.post(f"{platform.api}/v1/query", json=body, timeout=900).json()
    for step in answer["steps"]:
        if step["connector"] != "docs" and "kube-system" in json.dumps(step["arguments"]):  # docs searches the question
            assert step["outcome"] == "refused", step
    assert "coredns-5d78c9869d" not in answer["answer"]


def test_query_stays_retrieval_only_without_agent_true(platform: RunningPlatform) -> None:
    body = platform.http.post(f"{platform.api}/v1/query", json={"question": INCIDENT, "answer": False}, timeout=300).json()
    assert body["steps"] is None and body["sources"]


def test_models_list_the_task_routes(platform: RunningPlatform) -> None:
    models = platform.http.get(f"{platform.api}/v1/models").json()
    ids = {m["id"] for m in models["data"]}
    assert {"default", "coder", "reasoner", "writer"} <= ids
    assert set(models["routes"].values()) == {"qwen2.5-coder-0.5b-instruct"}


async def _kb_tools(client: Client) -> tuple[set[str], str]:
    tools = {t.name for t in (await client.list_tools()).tools}
    found = await client.call_tool("search", {"query": "roll back a bad gateway-core deploy", "top_k": 3})
    return tools, "".join(getattr(b, "text", "") for b in found.content)


def test_knowledge_base_is_an_mcp_server_over_http_and_stdio(platform: RunningPlatform) -> None:
    async def over_http() -> tuple[set[str], str]:
        # An IDE agent sends its API key as a bearer; the server searches what the key's role may read.
        headers = {"Authorization": f"Bearer {platform.key_for('e2e-ide')}"}
        async with httpx2.AsyncClient(headers=headers, timeout=300) as http, \
                Client(streamable_http_client(f"{platform.api}/mcp", http_client=http)) as client:  # fmt: skip
            return await _kb_tools(client)

    async def over_stdio() -> tuple[set[str], str]:
        kb = str(Path(sys.executable).parent / "kb")
        async with Client(StdioServerParameters(command=kb, args=["mcp"], env=platform.env)) as client:
            return await _kb_tools(client)

    for tools, text in (asyncio.run(over_http()), asyncio.run(over_stdio())):
        assert {"search", "get_document", "runbook", "list_collections"} <= tools
        assert "gateway-high-error-rate.md" in text
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}
    assert (
        httpx2.post(f"{platform.api}/mcp", json=initialize, headers={"Accept": "application/json, text/event-stream"}).status_code
        == 401
    )
