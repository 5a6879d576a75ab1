"""The agent's tool layer over the real MCP transports: our connectors over stdio and streamable HTTP,
an external MCP server added by config, every call through the guard; and the agent's flow with a
scripted LLM (the real model is exercised end to end in tests/e2e/test_agent.py)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from connectors.config import parse_connectors
from kb.replay.server import ReplayServer
from kb.settings import PROJECT_ROOT
from query_engine.agent import Agent, AgentAnswer, StepEvent
from query_engine.tools.guard import Guard, MemoryCallLog
from query_engine.tools.mcp_client import ConnectorClients
from tests.conftest import free_port

NAMESPACES = {"allow": ["payments", "risk", "settlement"], "deny": ["kube-system"]}


@pytest.fixture(scope="module")
def kubernetes() -> Iterator[ReplayServer]:
    with ReplayServer("kubernetes", PROJECT_ROOT / "examples/live_systems/kubernetes") as server:
        yield server


def write_config(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "connectors.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_external_mcp_server_added_by_config_passes_the_guard(tmp_path: Path) -> None:
    server = str(PROJECT_ROOT / "tests/fixtures/external_mcp_server.py")
    data = {"inventory": {"mcp_command": [sys.executable, server], "rate_limit_per_minute": 2,
                          "arguments": {"namespace": {"allow": ["payments"], "deny": ["kube-system"]}}}}  # fmt: skip
    config = parse_connectors(data)

    async def run() -> list[Any]:
        clients = await ConnectorClients(config, write_config(tmp_path, data)).start()
        try:
            assert [t.qualified for t in clients.tools] == ["inventory.lookup"], clients.failed
            tool, guard = clients.tools[0], Guard(config, MemoryCallLog())
            calls = [
                await guard.call("inventory", "lookup", {"namespace": ns}, tool.invoke) for ns in ("payments", "kube-system")
            ]
            calls += [await guard.call("inventory", "lookup", {"namespace": "payments"}, tool.invoke) for _ in range(2)]
            return calls
        finally:
            await clients.aclose()

    ok, denied, second, limited = asyncio.run(run())
    assert ok.outcome == "ok" and "owner=payments-core" in ok.output
    assert "hunter2hunter2" not in ok.output and "Sup3rS3cret!2026" not in ok.output
    assert denied.outcome == "refused"
    assert second.outcome == "ok" and limited.outcome == "rate_limited"  # 2 a minute: the refused call never reached it


def test_our_connector_over_streamable_http_as_an_external_server(tmp_path: Path, kubernetes: ReplayServer) -> None:
    config_file = write_config(tmp_path, {"kubernetes": {"url": kubernetes.url, "namespaces": NAMESPACES}})
    port = free_port()
    command = [sys.executable, "-m", "connectors", "kubernetes", "--config", str(config_file), "--port", str(port)]
    process = subprocess.Popen(command, cwd=PROJECT_ROOT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{port}/mcp", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.3)
        data = {"k8s-http": {"mcp_url": f"http://127.0.0.1:{port}/mcp", "allowed_tools": ["list_pods"],
                             "arguments": {"namespace": NAMESPACES}}}  # fmt: skip
        config = parse_connectors(data)

        async def run() -> tuple[list[str], Any]:
            clients = await ConnectorClients(config).start()
            try:
                tool = clients.tools[0]
                call = await Guard(config).call("k8s-http", "list_pods", {"namespace": "payments"}, tool.invoke)
                return [t.name for t in clients.tools], call
            finally:
                await clients.aclose()

        names, call = asyncio.run(run())
    finally:
        process.terminate()
        process.wait(10)
    assert names == ["list_pods"]  # allowed_tools narrows what the agent is offered
    assert call.outcome == "ok" and "CrashLoopBackOff" in call.output and "OOMKilled" in call.output


class ScriptedLLM:
    """Answers the planning steps from a script and writes a fixed answer: the agent's flow, not the model, under test."""

    def __init__(self, plans: dict[str, dict[str, Any]], answer: str) -> None:
        self.plans, self.answer, self.prompts = plans, answer, []  # type: ignore[var-annotated]

    async def achat(self, messages: list[Any], response_format: dict[str, Any], max_tokens: int) -> Any:
        name = response_format["json_schema"]["name"]
        self.prompts.append((name, response_format["json_schema"]["schema"]))
        return type("R", (), {"message": type("M", (), {"content": json.dumps(self.plans[name])})()})()

    async def astream_chat(self, messages: list[Any]) -> Any:
        self.prompts.append(("answer", messages[0].content))

        async def gen() -> Any:
            for word in self.answer.split(" "):
                yield type("C", (), {"delta": word + " "})()

        return gen()


class NoDocs:
    def sources(self, *args: Any) -> list[Any]:
        return []


