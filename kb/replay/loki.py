"""Loki's query API over recorded log streams (`examples/live_systems/loki/streams.json`).

The file is a list of `{"stream": {labels}, "values": [["<ns epoch>", "<line>"], ...]}`, the shape
Loki's push and query APIs use. Answered, in Loki's documented shapes:

- `GET /loki/api/v1/query_range` (`query`, `start`, `end`, `since`, `limit`, `direction`): the stream
  selector's label matchers (`=`, `!=`, `=~`, `!~`, regexes anchored as in Loki), then the line filters
  `|=`, `!=`, `|~`, `!~` in sequence; every other pipeline stage (`| logfmt`, label filters,
  `line_format`, ...) is parsed over and ignored. Log queries only (a metric query is a 400).
- `GET /loki/api/v1/labels`, `GET /loki/api/v1/label/<name>/values`, `GET /ready`.
- Bad LogQL: HTTP 400 with Loki's plain-text error (`parse error at line 1, col 12: syntax error: ...`).

Time: the recording's "now" is `RECORDED_NOW` (2026-12-01 09:00 UTC; its newest line is 24 s older),
but `kb up` runs on any day. So the replay re-times the recording relative to each request's `end`
(default: the real clock): every line moves by the same offset, `end - RECORDED_NOW`, so relative order
and spacing are kept, then `start <= t < end` selects as Loki does. A request ending at RECORDED_NOW
(the connector's `loki.recorded_now`) gets the recorded timestamps unchanged, matching the `ts=` the
applications wrote in their lines and the other recorded systems; "the last hour" on any other day
still shows the last hour of the story.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Literal

from kb.replay.server import Reply

NS = 1_000_000_000
RECORDED_NOW = 1_796_115_600 * NS  # 2026-12-01T09:00:00Z, "now" in examples/live_systems/README.md
DEFAULT_LIMIT = 100
MAX_ENTRIES = 5000  # Loki's default limits_config.max_entries_limit_per_query

Labels = dict[str, str]


class LogQLError(ValueError):
    """A query Loki would answer with 400; the message is Loki's plain-text error."""


@dataclass(frozen=True)
class Matcher:
    label: str
    op: Literal["=", "!=", "=~", "!~"]
    value: str

    def matches(self, labels: Labels) -> bool:
        actual = labels.get(self.label, "")  # an absent label matches as the empty string, as in Loki
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        found = re.fullmatch(self.value, actual, re.S) is not None
        return found if self.op == "=~" else not found


@dataclass(frozen=True)
class LineFilter:
    op: Literal["|=", "!=", "|~", "!~"]
    value: str

    def keeps(self, line: str) -> bool:
        if self.op == "|=":
            return self.value in line
        if self.op == "!=":
            return self.value not in line
        found = re.search(self.value, line) is not None
        return found if self.op == "|~" else not found


@dataclass(frozen=True)
class LogQuery:
    matchers: tuple[Matcher, ...]
    filters: tuple[LineFilter, ...]


# --- LogQL lexing and parsing (the subset above) ------------------------------------------------

_TOKEN = re.compile(
    r"""(?P<ws>\s+)|(?P<comment>\#[^\n]*)|(?P<string>"(?:[^"\\\n]|\\.)*"|`[^`]*`)|(?P<op>\|=|\|~|!=|!~|=~|=|\|)"""
    r"""|(?P<ident>[A-Za-z_][A-Za-z0-9_]*)|(?P<punct>[{},()\[\]])|(?P<other>.)"""
)


@dataclass(frozen=True)
class Token:
    kind: str
    text: str
    line: int
    col: int


def _tokens(query: str) -> list[Token]:
    tokens: list[Token] = []
    for m in _TOKEN.finditer(query):
        kind = m.lastgroup or "other"
        if kind in ("ws", "comment"):
            continue
        before = query[: m.start()]
        line, col = before.count("\n") + 1, m.start() - (before.rfind("\n") + 1) + 1
        tokens.append(Token(kind, m.group(), line, col))
    return tokens


