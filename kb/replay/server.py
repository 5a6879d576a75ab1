"""One threaded HTTP server per replayed system; `python -m kb.replay.server SYSTEM ROOT PORT`."""

from __future__ import annotations

import importlib
import json
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    content_type: str = "application/json"

    @classmethod
    def json(cls, data: Any, status: int = 200) -> Reply:
        return cls(status, json.dumps(data).encode(), "application/json")

    @classmethod
    def text(cls, text: str, status: int = 200) -> Reply:
        return cls(status, text.encode(), "text/plain; charset=utf-8")

    @classmethod
    def not_found(cls, what: str) -> Reply:
        return cls.json({"kind": "Status", "status": "Failure", "message": f"{what} not found", "code": 404}, 404)


Route = Callable[[Path, str, dict[str, list[str]]], Reply]


def load_route(system: str) -> Route:
    return importlib.import_module(f"kb.replay.{system}").route  # type: ignore[no-any-return]


class ReplayServer:
    """Serves `route` on host:port in a background thread; `requests` records (method, path) seen."""

    def __init__(self, system: str, root: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        route, self.requests = load_route(system), []
        requests: list[tuple[str, str]] = self.requests

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                parts = urlsplit(self.path)
                requests.append((self.command, self.path))
                if self.command != "GET":
                    reply = Reply.json({"message": f"{self.command} is not allowed: read-only"}, 405)
                else:
                    try:
                        reply = route(root, parts.path, parse_qs(parts.query))
                    except Exception as exc:  # a replay bug shows as a 500 with the reason, like a real server
                        reply = Reply.json({"message": f"replay error: {exc}"}, 500)
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> ReplayServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> ReplayServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def main() -> None:
    system, root, port = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    server = ReplayServer(system, root, port=port)
    server._server.serve_forever()


if __name__ == "__main__":
    main()
