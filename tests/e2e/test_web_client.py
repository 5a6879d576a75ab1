"""The web client served at / driven in headless Chromium against the running platform (the real 0.5B model): sign in,
start a chat and get a streamed, cited answer with the agent's tool steps, copy it, open a citation in the side panel,
ask a follow-up with collection and metadata filters through a task route, switch to an older conversation, search
conversations, rate the answer with a comment, rename, export and delete conversations, switch the interface to Russian
(and start in the browser's Chinese), use it on a narrow screen, and render a hostile stored answer without running it.
Each state is saved as a screenshot in KB_SCREENSHOT_DIR (default: the test's tmp dir); the README shows two of them
(docs/screenshots/). The i18n table's completeness is checked without a platform."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

from api.citations import chunk_url
from api.state import static_dir
from query_engine.memory import SessionStore
from tests.e2e.conftest import RunningPlatform

pytestmark = pytest.mark.e2e

QUESTION = "How do I roll back a bad gateway-core deploy?"
OLDER_QUESTION = "What is the retention of the payments.events topic?"
HOSTILE_ANSWER = (
    'A **bold** claim <img src=x onerror="window.kbXss=1"><script>window.kbXss=2</script> '
    '[click](javascript:window.kbXss=3) <a href="#" onclick="window.kbXss=4">x</a>\n\n'
    "```html\n<b>kept as text</b>\n```"
)
FILTERED_QUESTION = "What should I do when the gateway error rate alert fires?"
COMMENT = "The rollback command is right; the 15-minute update is not a rollback step."
ANSWER_TIMEOUT_MS = 900_000  # two shared cores: the agent's plan and answer can take minutes
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
WIDE = {"width": 1280, "height": 800}
NARROW = {"width": 390, "height": 800}


def launch(p: Any) -> Browser:
    """Debian's chromium, as the other browser test launches it."""
    return p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)


class Shots:
    """Numbered screenshots of each state, in the order taken."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.taken: list[Path] = []

    def take(self, page: Page, name: str) -> None:
        path = self.folder / f"{len(self.taken) + 1:02d}-{name}.png"
        page.screenshot(path=str(path))
        self.taken.append(path)


def seed_older_conversation(api: str, key: str, user: str, database_url: str) -> str:
    """An earlier conversation of `user`, stored as the chat stores one: its sources are what retrieval returns for
    the question now (POST /v1/query without an answer: no LLM time), its answer quotes the first of them."""
    retrieval = httpx.post(f"{api}/v1/query", json={"question": OLDER_QUESTION, "answer": False},
                           headers={"Authorization": f"Bearer {key}"}, timeout=300)  # fmt: skip
    retrieval.raise_for_status()
    sources = retrieval.json()["sources"][:3]
    assert sources, retrieval.text
    sources[0]["cited"] = True
    lines = [line.strip().lstrip("-* ") for line in sources[0]["snippet"].splitlines() if line.strip()]
    quoted = lines[1] if len(lines) > 1 else lines[0]  # the first is the chunk's heading
    store = SessionStore(database_url)
    try:
        session_id = store.create(user, OLDER_QUESTION, "default")
        store.add(session_id, "user", OLDER_QUESTION)
        store.add(session_id, "assistant", f"The knowledge base says: {quoted} [1]", sources)
    finally:
        store.engine.dispose()
    return session_id


def wait_until(read: Callable[[], Any], expected: Any, timeout_s: float = 15) -> Any:
    """What `read` returns once it equals `expected`, or at the timeout (the assertion after it says what it was)."""
    deadline = time.monotonic() + timeout_s
    while (value := read()) != expected and time.monotonic() < deadline:
        time.sleep(0.25)
    return value


def session_id_of(page: Page) -> str:
    """The open conversation: the page keeps it in the address's fragment."""
    fragment: str = page.evaluate("decodeURIComponent(location.hash.slice(1))")
    assert fragment, page.url
    return fragment