def _unquote(token: Token) -> str:
    if token.text.startswith("`"):
        return token.text[1:-1]
    try:
        return str(json.loads(token.text))
    except json.JSONDecodeError as exc:
        raise LogQLError(f"parse error at line {token.line}, col {token.col}: invalid char escape") from exc


def _unexpected(token: Token | None, query: str) -> LogQLError:
    if token is None:
        lines = query.split("\n")
        return LogQLError(f"parse error at line {len(lines)}, col {len(lines[-1]) + 1}: syntax error: unexpected $end")
    what = {"string": "STRING", "ident": "IDENTIFIER"}.get(token.kind, token.text)
    return LogQLError(f"parse error at line {token.line}, col {token.col}: syntax error: unexpected {what}")


def parse_log_query(query: str) -> LogQuery:
    """The selector's matchers and the line filters of a log query; other stages are skipped."""
    tokens = _tokens(query)
    pos = 0

    def peek() -> Token | None:
        return tokens[pos] if pos < len(tokens) else None

    def take(kind: str, *texts: str) -> Token:
        nonlocal pos
        token = peek()
        if token is None or token.kind != kind or (texts and token.text not in texts):
            raise _unexpected(token, query)
        pos += 1
        return token

    take("punct", "{")
    matchers: list[Matcher] = []
    while True:
        label = take("ident")
        op = take("op", "=", "!=", "=~", "!~")
        value = _unquote(take("string"))
        if op.text in ("=~", "!~"):
            _check_regex(value)
        matchers.append(Matcher(label.text, op.text, value))  # type: ignore[arg-type]
        if take("punct", ",", "}").text == "}":
            break
    filters: list[LineFilter] = []
    while (token := peek()) is not None:
        if token.kind == "op" and token.text in ("|=", "!=", "|~", "!~"):
            pos += 1
            value = _unquote(take("string"))
            if token.text in ("|~", "!~"):
                _check_regex(value)
            filters.append(LineFilter(token.text, value))  # type: ignore[arg-type]
        elif token.kind == "op" and token.text == "|":
            pos += 1
            take("ident")  # the stage's name or a label filter's label: ignored with the rest of the stage
            while (nxt := peek()) is not None and not (nxt.kind == "op" and nxt.text in ("|", "|=", "|~")):
                pos += 1
        else:
            raise _unexpected(token, query)
    _check_selectable(matchers)
    return LogQuery(tuple(matchers), tuple(filters))


def _check_regex(pattern: str) -> None:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise LogQLError(f"parse error : error parsing regexp: {exc}: `{pattern}`") from exc


def _check_selectable(matchers: list[Matcher]) -> None:
    """Loki refuses selectors that would match every stream."""
    if not any(m.op in ("=", "=~") and not m.matches({}) for m in matchers):
        raise LogQLError(
            "parse error : queries require at least one regexp or equality matcher that does not have an "
            'empty-compatible value. For instance, app=~".*" does not meet this requirement, but app=~".+" will'
        )


# --- Time ----------------------------------------------------------------------------------------

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d|w|y)")
_UNIT_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": NS, "m": 60 * NS, "h": 3600 * NS,
            "d": 86400 * NS, "w": 7 * 86400 * NS, "y": 365 * 86400 * NS}  # fmt: skip


def parse_time(value: str) -> int:
    """A Loki timestamp parameter as nanoseconds: integer epoch (ns), float epoch (s) or RFC3339."""
    value = value.strip()
    if re.fullmatch(r"\d+", value):
        return int(value)
    if re.fullmatch(r"\d+\.\d*", value):
        return int(float(value) * NS)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise LogQLError(f'invalid parameter "start/end": cannot parse "{value}" to a valid timestamp') from exc
    return int(parsed.timestamp()) * NS + parsed.microsecond * 1000


def parse_duration(value: str) -> int:
    parts = _DURATION.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        raise LogQLError(f'invalid parameter "since": not a valid duration string: "{value}"')
    return sum(int(float(n) * _UNIT_NS[u]) for n, u in parts)


# --- The recording -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    labels: tuple[tuple[str, str], ...]
    ts: int
    line: str


