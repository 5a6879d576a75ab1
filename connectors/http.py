"""The only way a connector talks to a system: an HTTP client that can send GET and nothing else.

Read-only holds in code, not in a prompt: the client has no method that writes, and a request
event hook refuses any method but GET before it leaves the process (so even a caller reaching the
underlying httpx client cannot write). Docker's API is reached over its unix socket the same way.
"""

from __future__ import annotations

from typing import Any

import httpx


class ReadOnlyViolation(RuntimeError):
    """Something tried to send a request that is not a GET."""


class UpstreamError(RuntimeError):
    """The system answered with an error status, or could not be reached."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


async def _refuse_writes(request: httpx.Request) -> None:
    if request.method != "GET":
        raise ReadOnlyViolation(f"read-only connector: {request.method} {request.url.path} refused")


def _base_and_transport(url: str) -> tuple[str, httpx.AsyncBaseTransport | None]:
    """`unix:///var/run/docker.sock` → a unix-socket transport; `tcp://h:p` → http://h:p."""
    if url.startswith("unix://"):
        return "http://docker", httpx.AsyncHTTPTransport(uds=url.removeprefix("unix://"))
    if url.startswith("tcp://"):
        return "http://" + url.removeprefix("tcp://"), None
    return url.rstrip("/"), None


class ReadOnlyClient:
    """GET-only JSON and text reads against one base URL, with an optional bearer token."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 10.0, headers: dict[str, str] | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:  # fmt: skip
        base, default_transport = _base_and_transport(url)
        auth = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(
            base_url=base, headers={**auth, **(headers or {})}, timeout=timeout, transport=transport or default_transport,
            event_hooks={"request": [_refuse_writes]}, follow_redirects=False,
        )  # fmt: skip

    async def get(self, path: str, params: dict[str, Any] | None = None) -> httpx.Response:
        params = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            response = await self._http.get(path, params=params)
        except httpx.TimeoutException as exc:
            raise UpstreamError(f"GET {path}: timed out") from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(f"GET {path}: {type(exc).__name__}: {exc}") from exc
        if response.status_code >= 400:
            raise UpstreamError(f"GET {path}: HTTP {response.status_code} {response.text[:200]}", response.status_code)
        return response

    async def get_json(self, path: str, params: dict[str, Any] | None = None) -> Any:
        return (await self.get(path, params)).json()

    async def get_text(self, path: str, params: dict[str, Any] | None = None) -> str:
        return (await self.get(path, params)).text

    async def get_bytes(self, path: str, params: dict[str, Any] | None = None) -> bytes:
        return (await self.get(path, params)).content

    async def aclose(self) -> None:
        await self._http.aclose()
