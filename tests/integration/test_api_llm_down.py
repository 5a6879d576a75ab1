"""The API with the LLM server down: chat gets 503 with a message, /v1/query still returns sources,
and the user's message is kept in the session store."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from fastapi.testclient import TestClient

from api.main import create_app
from api.state import AppState
from assets.collections import CollectionSpec
from assets.index import PgVectorIndex
from kb.ingest import ingest_collections
from kb.settings import APISettings, AuthSettings, LLMSettings, PlatformSettings
from query_engine.engine import AnswerEngine
from query_engine.llm import build_llm
from query_engine.memory import SessionStore, migrate
from query_engine.rerank import EvidenceReranker
from tests.conftest import free_port
from tests.integration.test_pipeline import collection, resources


def test_llm_down_gives_503_on_chat_and_sources_on_query(
    postgres_url: str, sample_specs: list[CollectionSpec], sample_copy: Path, tmp_path: Path, embedder
) -> None:  # type: ignore[no-untyped-def]
    spec = collection(sample_specs, "runbooks", sample_copy / "runbooks")
    assert ingest_collections([spec], resources(postgres_url, tmp_path / "data"), dg.DagsterInstance.ephemeral())[spec.name]["ok"]
    migrate(postgres_url)
    dead_llm = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    llm_settings = LLMSettings(model="qwen2.5-coder-0.5b-instruct")
    index = PgVectorIndex(postgres_url)
    engine = AnswerEngine(
        index, embedder, [spec.name], EvidenceReranker(), build_llm("openai", dead_llm, llm_settings.model, timeout=5)
    )
    # Sign-in off (as an operator may set it locally): this test is about the LLM, test_access.py about auth.
    sessions = SessionStore(postgres_url)
    state = AppState(PlatformSettings(), APISettings(), llm_settings, [spec], index, engine, sessions, postgres_url, dead_llm,
                     auth=AuthSettings(mode="off"))  # fmt: skip
    question = "How do I roll back a bad gateway-core deploy?"
    with TestClient(create_app(state)) as client:
        chat = client.post(
            "/v1/chat/completions",
            json={"model": "default", "user": "down-test", "messages": [{"role": "user", "content": question}]},
        )
        assert chat.status_code == 503
        assert "language model is unavailable" in chat.json()["error"]["message"]
        query = client.post("/v1/query", json={"question": question})
        assert query.status_code == 200
        body = query.json()
        assert body["answer"] is None and body["error"]
        assert body["sources"][0]["path"] == "gateway-high-error-rate.md"
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["llm"].startswith("unreachable")
        sessions = client.get("/v1/sessions", params={"user": "down-test"}).json()["data"]
        kept = client.get(f"/v1/sessions/{sessions[0]['id']}").json()["messages"]
        assert [(m["role"], m["content"]) for m in kept] == [("user", question)]
