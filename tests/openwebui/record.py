"""Records what the real Open WebUI sends an OpenAI-compatible backend, as fixtures in tests/fixtures/openwebui/.

Two phases, each a fresh Open WebUI (`.venv-openwebui`, see install.sh) against the recorder (recorder.py), driven in
headless Chromium as a user would drive it:
1. forwarded user info as plain `X-OpenWebUI-User-*` headers: sign in, pick `default`, ask (streamed), wait for the
   title, tags and follow-up tasks, open the citation, ask a second question in the same chat, regenerate the answer;
2. with `FORWARD_USER_INFO_HEADER_JWT_SECRET` set, so the user travels as one signed `X-OpenWebUI-User-Jwt`: one question.
Every request is written as {"method", "path", "headers", "body"} exactly as sent, the Authorization value replaced
by `Bearer <KEY>`; `index.json` lists the whole sequence.

    .venv/bin/python -m tests.openwebui.record            # from the repository root; about a minute
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.conftest import stop_process_group
from tests.openwebui.recorder import CITATION_TITLE, CITATION_URL, serve, task_kind

PROJECT_ROOT = Path(__file__).resolve().parents[2]
OPENWEBUI_VENV = PROJECT_ROOT / ".venv-openwebui"
FIXTURES = PROJECT_ROOT / "tests" / "fixtures" / "openwebui"
ADMIN_EMAIL = "admin@example.com"
ADMIN_NAME = "Ada Admin"
ADMIN_PASSWORD = "openwebui-test-password"
WEBUI_SECRET_KEY = "openwebui-test-session-secret-0123456789"  # signs Open WebUI's own sessions; a test value
JWT_SECRET = "openwebui-forward-jwt-test-secret"  # a test secret, kept in the fixture to verify its JWT
FIRST = "What is the retention of the payments.events topic?"
SECOND = "Which service produces to it?"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def openwebui_env(data_dir: Path, port: int, api_base: str, api_key: str, jwt_secret: str | None = None) -> dict[str, str]:
    """Everything Open WebUI 0.12.4 needs to run offline on loopback against one OpenAI-compatible API (our `/v1`).

    Most of these seed Open WebUI's persistent config on its first start only (a fresh DATA_DIR here)."""
    env = {
        **os.environ,
        "DATA_DIR": str(data_dir),
        "OFFLINE_MODE": "true",  # no version check, no model downloads, no pip installs for tools
        "HF_HUB_OFFLINE": "1",
        "ENABLE_OLLAMA_API": "false",
        "ENABLE_OPENAI_API": "true",
        "OPENAI_API_BASE_URLS": api_base,
        "OPENAI_API_KEYS": api_key,
        "ENABLE_FORWARD_USER_INFO_HEADERS": "true",
        # No local SentenceTransformer at start: embeddings would go to the API, and retrieval is bypassed anyway.
        "RAG_EMBEDDING_ENGINE": "openai",
        "RAG_EMBEDDING_MODEL": "kb-utility",
        "BYPASS_EMBEDDING_AND_RETRIEVAL": "true",
        "WEBUI_SECRET_KEY": WEBUI_SECRET_KEY,
        "WEBUI_URL": f"http://127.0.0.1:{port}",
        "CORS_ALLOW_ORIGIN": f"http://127.0.0.1:{port}",
        # The admin exists from the start (0.12.4 creates it and then turns sign-up off itself).
        "WEBUI_ADMIN_EMAIL": ADMIN_EMAIL,
        "WEBUI_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "WEBUI_ADMIN_NAME": ADMIN_NAME,
        "ENABLE_SIGNUP": "false",
        "DEFAULT_MODELS": "default",
        "TASK_MODEL_EXTERNAL": "kb-utility",
        "ENABLE_TITLE_GENERATION": "true",
        "ENABLE_TAGS_GENERATION": "true",
        "ENABLE_FOLLOW_UP_GENERATION": "true",
        "ENABLE_AUTOCOMPLETE_GENERATION": "false",
        "ANONYMIZED_TELEMETRY": "false",
        "DO_NOT_TRACK": "true",
        "SCARF_NO_ANALYTICS": "true",
    }
    env.pop("FORWARD_USER_INFO_HEADER_JWT_SECRET", None)
    if jwt_secret:
        env["FORWARD_USER_INFO_HEADER_JWT_SECRET"] = jwt_secret
    return env