class Walk:
    """The walk through the client, one method a state; every step checks the page and, where it changes data, the API."""

    def __init__(self, page: Page, api: str, key: str, user: str, shots: Shots) -> None:
        self.page, self.api, self.key, self.user, self.shots = page, api, key, user, shots
        self.http = httpx.Client(base_url=api, headers={"Authorization": f"Bearer {key}"}, timeout=60)
        # Two shared cores, the model answering beside the browser: a page can take seconds to catch up.
        page.set_default_timeout(60_000)
        expect.set_options(timeout=30_000)
        self.errors: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.live = ""  # the conversation the walk starts
        self.answer: dict[str, Any] = {}  # its stored answer

    def open_conversation(self, session_id: str) -> None:
        """Click a conversation in the list and wait until it is shown (the list marks it once its messages are drawn)."""
        self.page.click(f"#conversations li[data-id='{session_id}'] .conv-open")
        expect(self.page.locator(f"#conversations li.active[data-id='{session_id}']")).to_be_visible()
        assert session_id_of(self.page) == session_id

    def sign_in(self, older: str) -> None:
        """An API key signs in: the user is shown and the older conversation listed."""
        page = self.page
        page.goto(self.api + "/")
        expect(page.locator("#signin")).to_be_visible()
        self.shots.take(page, "sign-in")
        page.fill("#apikey", self.key)
        page.click("#signin-button")
        page.wait_for_selector("#ask:not([hidden])", timeout=30_000)
        assert self.user in page.inner_text("#who")
        expect(page.locator(f"#conversations li[data-id='{older}']")).to_be_visible()
        self.shots.take(page, "signed-in")

    def shift_enter_is_a_new_line(self) -> None:
        page = self.page
        page.click("#new-chat")
        question = page.locator("#question")
        expect(question).to_be_focused()
        question.type("line one")
        page.keyboard.press("Shift+Enter")
        question.type("line two")
        assert question.input_value() == "line one\nline two"
        assert page.locator("article.turn").count() == 0
        question.fill("")

    def ask(self) -> None:
        """Enter sends: a streamed answer with the agent's tool steps, sources and [n] citations, stored in the session."""
        page = self.page
        page.locator("#question").fill(QUESTION)
        page.keyboard.press("Enter")
        expect(page.locator("#stop")).to_be_visible()
        page.wait_for_selector("article.turn .a[data-done='true']", timeout=ANSWER_TIMEOUT_MS)
        turn = page.locator("article.turn").last
        answer = turn.locator(".a").inner_text()
        links = turn.locator("ol.sources a").evaluate_all("els => els.map(e => e.getAttribute('href'))")
        steps = turn.locator("ul.steps li").evaluate_all("els => els.map(e => e.textContent)")
        assert answer.strip()
        assert any(step.startswith("→ docs.search(") for step in steps), steps  # the agent's tool steps are shown
        assert "/v1/documents/runbooks/gateway-high-error-rate.md" in links
        expect(page.locator("#send")).to_be_visible()
        self.live = session_id_of(page)
        expect(page.locator(f"#conversations li.active[data-id='{self.live}']")).to_be_visible()
        self.check_answer(turn)

    def check_answer(self, turn: Locator) -> None:
        stored = self.http.get(f"/v1/sessions/{self.live}").json()
        self.answer = stored["messages"][-1]
        assert self.answer["role"] == "assistant" and self.answer["content"].strip()
        assert turn.locator(".a button.cite").count() >= 1, self.answer["content"]
        # Copy the answer: the clipboard holds its Markdown, citations included.
        turn.locator("button.copy-answer").click()
        assert self.page.evaluate("navigator.clipboard.readText()") == self.answer["content"]
        self.shots.take(self.page, "streamed-answer")

    def open_citation(self) -> None:
        """A citation opens its chunk in the side panel with collection, path and section; Esc closes it."""
        page = self.page
        cite = page.locator("article.turn").last.locator(".a button.cite").first
        n = int(cite.get_attribute("data-n") or "0")
        source = next(s for s in self.answer["sources"] if s["n"] == n)
        cite.click()
        expect(page.locator("#panel")).to_be_visible()
        expect(page.locator("#panel-collection")).to_have_text(source["collection"])
        expect(page.locator("#panel-path")).to_have_text(source["path"])
        expect(page.locator("#panel-section")).to_have_text(source["section"] or "—")
        expect(page.locator("#panel-doc .chunk.cited")).to_have_count(1)
        assert source["snippet"][:60] in page.locator("#panel-doc .chunk.cited").inner_text()
        self.shots.take(page, "citation-panel")
        page.keyboard.press("Escape")
        expect(page.locator("#panel")).to_be_hidden()
        assert page.evaluate("document.activeElement.classList.contains('cite')")  # focus back where it was

    def ask_with_filters(self) -> None:
        """A follow-up in the same conversation, searching one collection with a metadata filter through a chosen task
        route: the request carries all three and the session, and every source comes from that collection."""
        page = self.page
        page.click("#filters summary")
        page.check("#collection-list input[value='runbooks']")
        page.click("#add-filter")
        page.fill("#meta-rows .meta-row:last-child .meta-key", "system")
        page.fill("#meta-rows .meta-row:last-child .meta-value", "payment-gateway, kafka")
        expect(page.locator("#filter-count")).to_have_text("2 active")
        page.select_option("#model", "writer")
        with page.expect_request("**/v1/chat/completions") as sent:
            page.fill("#question", FILTERED_QUESTION)
            page.keyboard.press("Enter")
        body = json.loads(sent.value.post_data or "{}")
        assert body["session_id"] == self.live and body["model"] == "writer" and body["stream"] is True
        assert body["collections"] == ["runbooks"] and body["filters"] == {"system": ["payment-gateway", "kafka"]}
        page.wait_for_selector("article.turn:nth-of-type(2) .a[data-done='true']", timeout=ANSWER_TIMEOUT_MS)
        expect(page.locator("article.turn")).to_have_count(2)
        links = (
            page.locator("article.turn").last.locator("ol.sources a").evaluate_all("els => els.map(e => e.getAttribute('href'))")
        )
        assert links and all(link.startswith("/v1/documents/runbooks/") for link in links), links
        stored = self.http.get(f"/v1/sessions/{self.live}").json()["messages"]
        assert [m["role"] for m in stored] == ["user", "assistant", "user", "assistant"]
        # Back to every collection, no filter and the default route for the rest of the walk.
        page.uncheck("#collection-list input[value='runbooks']")
        page.click("#meta-rows .meta-row button")
        page.select_option("#model", "default")
        page.click("#filters summary")
        expect(page.locator("#filter-count")).to_have_text("")

    def switch_to(self, older: str) -> None:
        """The older conversation: its question, answer and sources, and its own citation."""
        page = self.page
        self.open_conversation(older)
        expect(page.locator("article.turn .q")).to_have_text(OLDER_QUESTION)
        assert session_id_of(page) == older
        expect(page.locator("article.turn .a[data-done='true'] button.cite")).to_have_count(1)
        page.locator("article.turn ol.sources a").first.click()
        expect(page.locator("#panel-path")).not_to_be_empty()
        page.click("#panel-close")
        self.shots.take(page, "older-conversation")

    def search(self, older: str) -> None:
        """Full-text search over messages: one hit a conversation, named, with the match marked."""
        page = self.page
        page.fill("#conv-search", "retention")
        hit = page.locator(f"#conversations li.hit[data-id='{older}']")
        expect(hit).to_be_visible()
        expect(hit.locator("mark").first).to_have_text("retention", ignore_case=True)
        self.shots.take(page, "search")
        page.fill("#conv-search", "gateway-core")
        expect(page.locator(f"#conversations li.hit[data-id='{self.live}']")).to_be_visible()
        page.fill("#conv-search", "")
        expect(page.locator(f"#conversations li.conv:not(.hit)[data-id='{older}']")).to_be_visible()

    def give_feedback(self, older: str) -> None:
        """Thumbs down with a comment on the live answer, stored with the message and shown again later."""
        page = self.page
        self.open_conversation(self.live)
        reply = page.locator("article.turn").first
        reply.locator("button.vote.down").click()
        expect(reply.locator("button.vote.down")).to_have_attribute("aria-pressed", "true")
        comment = reply.locator("textarea.comment-text")
        comment.fill(COMMENT)
        comment.press("Enter")  # Enter sends the comment too
        expected = [(self.answer["id"], "down", COMMENT)]
        votes = wait_until(self.votes, expected)
        assert votes == expected
        self.shots.take(page, "feedback")
        self.open_conversation(older)
        self.open_conversation(self.live)
        reply = page.locator("article.turn").first
        expect(reply.locator("button.vote.down")).to_have_attribute("aria-pressed", "true")
        expect(reply.locator("textarea.comment-text")).to_have_value(COMMENT)

    def votes(self) -> list[tuple[int, str, str | None]]:
        """(message, rating, comment) of the live conversation's votes, as the API stores them."""
        data = self.http.get(f"/v1/sessions/{self.live}/feedback").json()["data"]
        return [(v["message_id"], v["rating"], v["comment"]) for v in data]

    def rename_and_export(self) -> None:
        """Rename (Enter saves), then export as JSON and Markdown."""
        page, live = self.page, self.live
        page.click(f"#conversations li[data-id='{live}'] button.rename")
        rename = page.locator("#conversations input.rename-input")
        rename.fill("Gateway rollback")
        rename.press("Enter")
        expect(page.locator(f"#conversations li[data-id='{live}'] .conv-title")).to_have_text("Gateway rollback")
        assert self.http.get(f"/v1/sessions/{live}").json()["title"] == "Gateway rollback"
        self.shots.take(page, "renamed")
        with page.expect_download() as download:
            page.click(f"#conversations li[data-id='{live}'] button.export-json")
        exported = json.loads(Path(download.value.path()).read_text())
        assert download.value.suggested_filename == f"{live}.json" and exported["id"] == live
        assert exported["title"] == "Gateway rollback" and exported["messages"][1]["content"] == self.answer["content"]
        with page.expect_download() as download:
            page.click(f"#conversations li[data-id='{live}'] button.export-md")
        markdown = Path(download.value.path()).read_text()
        assert download.value.suggested_filename == f"{live}.md" and markdown.startswith("# Gateway rollback")

    def delete(self, older: str) -> None:
        """Delete after confirming: gone from the list and from the API."""
        page = self.page
        page.hover(f"#conversations li[data-id='{older}']")  # a conversation's actions show on hover, focus, or when open
        page.click(f"#conversations li[data-id='{older}'] button.delete")
        expect(page.locator("#confirm-delete")).to_be_visible()
        self.shots.take(page, "delete-confirm")
        page.click("#delete-confirm")
        expect(page.locator(f"#conversations li[data-id='{older}']")).to_have_count(0)
        assert self.http.get(f"/v1/sessions/{older}").status_code == 404

    def russian(self) -> None:
        """Every string of the interface switches, and stays after a reload."""
        page = self.page
        page.select_option("#lang", "ru")
        assert page.evaluate("document.documentElement.lang") == "ru"
        expect(page.locator("#send")).to_have_text("Спросить")
        expect(page.locator("#new-chat")).to_have_text("Новый чат")
        expect(page.locator("article.turn").last.locator("button.copy-answer")).to_have_text("Копировать ответ")
        assert (
            page.get_attribute("#question", "placeholder")
            == "Спросите о документации, коде, инцидентах, манифестах или ранбуках…"
        )
        assert "Вы вошли как" in page.inner_text("#who")
        expect(page.locator("article.turn ol.sources li .score").first).to_contain_text("оценка")  # drawn again
        self.shots.take(page, "russian")
        page.reload()
        page.wait_for_selector("#ask:not([hidden])")
        expect(page.locator("#send")).to_have_text("Спросить")

    def narrow(self) -> None:
        """The sidebar is off-screen behind the menu button, nothing scrolls sideways, Esc closes the sidebar."""
        page = self.page
        page.set_viewport_size(NARROW)
        expect(page.locator("#sidebar")).to_be_hidden()
        expect(page.locator("#menu")).to_be_visible()
        assert page.evaluate("document.documentElement.scrollWidth") <= NARROW["width"]
        self.shots.take(page, "narrow")
        page.click("#menu")
        expect(page.locator("#sidebar")).to_be_visible()
        page.wait_for_function("() => document.getElementById('sidebar').getBoundingClientRect().left >= 0")  # slid in
        expect(page.locator("#menu")).to_have_attribute("aria-expanded", "true")
        self.shots.take(page, "narrow-conversations")
        page.keyboard.press("Escape")
        expect(page.locator("#sidebar")).to_be_hidden()
        expect(page.locator("#menu")).to_be_focused()

    def markdown_is_sanitised(self, database_url: str) -> None:
        """A stored answer holding HTML and a javascript: link renders as Markdown without running any of it, code
        blocks keep their text and copy it; the address's fragment reopens the conversation after a reload."""
        page = self.page
        store = SessionStore(database_url)
        try:
            hostile = store.create(self.user, "Sanitiser check", "default")
            store.add(hostile, "user", "Show me HTML")
            store.add(hostile, "assistant", HOSTILE_ANSWER, [])
        finally:
            store.engine.dispose()
        page.set_viewport_size(WIDE)
        page.evaluate("id => history.replaceState(null, '', '#' + id)", hostile)
        page.reload()
        answer = page.locator("article.turn .a[data-done='true']")
        expect(answer.locator("strong")).to_have_text("bold")
        assert page.evaluate("window.kbXss") is None
        assert answer.locator("script, img[onerror], [onclick], iframe").count() == 0
        hrefs = answer.locator("a").evaluate_all("els => els.map(e => e.getAttribute('href') || '')")
        assert not [h for h in hrefs if h.strip().lower().startswith("javascript:")], hrefs
        expect(answer.locator(".code pre")).to_have_text("<b>kept as text</b>")
        answer.locator(".code button.copy-code").click()
        assert page.evaluate("navigator.clipboard.readText()") == "<b>kept as text</b>\n"
        assert self.http.delete(f"/v1/sessions/{hostile}").status_code == 204

    def open_linked_source(self) -> None:
        """A citation link from another client (Open WebUI's sources, api/citations.py) opens that chunk beside a new chat."""
        page, source = self.page, next(s for s in self.answer["sources"] if s["cited"])
        page.goto(chunk_url(self.api, source))
        page.reload()  # a new tab in practice: the page loads with the link's fragment (the sign-in is kept in the tab)
        expect(page.locator("#panel")).to_be_visible()
        expect(page.locator("#panel-collection")).to_have_text(source["collection"])
        expect(page.locator("#panel-path")).to_have_text(source["path"])
        expect(page.locator("#panel-doc section.chunk").first).to_be_visible()
        if source["section"]:
            expect(page.locator("#panel-doc section.chunk.cited h4")).to_have_text(source["section"])
        assert page.evaluate("location.hash") == ""  # the link is consumed: a reload shows a new chat
        page.keyboard.press("Escape")
        expect(page.locator("#panel")).to_be_hidden()
        self.open_conversation(self.live)  # back to the conversation the walk goes on with

    def close(self) -> None:
        self.http.close()
        assert not self.errors, self.errors


