"""The real Open WebUI 0.12.4 in front of the running platform (`kb up`, the 0.5B model), driven in headless Chromium.

Open WebUI connects as a gateway should: a gateway key (`kb keys create --gateway`), forwarded users as one signed JWT
(FORWARD_USER_INFO_HEADER_JWT_SECRET = the platform's KB_AUTH_FORWARDED_JWT_SECRET), its admin mapped to a role in
roles.yaml `users:`, `kb-utility` as its task model. The admin signs in, picks `default`, asks about the sample
knowledge base, waits for the streamed answer, clicks its inline citation and checks the source's link points at the
platform; the screen is saved as KB_SCREENSHOT_DIR/openwebui.png (default docs/screenshots/openwebui.png). Timings
are printed (-s).

Opt-in (marker `openwebui`), about ten minutes on two cores; skipped without tests/openwebui/install.sh's
.venv-openwebui.

    nice .venv/bin/pytest tests/openwebui/test_openwebui_live.py -m openwebui -s
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from playwright.sync_api import Page, expect, sync_playwright

from kb.settings import PROJECT_ROOT
from tests.e2e.conftest import RunningPlatform, platform  # noqa: F401 - `kb up`, as tests/e2e start it
from tests.openwebui.record import (
    ADMIN_EMAIL,
    OPENWEBUI_VENV,
    answers,
    ask,
    browser_page,
    pick_model,
    running_openwebui,
    sign_in,
    wait_answered,
)

pytestmark = [
    pytest.mark.openwebui,
    pytest.mark.skipif(
        not (OPENWEBUI_VENV / "bin" / "open-webui").exists(),
        reason=f"Open WebUI is not installed ({OPENWEBUI_VENV} is missing): run tests/openwebui/install.sh",
    ),
]

QUESTION = "What is the retention of the payments.events topic?"
FORWARD_JWT_SECRET = "openwebui-live-test-forward-jwt-secret-0123456789"  # ≥ 32 bytes, as the platform requires
ANSWER_TIMEOUT_MS = 900_000  # two shared cores: the title task and the answer share the 0.5B model


@pytest.fixture(scope="session")
def kb(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> RunningPlatform:
    """`kb up` (tests/e2e/conftest.py's platform) with a forwarded-user JWT secret, which Open WebUI then shares, and a
    roles file that maps Open WebUI's admin: set in os.environ only while the platform fixture copies it (where that
    fixture names its own roles file, as it does for test_openwebui_shapes.py, its file must map the admin)."""
    roles = yaml.safe_load((PROJECT_ROOT / "roles.yaml").read_text())
    roles.setdefault("users", {})[ADMIN_EMAIL] = ["devops"]
    path = tmp_path_factory.mktemp("openwebui-roles") / "roles.yaml"
    path.write_text(yaml.safe_dump(roles))
    wanted = {"KB_AUTH_ROLES_FILE": str(path), "KB_AUTH_FORWARDED_JWT_SECRET": FORWARD_JWT_SECRET}
    saved = {name: os.environ.get(name) for name in wanted}
    os.environ.update(wanted)
    try:
        running: RunningPlatform = request.getfixturevalue("platform")
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    used = Path(running.env.get("KB_AUTH_ROLES_FILE") or PROJECT_ROOT / "roles.yaml")
    users = {name.lower() for name in (yaml.safe_load(used.read_text()).get("users") or {})}
    assert ADMIN_EMAIL in users, f"{used} maps no role to Open WebUI's admin {ADMIN_EMAIL}: as a forwarded user it reads nothing"
    return running


def gateway_key(kb: RunningPlatform, user: str = "openwebui") -> str:
    """A gateway key for Open WebUI, made as an operator makes it."""
    command = [
        str(Path(sys.executable).parent / "kb"),
        "keys",
        "create",
        "--user",
        user,
        "--role",
        "devops",
        "--gateway",
        "--json",
    ]
    out = subprocess.run(command, env=kb.env, capture_output=True, text=True, check=True, timeout=120).stdout
    return str(json.loads(out.strip().splitlines()[-1])["key"])


def screenshot_path() -> Path:
    folder = Path(os.environ.get("KB_SCREENSHOT_DIR") or PROJECT_ROOT / "docs" / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder / "openwebui.png"


def open_citation(page: Page, answer: Any) -> tuple[Any, str]:
    """Click the answer's first inline citation (Open WebUI draws `[n]` as a chip named after its source); where the
    answer cites nothing inline, the first entry of its sources list. The dialog that opens, and which was clicked."""
    inline = answer.locator("button[aria-label^='View source']")
    if inline.count():
        inline.first.click()
        clicked = "inline citation"
    else:
        text = answer.inner_text()
        # A literal [n] left in the text means Open WebUI had no source for it: the annotations did not arrive.
        assert not re.search(r"\[\d+\]", text), f"the answer cites [n] but Open WebUI shows no citation for it: {text!r}"
        page.locator("#messages-container [aria-label^='Toggle'][aria-label*='source']").last.click()
        page.locator("#messages-container button[aria-label^='View source: 1']").last.click()
        clicked = "sources list (the answer has no inline [n])"
    dialog = page.get_by_role("dialog").last
    expect(dialog).to_be_visible()
    return dialog, clicked


def test_openwebui_answers_with_a_citation_to_the_platform(kb: RunningPlatform, tmp_path: Path) -> None:
    timings: dict[str, float] = {}
    try:
        walk(kb, tmp_path, timings)
    finally:
        print("\ntimings: " + ", ".join(f"{name} {seconds:.1f}s" for name, seconds in timings.items()))


def walk(kb: RunningPlatform, tmp_path: Path, timings: dict[str, float]) -> None:
    """Gateway key, Open WebUI, sign in, ask, wait for the streamed answer, open its citation, follow the link."""
    step = time.monotonic()
    key = gateway_key(kb)
    timings["gateway key"] = time.monotonic() - step
    secret = kb.env.get("KB_AUTH_FORWARDED_JWT_SECRET") or None  # none: Open WebUI forwards plain user headers
    print(f"\nforwarded user: {'signed JWT' if secret else 'plain X-OpenWebUI-User-* headers'}")
    with running_openwebui(tmp_path / "openwebui-data", f"{kb.api}/v1", key, jwt_secret=secret) as webui:
        timings["Open WebUI start"] = webui.started_s
        with sync_playwright() as p, browser_page(p, tmp_path, "openwebui") as page:  # failed-openwebui.png on failure
            step = time.monotonic()
            sign_in(page, webui.url)
            pick_model(page, "default")  # listed by Open WebUI from the platform's GET /v1/models
            timings["sign in, pick model"] = time.monotonic() - step
            step = time.monotonic()
            ask(page, QUESTION)
            wait_answered(page, 1, timeout_ms=ANSWER_TIMEOUT_MS)
            timings["streamed answer"] = time.monotonic() - step
            answer = answers(page).last
            text = answer.inner_text()
            print(f"\nOpen WebUI shows the answer: {text[:400]!r}")
            assert text.strip(), "empty answer"
            step = time.monotonic()
            dialog, clicked = open_citation(page, answer)
            links = dialog.locator(f"a[href^='{kb.api}/']")
            expect(links.first).to_be_visible()
            url = links.first.get_attribute("href") or ""
            timings["citation"] = time.monotonic() - step
            shot = screenshot_path()
            page.screenshot(path=str(shot))
            print(f"citation ({clicked}): {url}\nscreenshot: {shot}")
    # The link is the platform's own page for the source (its web client, the cited chunk named in the fragment).
    opened = httpx.get(url, headers={"Authorization": f"Bearer {kb.admin_key}"}, timeout=30, follow_redirects=True)
    assert opened.status_code == 200, (url, opened.status_code, opened.text[:300])