@dataclass
class OpenWebUI:
    url: str
    log: Path
    started_s: float  # seconds from launch to a healthy /health


@contextmanager
def running_openwebui(data_dir: Path, api_base: str, api_key: str, jwt_secret: str | None = None,
                      timeout_s: float = 300) -> Iterator[OpenWebUI]:  # fmt: skip
    """`open-webui serve` on a free loopback port until the block ends; its log is DATA_DIR/../openwebui.log."""
    assert (OPENWEBUI_VENV / "bin" / "open-webui").exists(), f"no {OPENWEBUI_VENV}: run tests/openwebui/install.sh"
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = data_dir.parent / f"openwebui-{port}.log"
    env = openwebui_env(data_dir, port, api_base, api_key, jwt_secret)
    command = [str(OPENWEBUI_VENV / "bin" / "open-webui"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    start = time.monotonic()
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            assert process.poll() is None, log.read_text(errors="replace")[-4000:]
            assert time.monotonic() - start < timeout_s, f"Open WebUI not healthy in {timeout_s}s: {log}"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        yield OpenWebUI(url=url, log=log, started_s=time.monotonic() - start)
    finally:
        stop_process_group(process, signal.SIGTERM, 30)


def launch(p: Any) -> Browser:
    """Debian's chromium, as tests/e2e/test_web_client.py launches it."""
    return p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)


@contextmanager
def browser_page(p: Any, shots: Path, name: str) -> Iterator[Page]:
    """A fresh page in a fresh Chromium; where the block fails, a screenshot `failed-<name>.png` shows the page."""
    browser = launch(p)
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    # Two shared cores, Open WebUI and maybe the platform's model beside the browser: pages can take many seconds.
    page.set_default_timeout(60_000)
    expect.set_options(timeout=60_000)
    try:
        yield page
    except BaseException:
        page.screenshot(path=str(shots / f"failed-{name}.png"))
        raise
    finally:
        browser.close()


def sign_in(page: Page, url: str) -> None:
    """The admin signs in on /auth. The release notes a fresh install shows once (a modal, whenever it comes) are
    closed by Playwright before any action they would block."""
    page.add_locator_handler(page.get_by_role("button", name="Okay, Let's Go!"), lambda notes: notes.click())
    page.goto(f"{url}/auth")
    page.fill("input[name=email]", ADMIN_EMAIL)
    page.fill("input[name=password]", ADMIN_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#chat-input")).to_be_visible()


def pick_model(page: Page, model: str) -> None:
    page.locator("#model-selector-model-button").click()
    page.locator(f"[aria-label='Select {model} model']").click()
    expect(page.get_by_role("button", name=f"Selected model: {model}")).to_be_visible()


def ask(page: Page, question: str) -> None:
    """Type into the chat input (a rich-text editor, not a textarea) and send with Enter."""
    page.locator("#chat-input").click()
    page.keyboard.type(question)
    page.keyboard.press("Enter")


def answers(page: Page) -> Any:
    """The assistant messages shown, oldest first."""
    return page.locator("#messages-container #response-content-container")


def wait_answered(page: Page, count: int, timeout_ms: int = 120_000) -> None:
    """Until `count` answers are shown and the last is finished (its Regenerate button appears only then)."""
    expect(answers(page)).to_have_count(count, timeout=timeout_ms)
    expect(page.get_by_role("button", name="Regenerate").last).to_be_visible(timeout=timeout_ms)


def open_citation(page: Page) -> Any:
    """Click the first inline citation of the last answer; the modal that opens (a dialog)."""
    answers(page).last.locator("button[aria-label^='View source']").first.click()
    dialog = page.get_by_role("dialog").last
    expect(dialog).to_be_visible()
    return dialog


class Requests:
    """The recorder's JSONL file, read as it grows."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def all(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def chats(self) -> list[dict[str, Any]]:
        return [e for e in self.all() if e["method"] == "POST" and e["path"].endswith("/chat/completions")]

    def wait(self, what: str, done: Callable[[list[dict[str, Any]]], bool], timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while not done(self.chats()):
            assert time.monotonic() < deadline, f"no {what} in {timeout_s}s: {[kind_of(e) for e in self.chats()]}"
            time.sleep(0.5)


def kind_of(entry: dict[str, Any]) -> str:
    body = entry.get("body") or {}
    if entry["method"] == "GET":
        return "models"
    kind = task_kind(body) if isinstance(body, dict) else None
    return f"task:{kind}" if kind else ("chat:stream" if body.get("stream") else "chat")


def count(kind: str, n: int) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda chats: sum(kind_of(e) == kind for e in chats) >= n


def sanitized(entry: dict[str, Any]) -> dict[str, Any]:
    """The request as sent, but the API key: {"method", "path", "headers", "body"}."""
    headers = {k: ("Bearer <KEY>" if k.lower() == "authorization" else v) for k, v in entry["headers"].items()}
    return {"method": entry["method"], "path": entry["path"], "headers": headers, "body": entry["body"]}


def jwt_claims(token: str) -> dict[str, Any]:
    """The JWT's payload, unverified (the fixture keeps the secret for whoever verifies it)."""
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def with_jwt(entry: dict[str, Any]) -> dict[str, Any]:
    """A request that carries the forwarded-user JWT, with the test secret that verifies it and its claims."""
    token = entry["headers"]["X-OpenWebUI-User-Jwt"]
    return {**sanitized(entry), "jwt_secret": JWT_SECRET, "jwt_algorithm": "HS256", "jwt_claims": jwt_claims(token)}


def summary(entry: dict[str, Any], phase: str) -> dict[str, Any]:
    raw = entry.get("body")
    body: dict[str, Any] = raw if isinstance(raw, dict) else {}
    headers = entry["headers"]
    return {
        "phase": phase, "kind": kind_of(entry), "method": entry["method"], "path": entry["path"],
        "model": body.get("model"), "stream": body.get("stream"), "messages": [m.get("role") for m in body.get("messages", [])],
        "body_keys": sorted(body), "x_headers": sorted(k for k in headers if k.lower().startswith("x-openwebui")),
        "chat_id": headers.get("X-OpenWebUI-Chat-Id"),
    }  # fmt: skip


def phase_headers(p: Any, work: Path, shots: Path) -> tuple[list[dict[str, Any]], float]:
    """Phase 1: plain user headers; the whole walk. Returns the requests and Open WebUI's start time."""
    log = work / "headers.jsonl"
    recorder = serve(0, log)
    api = f"http://127.0.0.1:{recorder.server_address[1]}/v1"
    requests = Requests(log)
    try:
        with running_openwebui(work / "data-headers", api, "kb_recorder_test_key") as webui:
            with browser_page(p, shots, "headers") as page:
                walk_headers(page, webui.url, requests, shots)
            started = webui.started_s
    finally:
        recorder.shutdown()
    return requests.all(), started


def walk_headers(page: Page, url: str, requests: Requests, shots: Path) -> None:
    """Sign in, ask, wait for the tasks, open the citation, ask again, regenerate."""
    sign_in(page, url)
    pick_model(page, "default")
    ask(page, FIRST)
    wait_answered(page, 1)
    requests.wait("title, tags and follow-up tasks", lambda c: all(
        count(k, 1)(c) for k in ("chat:stream", "task:title", "task:tags", "task:follow_ups")))  # fmt: skip
    expect(page.get_by_role("button", name="Follow up:").first).to_be_visible()
    page.screenshot(path=str(shots / "recorder-answer.png"))
    dialog = open_citation(page)
    expect(dialog.locator(f"a[href='{CITATION_URL}']").first).to_be_visible()
    expect(dialog).to_contain_text(CITATION_TITLE)
    page.screenshot(path=str(shots / "recorder-citation.png"))
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    settled = len(requests.chats())
    time.sleep(2)  # any task still coming for the first answer lands before the second question
    assert len(requests.chats()) == settled, [kind_of(e) for e in requests.chats()[settled:]]
    ask(page, SECOND)
    wait_answered(page, 2)
    requests.wait("second answer's follow-ups", count("task:follow_ups", 2))
    page.get_by_role("button", name="Regenerate").last.click()  # 0.12.4: a menu (suggest a change, Try Again, ...)
    page.get_by_text("Try Again", exact=True).click()
    requests.wait("regenerated answer", count("chat:stream", 3))
    wait_answered(page, 2)
    requests.wait("regenerated answer's follow-ups", count("task:follow_ups", 3))
    time.sleep(2)
    page.screenshot(path=str(shots / "recorder-regenerated.png"))


def phase_jwt(p: Any, work: Path) -> list[dict[str, Any]]:
    """Phase 2: FORWARD_USER_INFO_HEADER_JWT_SECRET set; one question."""
    log = work / "jwt.jsonl"
    recorder = serve(0, log)
    api = f"http://127.0.0.1:{recorder.server_address[1]}/v1"
    requests = Requests(log)
    try:
        with running_openwebui(work / "data-jwt", api, "kb_recorder_test_key", jwt_secret=JWT_SECRET) as webui:
            with browser_page(p, work, "jwt") as page:
                sign_in(page, webui.url)
                ask(page, FIRST)
                wait_answered(page, 1)
                requests.wait("follow-ups", count("task:follow_ups", 1))
    finally:
        recorder.shutdown()
    return requests.all()


def write(out: Path, name: str, payload: dict[str, Any]) -> None:
    (out / name).write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    print(f"  {name}")


def write_fixtures(out: Path, first: list[dict[str, Any]], second: list[dict[str, Any]]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for entry in first:
        by_kind.setdefault(kind_of(entry), []).append(entry)
    streams = by_kind["chat:stream"]
    assert len(streams) == 3, [kind_of(e) for e in first]
    write(out, "models.json", sanitized(by_kind["models"][0]))
    write(out, "chat_stream_first.json", sanitized(streams[0]))
    write(out, "chat_stream_second.json", sanitized(streams[1]))
    write(out, "regenerate.json", sanitized(streams[2]))
    write(out, "task_title.json", sanitized(by_kind["task:title"][0]))
    write(out, "task_tags.json", sanitized(by_kind["task:tags"][0]))
    write(out, "task_follow_up.json", sanitized(by_kind["task:follow_ups"][0]))
    write(out, "task_follow_up_second.json", sanitized(by_kind["task:follow_ups"][1]))
    write(out, "forwarded_jwt.json", with_jwt(next(e for e in second if kind_of(e) == "chat:stream")))
    write(out, "models_jwt.json", with_jwt(next(e for e in second if kind_of(e) == "models")))
    index = [summary(e, "headers") for e in first] + [summary(e, "jwt") for e in second]
    write(out, "index.json", {"open_webui": "0.12.4", "questions": [FIRST, SECOND], "requests": index})


def main() -> None:
    parser = argparse.ArgumentParser(description="Record Open WebUI's requests as fixtures.")
    parser.add_argument("--out", type=Path, default=FIXTURES)
    parser.add_argument("--work", type=Path, help="where data dirs, logs and raw JSONL go (default: a temp dir)")
    parser.add_argument("--screenshots", type=Path, help="default: the work dir")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="openwebui-record-"))
    work.mkdir(parents=True, exist_ok=True)
    shots = args.screenshots or work
    shots.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with sync_playwright() as p:
        first, started = phase_headers(p, work, shots)
        second = phase_jwt(p, work)
    print(f"Open WebUI started in {started:.1f}s; recorded {len(first)} + {len(second)} requests "
          f"in {time.monotonic() - start:.0f}s (work dir {work})")  # fmt: skip
    write_fixtures(args.out, first, second)


if __name__ == "__main__":
    main()