def browser_in_chinese_starts_in_chinese(browser: Browser, api: str) -> None:
    page = browser.new_context(viewport=WIDE, locale="zh-CN").new_page()
    page.goto(api + "/")
    expect(page.locator("#signin-button")).to_have_text("登录")
    assert page.evaluate("document.documentElement.lang") == "zh-CN"


def journey(api: str, key: str, user: str, database_url: str, shots: Shots) -> None:
    """The whole walk, in one browser (sessionStorage keeps the sign-in), then a fresh one in Chinese."""
    older = seed_older_conversation(api, key, user, database_url)
    with sync_playwright() as p:
        browser = launch(p)
        context = browser.new_context(viewport=WIDE, locale="en-US")
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=api)
        walk = Walk(context.new_page(), api, key, user, shots)
        walk.sign_in(older)
        walk.shift_enter_is_a_new_line()
        walk.ask()
        walk.open_citation()
        walk.open_linked_source()
        walk.ask_with_filters()
        walk.switch_to(older)
        walk.search(older)
        walk.give_feedback(older)
        walk.rename_and_export()
        walk.delete(older)
        walk.russian()
        walk.narrow()
        walk.markdown_is_sanitised(database_url)
        walk.close()
        browser_in_chinese_starts_in_chinese(browser, api)
        browser.close()


