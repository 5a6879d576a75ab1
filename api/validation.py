"""Input every route gets checked at the door: NUL bytes, integer ranges, body size and JSON depth.

PostgreSQL refuses a NUL character in text, text with an unpaired UTF-16 surrogate (no UTF-8 for it) and
integers past bigint; each would surface as a 500 deep inside whichever route passed it on. One pure ASGI
middleware answers them first with a 4xx and a message, for every route (the MCP endpoint included), so a
new route is covered without anyone remembering to."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote

from fastapi.responses import JSONResponse
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

BIGINT_MIN, BIGINT_MAX = -(2**63), 2**63 - 1
MAX_JSON_DEPTH = 64  # well past what OpenAI chat requests with tool schemas nest
# What pydantic reads as an integer from a query or path value: ASCII digits, '_' between them, '.0', spaces around.
_INTEGER = re.compile(r"[+-]?[0-9][0-9_]*(?:\.0*)?", re.ASCII)
_SURROGATE = re.compile("[\ud800-\udfff]")


def error_response(status: int, message: str, kind: str) -> JSONResponse:
    """OpenAI's error shape plus FastAPI's `detail`, so SDKs and plain clients both surface the message."""
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}, "detail": message}, status_code=status)


@dataclass(frozen=True)
class Refusal:
    status: int
    message: str
    kind: str = "invalid_request_error"


def text_problem(text: str) -> str | None:
    """Why PostgreSQL would refuse this text, or None."""
    if "\x00" in text:
        return "contains a NUL byte"
    if _SURROGATE.search(text):
        return "contains an unpaired UTF-16 surrogate"
    return None


def _shown(name: str) -> str:
    return repr(name[:40].replace("\x00", "\\0"))


def url_refusal(scope: Scope) -> Refusal | None:
    """A NUL byte (raw or %00) in the path, the query string or a header value."""
    if "\x00" in scope["path"] or "\x00" in unquote((scope.get("raw_path") or b"").decode("latin-1")):
        return Refusal(400, "the path contains a NUL byte")
    for name, value in parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True):
        for part, problem in (("name", text_problem(name)), ("value", text_problem(value))):
            if problem:
                return Refusal(400, f"query parameter {_shown(name)}: its {part} {problem}")
    for name, value in scope.get("headers", []):
        if b"\x00" in value or b"\x00" in name:
            return Refusal(400, f"header {_shown(name.decode('latin-1'))} contains a NUL byte")
    return None


def json_problem(body: bytes) -> str | None:
    """Why a JSON body would fail deeper down (NUL or surrogate in a string or key, nesting), or None.
    A body that is not JSON passes: the route answers for its own format."""
    try:
        value = json.loads(body)
    except RecursionError:
        return f"the JSON body is nested deeper than {MAX_JSON_DEPTH} levels"
    except ValueError:
        return None
    stack: list[tuple[Any, tuple[str, ...]]] = [(value, ())]
    while stack:  # iterative: a deep document must not exhaust the stack here either
        item, where = stack.pop()
        if len(where) > MAX_JSON_DEPTH:
            return f"the JSON body is nested deeper than {MAX_JSON_DEPTH} levels"
        if isinstance(item, str):
            if problem := text_problem(item):
                return f"the JSON body at {_location(where)} {problem}"
        elif isinstance(item, dict):
            for key, child in item.items():
                if problem := text_problem(key):
                    return f"a JSON key at {_location(where)} {problem}"
                stack.append((child, (*where, key)))
        elif isinstance(item, list):
            stack.extend((child, (*where, str(i))) for i, child in enumerate(item))
    return None


def _location(where: tuple[str, ...]) -> str:
    return ".".join(where)[:100] or "the top level"


@dataclass(frozen=True)
class IntegerParameters:
    """The integer query and path parameters of one operation, with the range each accepts."""

    method: str
    path: re.Pattern[str]
    query: dict[str, tuple[int, int]]
    in_path: dict[str, tuple[int, int]]

    @classmethod
    def from_openapi(cls, schema: dict[str, Any]) -> list[IntegerParameters]:
        """Every operation that declares integer parameters; the range is the declared one within bigint."""
        found = []
        for template, item in schema.get("paths", {}).items():
            for method, operation in item.items():
                bounds: dict[str, dict[str, tuple[int, int]]] = {"query": {}, "path": {}}
                for parameter in operation.get("parameters", []) if isinstance(operation, dict) else []:
                    limits = _integer_range(parameter.get("schema", {}))
                    if limits and parameter.get("in") in bounds:
                        bounds[parameter["in"]][parameter["name"]] = limits
                if bounds["query"] or bounds["path"]:
                    found.append(cls(method.upper(), compile_path(template)[0], bounds["query"], bounds["path"]))
        return found

    def refusal(self, scope: Scope) -> Refusal | None:
        if scope["method"] != self.method or not (match := self.path.match(scope["path"])):
            return None
        values = [("path", name, match.group(name), self.in_path[name]) for name in self.in_path]
        values += [("query", name, value, self.query[name])
                   for name, value in parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
                   if name in self.query]  # fmt: skip
        for where, name, value, (low, high) in values:
            if _out_of_range(value, low, high):
                return Refusal(422, f"invalid request: {where}.{name}: must be an integer from {low} to {high}")
        return None


def _integer_range(schema: dict[str, Any]) -> tuple[int, int] | None:
    branch = next((s for s in [schema, *schema.get("anyOf", [])] if s.get("type") == "integer"), None)
    if branch is None:
        return None
    low, high = BIGINT_MIN, BIGINT_MAX
    if "minimum" in branch:
        low = max(low, int(branch["minimum"]))
    if "exclusiveMinimum" in branch:
        low = max(low, int(branch["exclusiveMinimum"]) + 1)
    if "maximum" in branch:
        high = min(high, int(branch["maximum"]))
    if "exclusiveMaximum" in branch:
        high = min(high, int(branch["exclusiveMaximum"]) - 1)
    return low, high


def _out_of_range(value: str, low: int, high: int) -> bool:
    """True for an integer outside [low, high]; anything else is FastAPI's to refuse (422)."""
    text = value.strip(" \t\n\r\f\v")
    if not _INTEGER.fullmatch(text):
        return False
    digits = text.partition(".")[0].replace("_", "")
    # Past 19 digits it is outside bigint, and int() of thousands of digits is itself refused by Python.
    return len(digits.lstrip("+-").lstrip("0")) > 19 or not low <= int(digits) <= high


