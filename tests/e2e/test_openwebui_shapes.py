"""Open WebUI's own requests, recorded from the real client (tests/openwebui/record.py, Open WebUI 0.12.4), replayed
against the running platform with the real model: answers carry `url_citation` annotations Open WebUI renders, its
housekeeping prompts create no session and touch no retrieval, one chat is one session (a regenerated answer
replaces), and the user it forwards through a gateway key reads only what roles.yaml gives them."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from kb.settings import PROJECT_ROOT
from tests.e2e.conftest import RunningPlatform

pytestmark = pytest.mark.e2e
RECORDED = PROJECT_ROOT / "tests" / "fixtures" / "openwebui"
# Set by the gateway or by the transport, not by Open WebUI's request itself.
HOP_HEADERS = {"host", "content-length", "authorization", "accept-encoding"}


def recorded(name: str) -> dict[str, Any]:
    return json.loads((RECORDED / f"{name}.json").read_text())


def gateway_key(platform: RunningPlatform) -> str:
    """A gateway key for Open WebUI, made as the README says: `kb keys create --user openwebui --role devops --gateway`."""
    if "openwebui" not in platform._keys:
        command = [str(Path(sys.executable).parent / "kb"), "keys", "create", "--user", "openwebui", "--role", "devops",
                   "--gateway", "--json"]  # fmt: skip
        out = subprocess.run(command, env=platform.env, capture_output=True, text=True, check=True, timeout=120).stdout
        platform._keys["openwebui"] = json.loads(out.strip().splitlines()[-1])["key"]
    return platform._keys["openwebui"]


def replay(platform: RunningPlatform, request: dict[str, Any], chat_id: str | None = None, **user: str) -> httpx.Response:
    """Send a recorded request as Open WebUI would through our gateway key: its own headers (the chat id and the
    forwarded user replaced where given), its body byte for byte."""
    headers = {k: v for k, v in request["headers"].items() if k.lower() not in HOP_HEADERS}
    if chat_id is not None:
        headers["X-OpenWebUI-Chat-Id"] = chat_id
    for field, value in user.items():  # email="…" → X-OpenWebUI-User-Email
        headers[f"X-OpenWebUI-User-{field.title()}"] = value
    headers["Authorization"] = f"Bearer {gateway_key(platform)}"
    return httpx.request(request["method"], f"{platform.api}{request['path']}", headers=headers, json=request.get("body"),
                         timeout=900)  # fmt: skip


def streamed(response: httpx.Response) -> tuple[str, dict[str, Any]]:
    """The text of an SSE answer and its final chunk."""
    assert response.status_code == 200, response.text
    text, final = "", {}
    for line in response.text.splitlines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[len("data: ") :])
        delta = chunk["choices"][0]["delta"]
        text += delta.get("content") or ""
        if chunk["choices"][0]["finish_reason"]:
            final = chunk
    return text, final


def assert_open_webui_renders(text: str, final: dict[str, Any], api: str) -> None:
    """What Open WebUI's middleware reads (url_citation in the delta's annotations) opens the right source for `[n]`."""
    annotations = final["choices"][0]["delta"]["annotations"]
    sources = {s["n"]: s for s in final["sources"]}
    markers = {int(n) for n in re.findall(r"\[(\d{1,3})\]", text)} & set(sources)
    assert markers, f"the answer cites nothing: {text!r}"
    urls: list[str] = []
    for annotation in annotations:
        assert annotation["type"] == "url_citation"
        citation = annotation["url_citation"]
        assert set(citation) == {"url", "title", "start_index", "end_index"}
        assert citation["url"].startswith(f"{api}/#source?") and citation["title"]
        assert text[citation["start_index"] : citation["end_index"]] in {"", *(f"[{n}]" for n in sources)}
        if citation["url"] not in urls:
            urls.append(citation["url"])
    for n in markers:  # Open WebUI opens [n] as the n-th distinct URL: it must be source n's
        source = sources[n]
        assert f"collection={source['collection']}" in urls[n - 1] and f"n={n}" in urls[n - 1]


def sessions_of(platform: RunningPlatform, email: str) -> list[dict[str, Any]]:
    """The forwarded user's own sessions, read through the gateway as that user."""
    listing = {"method": "GET", "path": "/v1/sessions?limit=200", "headers": recorded("models")["headers"]}
    return replay(platform, listing, email=email).json()["data"]