@lru_cache(maxsize=4)
def _load(path: Path, mtime: float) -> tuple[Entry, ...]:
    streams = json.loads(path.read_text())
    return tuple(Entry(tuple(sorted(s["stream"].items())), int(ts), line) for s in streams for ts, line, *_ in s["values"])


def recording(root: Path) -> tuple[Entry, ...]:
    """Every recorded entry (read again when the file changes)."""
    path = root / "streams.json"
    return _load(path, path.stat().st_mtime)


# --- Endpoints -----------------------------------------------------------------------------------


def _one(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values else None


def _window(query: dict[str, list[str]]) -> tuple[int, int]:
    end = parse_time(e) if (e := _one(query, "end")) else time.time_ns()
    if s := _one(query, "start"):
        return parse_time(s), end
    since = parse_duration(d) if (d := _one(query, "since")) else 3600 * NS
    return end - since, end


def query_range(root: Path, query: dict[str, list[str]]) -> Reply:
    logql = _one(query, "query")
    if not logql:
        return Reply.text("parse error : query is empty", 400)
    try:
        parsed = parse_log_query(logql)
        start, end = _window(query)
        limit = int(_one(query, "limit") or DEFAULT_LIMIT)
    except LogQLError as exc:
        return Reply.text(str(exc), 400)
    except ValueError:
        return Reply.text(f'invalid parameter "limit": cannot parse "{_one(query, "limit")}" to a valid int', 400)
    direction = (_one(query, "direction") or "backward").lower()
    if direction not in ("backward", "forward"):
        return Reply.text(f'invalid parameter "direction": invalid direction "{direction}"', 400)
    if limit <= 0:
        return Reply.text("limit must be a positive value", 400)
    if limit > MAX_ENTRIES:
        return Reply.text(f"max entries limit per query exceeded, limit > max_entries_limit ({limit} > {MAX_ENTRIES})", 400)

    shift = end - RECORDED_NOW
    scanned = 0
    hits: list[Entry] = []
    for entry in recording(root):
        ts = entry.ts + shift
        if not start <= ts < end:
            continue
        labels = dict(entry.labels)
        if not all(m.matches(labels) for m in parsed.matchers):
            continue
        scanned += 1
        if all(f.keeps(entry.line) for f in parsed.filters):
            hits.append(Entry(entry.labels, ts, entry.line))
    backward = direction == "backward"
    hits.sort(key=lambda e: e.ts, reverse=backward)
    hits = hits[:limit]
    data = {"resultType": "streams", "result": _streams(hits), "stats": _stats(scanned)}
    return Reply.json({"status": "success", "data": data})


def _streams(hits: list[Entry]) -> list[dict[str, object]]:
    """Entries grouped by stream, each stream's values in the order of `hits` (the requested direction)."""
    grouped: dict[tuple[tuple[str, str], ...], list[list[str]]] = {}
    for e in hits:
        grouped.setdefault(e.labels, []).append([str(e.ts), e.line])
    return [{"stream": dict(labels), "values": values} for labels, values in grouped.items()]


def _stats(lines: int) -> dict[str, object]:
    return {
        "summary": {"bytesProcessedPerSecond": 0, "linesProcessedPerSecond": 0, "totalBytesProcessed": 0,
                    "totalLinesProcessed": lines, "execTime": 0.001, "queueTime": 0},
    }  # fmt: skip


def labels(root: Path) -> Reply:
    names = sorted({name for e in recording(root) for name, _ in e.labels})
    return Reply.json({"status": "success", "data": names})


def label_values(root: Path, name: str) -> Reply:
    values = sorted({value for e in recording(root) for label, value in e.labels if label == name})
    return Reply.json({"status": "success", "data": values})


def route(root: Path, path: str, query: dict[str, list[str]]) -> Reply:
    if path == "/ready":
        return Reply.text("ready\n")
    if path == "/loki/api/v1/query_range":
        return query_range(root, query)
    if path == "/loki/api/v1/labels":
        return labels(root)
    if m := re.fullmatch(r"/loki/api/v1/label/([A-Za-z_][A-Za-z0-9_]*)/values", path):
        return label_values(root, m.group(1))
    return Reply.text("404 page not found\n", 404)
