"""A small OpenAI-compatible server on loopback that records every request Open WebUI sends it.

It answers `GET /v1/models` (`default` and `kb-utility`) and `POST /v1/chat/completions` (streamed or not) with a
canned answer that cites `[1]`, carrying one OpenAI-style `url_citation` annotation (in the final stream chunk's
`choices[0].delta.annotations`, or in `message.annotations`), which is the shape the platform's API sends. Open WebUI's
task requests (title, tags, follow-ups, queries) get the JSON their prompts ask for, so its UI behaves as with a real
model. Each request is appended to a JSONL file as {"method", "path", "query", "headers", "body"}, headers with the
exact names and order they arrived in. Stdlib only: it runs in any Python.

    python tests/openwebui/recorder.py --port 8199 --log /tmp/requests.jsonl
"""

from __future__ import annotations

import argparse
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

MODELS = ("default", "kb-utility")
ANSWER = "The payments.events topic keeps events for 7 days [1]."
CITATION_URL = "http://127.0.0.1/recorder/docs/kafka-topics.md"
CITATION_TITLE = "kafka-topics.md"
TASK_ANSWERS = {
    # The prompt's own words (open_webui/config.py DEFAULT_*_PROMPT_TEMPLATE) pick the JSON it asks for.
    "follow_ups": {"follow_ups": ["How do I change the retention?", "Which consumers read payments.events?"]},
    "tags": {"tags": ["Payments", "Kafka"]},
    "title": {"title": "payments.events retention"},
    "queries": {"queries": ["payments.events retention"]},
}


def task_kind(body: dict[str, Any]) -> str | None:
    """Which Open WebUI background task a request is ("### Task:" prompts), by the JSON key its Output section asks for."""
    messages = body.get("messages") or []
    text = messages[-1].get("content") if messages else ""
    if not isinstance(text, str) or not text.lstrip().startswith("### Task:"):
        return None
    instructions = text.split("### Chat History:")[0]  # the history may quote anything
    found = re.search(r'"(follow_ups|tags|title|queries)"\s*:', instructions)
    return found.group(1) if found else "other"


def annotation(text: str) -> dict[str, Any]:
    """One url_citation for the `[1]` in `text`, as OpenAI's chat completions annotate web results."""
    start = text.find("[1]")
    return {
        "type": "url_citation",
        "url_citation": {"url": CITATION_URL, "title": CITATION_TITLE, "start_index": start, "end_index": start + 3},
    }


class Recorder(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], log: Path) -> None:
        super().__init__(address, Handler)
        self.log = log
        self.lock = threading.Lock()

    def record(self, entry: dict[str, Any]) -> None:
        with self.lock, self.log.open("a") as out:
            out.write(json.dumps(entry) + "\n")


class Handler(BaseHTTPRequestHandler):
    server: Recorder
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass  # the JSONL file is the log

    def _record(self, body: Any) -> None:
        url = urlsplit(self.path)
        self.server.record({
            "time": time.time(), "method": self.command, "path": url.path, "query": parse_qs(url.query),
            "headers": dict(self.headers.items()), "body": body,
        })  # fmt: skip

    def _json(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._record(None)
        if urlsplit(self.path).path.rstrip("/") == "/v1/models":
            data = [{"id": name, "object": "model", "created": 0, "owned_by": "kb"} for name in MODELS]
            self._json(200, {"object": "list", "data": data})
        else:
            self._json(404, {"error": {"message": "not found", "type": "not_found"}})

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = raw.decode(errors="replace")
        self._record(body)
        if urlsplit(self.path).path.rstrip("/") != "/v1/chat/completions" or not isinstance(body, dict):
            self._json(404, {"error": {"message": "not found", "type": "not_found"}})
            return
        kind = task_kind(body)
        text = json.dumps(TASK_ANSWERS.get(kind or "", {})) if kind else ANSWER
        annotations = [] if kind else [annotation(text)]
        model = body.get("model", "default")
        if body.get("stream"):
            self._stream(model, text, annotations, bool((body.get("stream_options") or {}).get("include_usage")))
            return
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if annotations:
            message["annotations"] = annotations
        self._json(200, {
            "id": "chatcmpl-recorder", "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
        })  # fmt: skip

    def _stream(self, model: str, text: str, annotations: list[dict[str, Any]], usage: bool) -> None:
        """SSE chunks as OpenAI sends them: role, content pieces, a final chunk with finish_reason, [DONE]."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        base = {"id": "chatcmpl-recorder", "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
        deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
        deltas += [{"content": text[i : i + 12]} for i in range(0, len(text), 12)]
        for delta in deltas:
            self._event({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
            time.sleep(0.05)  # a visibly streamed answer
        final: dict[str, Any] = {"annotations": annotations} if annotations else {}
        self._event({**base, "choices": [{"index": 0, "delta": final, "finish_reason": "stop"}]})
        if usage:
            self._event({**base, "choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20}})
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
        self.close_connection = True

    def _event(self, payload: dict[str, Any]) -> None:
        self.wfile.write(f"data: {json.dumps(payload)}\n\n".encode())
        self.wfile.flush()


def serve(port: int, log: Path) -> Recorder:
    """A started recorder on 127.0.0.1:`port` (0: a free one), serving in a daemon thread."""
    server = Recorder(("127.0.0.1", port), log)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8199)
    parser.add_argument("--log", type=Path, required=True)
    args = parser.parse_args()
    server = Recorder(("127.0.0.1", args.port), args.log)
    print(f"recording to {args.log} on http://127.0.0.1:{server.server_address[1]}/v1", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