def searches(platform: RunningPlatform) -> float:
    """How many retrievals the API has run (the search stage's histogram count)."""
    metrics = platform.http.get(f"{platform.api}/metrics").text
    found = re.search(r'^kb_stage_duration_ms_count\{stage="search"\} ([0-9.e+]+)$', metrics, re.M)
    return float(found.group(1)) if found else 0.0


def test_one_open_webui_chat_is_one_cited_session_and_a_regeneration_replaces(platform: RunningPlatform) -> None:
    chat_id, user = str(uuid.uuid4()), "admin@example.com"  # the recorded Open WebUI admin, devops in roles.yaml
    before = len(sessions_of(platform, user))
    text, final = streamed(replay(platform, recorded("chat_stream_first"), chat_id))
    assert_open_webui_renders(text, final, platform.api)
    session_id = final["session_id"]
    # The second question carries the whole chat back, Open WebUI's copy of our answer included.
    second = copy.deepcopy(recorded("chat_stream_second"))
    second["body"]["messages"][1]["content"] = text
    text2, final2 = streamed(replay(platform, second, chat_id))
    assert final2["session_id"] == session_id
    # "Regenerate" sends the same request again: the answer is replaced, not added.
    _, final3 = streamed(replay(platform, second, chat_id))
    assert final3["session_id"] == session_id
    read = {"method": "GET", "path": f"/v1/sessions/{session_id}", "headers": recorded("models")["headers"]}
    chat = replay(platform, read).json()
    assert [m["role"] for m in chat["messages"]] == ["user", "assistant", "user", "assistant"]
    assert chat["user"] == user and len(sessions_of(platform, user)) == before + 1


def test_open_webui_housekeeping_opens_no_session_and_searches_nothing(platform: RunningPlatform) -> None:
    user = "admin@example.com"
    models = {m["id"] for m in replay(platform, recorded("models")).json()["data"]}
    assert {"default", "kb-utility"} <= models
    sessions, searched = len(sessions_of(platform, user)), searches(platform)
    for name in ("task_title", "task_tags", "task_follow_up"):
        for model in ("kb-utility", "default"):  # its task model, or the chat model when none is set
            request = copy.deepcopy(recorded(name))
            request["body"]["model"] = model
            response = replay(platform, request, str(uuid.uuid4()))
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["housekeeping"] in {"title", "tags", "follow_up"} and "sources" not in body
            assert body["choices"][0]["message"]["content"].strip()
    assert len(sessions_of(platform, user)) == sessions and searches(platform) == searched


def test_a_forwarded_user_reads_only_their_collections(platform: RunningPlatform) -> None:
    me = replay(platform, {"method": "GET", "path": "/v1/auth/me", "headers": recorded("models")["headers"]},
                email="vera@example.com", id="vera-1", name="Vera").json()  # fmt: skip
    assert (me["user"], me["method"], me["via"]) == ("vera@example.com", "forwarded", "openwebui")
    assert me["collections"] == ["technical_docs"]
    ask = {"method": "POST", "path": "/v1/query", "headers": recorded("models")["headers"],
           "body": {"question": "How do I roll back a bad gateway-core deploy?", "answer": False}}  # fmt: skip
    vera = replay(platform, ask, email="vera@example.com", id="vera-1").json()
    assert vera["sources"] and {s["collection"] for s in vera["sources"]} == {"technical_docs"}
    admin = replay(platform, ask).json()  # the recorded admin is devops: runbooks too
    assert "runbooks" in {s["collection"] for s in admin["sources"]}
    # Without the gateway mark the same headers change nothing: the key acts as itself.
    plain = httpx.get(f"{platform.api}/v1/auth/me", headers={"Authorization": f"Bearer {platform.key_for('e2e-plain')}",
                      "X-OpenWebUI-User-Email": "vera@example.com"}).json()  # fmt: skip
    assert plain["user"] == "e2e-plain"