def test_agent_plans_calls_in_parallel_through_the_guard_and_states_refusals(tmp_path: Path, kubernetes: ReplayServer) -> None:
    data = {"kubernetes": {"url": kubernetes.url, "namespaces": NAMESPACES}}
    config, log = parse_connectors(data), MemoryCallLog()
    plans = {
        "route": {"systems": ["kubernetes", "docs"]},
        "tools-kubernetes": {"calls": [{"tool": "list_pods", "arguments": {"namespace": "payments", "label_selector": ""}},
                                       {"tool": "list_pods", "arguments": {"namespace": "kube-system"}}]},
    }  # fmt: skip
    llm = ScriptedLLM(plans, "gateway-core pods are OOMKilled [kubernetes: list_pods payments]. DB_PASSWORD=hunter2hunter2")

    async def run() -> list[Any]:
        clients = await ConnectorClients(config, write_config(tmp_path, data)).start()
        try:
            agent = Agent(llm, NoDocs(), clients.tools, Guard(config, log), context_window=4096)  # type: ignore[arg-type]
            return [event async for event in agent.astream("why is gateway-core restarting in payments?", user="bob")]
        finally:
            await clients.aclose()

    events = asyncio.run(run())
    progress = [e for e in events if isinstance(e, StepEvent)]
    answer = events[-1]
    assert isinstance(answer, AgentAnswer)
    assert [p.status for p in progress].count("started") == 2 and [p.status for p in progress].count("done") == 2
    assert [(s.connector, s.tool, s.outcome) for s in answer.steps] == [
        ("docs", "search", "ok"), ("kubernetes", "list_pods", "ok"), ("kubernetes", "list_pods", "refused")]  # fmt: skip
    prompt = dict(llm.prompts)["answer"]
    assert "[kubernetes: list_pods payments] (ok)" in prompt and "CrashLoopBackOff" in prompt
    assert "Sup3rS3cret!2026" not in prompt and "ak_live_" not in prompt  # the model never sees a secret
    assert "hunter2hunter2" not in answer.text  # nor does the user, whatever the model writes
    assert "Refused by the allowlists" in answer.text and "kube-system" in answer.text
    assert [c.user for c in log.calls] == ["bob"] * 3
    tool_schema = dict(llm.prompts)["tools-kubernetes"]
    assert {v["properties"]["tool"]["const"] for v in tool_schema["properties"]["calls"]["items"]["anyOf"]} == {
        "list_pods", "pod_logs", "describe", "deployments", "events", "resource_usage"}  # fmt: skip


def test_a_system_chosen_without_a_usable_call_gets_its_overview_tool(tmp_path: Path, kubernetes: ReplayServer) -> None:
    data = {"kubernetes": {"url": kubernetes.url, "namespaces": NAMESPACES}}
    config = parse_connectors(data)
    llm = ScriptedLLM({"route": {"systems": ["kubernetes"]}, "tools-kubernetes": {"calls": []}}, "ok")

    async def run() -> tuple[Any, Any]:
        clients = await ConnectorClients(config, write_config(tmp_path, data)).start()
        try:
            agent = Agent(llm, NoDocs(), clients.tools, Guard(config, MemoryCallLog()))  # type: ignore[arg-type]
            named = await agent.plan("why are the gateway-core pods restarting in payments?")
            unnamed = await agent.plan("why are the pods restarting?")
            return named, unnamed
        finally:
            await clients.aclose()

    (_, named), (_, unnamed) = asyncio.run(run())
    assert [(c.tool, c.arguments) for c in named] == [("list_pods", {"namespace": "payments"})]
    assert unnamed == []  # no namespace named: nothing is guessed


def test_planning_past_its_budget_falls_back_to_cue_words(tmp_path: Path, kubernetes: ReplayServer) -> None:
    data = {"kubernetes": {"url": kubernetes.url, "namespaces": NAMESPACES}}
    config = parse_connectors(data)

    class SlowLLM(ScriptedLLM):
        async def achat(self, messages: list[Any], response_format: dict[str, Any], max_tokens: int) -> Any:
            await asyncio.sleep(5)
            return await super().achat(messages, response_format, max_tokens)

    llm = SlowLLM({}, "pods are crash-looping [kubernetes: list_pods payments]")

    async def run() -> Any:
        clients = await ConnectorClients(config, write_config(tmp_path, data)).start()
        try:
            agent = Agent(llm, NoDocs(), clients.tools, Guard(config, MemoryCallLog()), time_budget_s=1)  # type: ignore[arg-type]
            return [e async for e in agent.astream("why are the gateway-core pods restarting in payments?")][-1]
        finally:
            await clients.aclose()

    answer = asyncio.run(run())
    assert [(s.connector, s.tool, s.arguments, s.outcome) for s in answer.steps[1:]] == [
        ("kubernetes", "list_pods", {"namespace": "payments"}, "ok")]  # fmt: skip
