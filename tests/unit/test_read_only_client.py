"""ReadOnlyClient sends GET and nothing else, even when a caller reaches for its underlying httpx client."""

from __future__ import annotations

import asyncio
import socketserver
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest

from connectors.http import ReadOnlyClient, ReadOnlyViolation, UpstreamError


def recording_transport() -> tuple[httpx.MockTransport, list[httpx.Request]]:
    """A transport that answers 200 and remembers every request that reached it."""
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/missing":
            return httpx.Response(404, json={"kind": "Status", "code": 404})
        return httpx.Response(200, json={"ok": True, "path": request.url.path})

    return httpx.MockTransport(answer), seen


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_writes_are_refused_before_they_leave(method: str) -> None:
    transport, seen = recording_transport()

    async def run() -> None:
        client = ReadOnlyClient("http://api.example", token="t0ken", transport=transport)
        try:
            with pytest.raises(ReadOnlyViolation, match=method):
                await client._http.request(method, "/api/v1/namespaces/payments/pods", json={"x": 1})
        finally:
            await client.aclose()

    asyncio.run(run())
    assert seen == []  # nothing reached the server


def test_get_reads_json_and_text_with_the_bearer_token() -> None:
    transport, seen = recording_transport()

    async def run() -> tuple[Any, str]:
        client = ReadOnlyClient("http://api.example/", token="t0ken", transport=transport)
        try:
            return await client.get_json("/healthz", {"a": 1, "skip": None}), await client.get_text("/version")
        finally:
            await client.aclose()

    data, text = asyncio.run(run())
    assert data == {"ok": True, "path": "/healthz"} and '"path":"/version"' in text
    assert [r.method for r in seen] == ["GET", "GET"]
    assert seen[0].headers["Authorization"] == "Bearer t0ken" and seen[0].url.query == b"a=1"


def test_error_status_is_an_upstream_error() -> None:
    transport, _ = recording_transport()

    async def run() -> None:
        client = ReadOnlyClient("http://api.example", transport=transport)
        try:
            await client.get_json("/missing")
        finally:
            await client.aclose()

    with pytest.raises(UpstreamError) as caught:
        asyncio.run(run())
    assert caught.value.status == 404


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def test_unix_url_goes_over_the_socket(tmp_path: Path) -> None:
    """unix:///path → a uds transport: a real HTTP server on a unix socket answers the GET."""
    seen: list[tuple[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append((self.command, self.path))
            body = b'{"ApiVersion": "1.47"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def address_string(self) -> str:  # a unix peer has no host
            return "unix"

        def log_message(self, format: str, *args: Any) -> None:
            pass

    socket_path = tmp_path / "docker.sock"
    server = _UnixHTTPServer(str(socket_path), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    async def run() -> tuple[Any, httpx.AsyncBaseTransport]:
        client = ReadOnlyClient(f"unix://{socket_path}")
        try:
            transport = client._http._transport
            with pytest.raises(ReadOnlyViolation):
                await client._http.post("/containers/create")
            return await client.get_json("/version"), transport
        finally:
            await client.aclose()

    try:
        data, transport = asyncio.run(run())
    finally:
        server.shutdown()
        server.server_close()
    assert data == {"ApiVersion": "1.47"}
    assert isinstance(transport, httpx.AsyncHTTPTransport) and transport._pool._uds == str(socket_path)
    assert seen == [("GET", "/version")]  # the POST never reached the socket