def test_web_client_chat_citations_conversations_feedback_languages_and_narrow_screen(
    platform: RunningPlatform, tmp_path: Path
) -> None:
    shots = Shots(Path(os.environ.get("KB_SCREENSHOT_DIR") or tmp_path / "screenshots"))
    journey(platform.api, platform.key_for("page-user"), "page-user", platform.database_url, shots)
    assert len(shots.taken) == 12 and all(p.stat().st_size > 5_000 for p in shots.taken)


def _table(lang: str, source: str) -> set[str]:
    """The keys of one language's block in i18n.js (`  en: {` … `  },`)."""
    block = re.search(rf"^  {lang}: {{\n(.*?)^  }},", source, re.S | re.M)
    assert block, lang
    return set(re.findall(r'^ {4}"?([\w.]+)"?:', block.group(1), re.M))  # a key is quoted only where it must be


def test_every_interface_string_is_in_all_three_languages_and_used() -> None:
    """No platform needed: the i18n table has the same keys in English, Russian and Chinese; every key the markup or the
    code names is in it; and every key in it is named somewhere (no stale strings)."""
    static = static_dir()
    table = (static / "i18n.js").read_text()
    english = _table("en", table)
    assert len(english) > 50 and _table("ru", table) == english and _table("zh", table) == english
    html = (static / "index.html").read_text()
    code = "\n".join((static / name).read_text() for name in ("app.js", "markdown.js"))
    named = set(re.findall(r'data-i18n(?:-placeholder|-aria-label|-title)?="([^"]+)"', html))
    named |= set(re.findall(r'\bt\("([^"]+)"', code)) | set(re.findall(r'\blabel\("([^"]+)"', code))
    named |= set(re.findall(r'(?:\bi18n\w*: |dataset\.i18n\w* = )"([^"]+)"', code))
    assert named <= english, sorted(named - english)
    literals = set(re.findall(r'"([a-zA-Z.]+)"', html + code))
    assert english <= literals, sorted(english - literals)