class InputGuard:
    """Pure ASGI middleware: refuses, with a 4xx and a message, what no route should have to handle.

    - a NUL byte in the path, the query string or a header value (400);
    - an integer query/path parameter outside its declared range or PostgreSQL's bigint (422);
    - a body over `max_body_bytes()`, by Content-Length or as it streams in chunked (413);
    - a JSON body with a NUL byte or an unpaired surrogate in any string or key, or nested too deep (400).
    """

    def __init__(self, app: ASGIApp, max_body_bytes: Callable[[], int]) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self._integers: list[IntegerParameters] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = url_refusal(scope) or self._integer_refusal(scope) or self._length_refusal(scope)
        if refusal is None:
            body = await self._read_body(receive)
            if body is None:  # the client went away before the body ended: nobody to answer
                return
            refusal = self._too_large() if len(body) > self.max_body_bytes() else self._json_refusal(body)
            if refusal is None:
                await self.app(scope, _replay(body, receive), send)
                return
        await error_response(refusal.status, refusal.message, refusal.kind)(scope, receive, send)

    @staticmethod
    def _json_refusal(body: bytes) -> Refusal | None:
        problem = json_problem(body)
        return Refusal(400, problem) if problem else None

    def _integer_refusal(self, scope: Scope) -> Refusal | None:
        if self._integers is None:
            openapi = getattr(scope.get("app"), "openapi", None)
            self._integers = IntegerParameters.from_openapi(openapi()) if callable(openapi) else []
        return next((r for p in self._integers if (r := p.refusal(scope))), None)

    def _length_refusal(self, scope: Scope) -> Refusal | None:
        length = next((v for k, v in scope.get("headers", []) if k == b"content-length"), None)
        if length is None:
            return None
        if not length.isdigit():
            return Refusal(400, "the Content-Length header is not a byte count")
        return self._too_large() if len(length) > 18 or int(length) > self.max_body_bytes() else None

    def _too_large(self) -> Refusal:
        return Refusal(413, f"request body over {self.max_body_bytes()} bytes", "request_too_large")

    async def _read_body(self, receive: Receive) -> bytes | None:
        """The whole body, or as much as passes the limit by one chunk; None when the client disconnected."""
        chunks: list[bytes] = []
        size, limit = 0, self.max_body_bytes()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            if size > limit or not message.get("more_body", False):
                return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands the app the body already read, then the client's own messages (disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
