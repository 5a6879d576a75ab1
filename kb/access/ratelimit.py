"""Per-user rate limits whose state lives in PostgreSQL, so that several API replicas share them.

A sliding window over two fixed one-minute counters (the approach Cloudflare describes): the count
of the previous minute weighs by how much of it still lies in the last 60 s. Each request is one
atomic upsert, so concurrent requests of one user neither race nor block each other. (pyrate-limiter's
PostgreSQL bucket was tried first: it takes a table lock with NOWAIT and refuses a request that meets
a lock, so a user's parallel requests were refused as if over the limit, and it needs a table per user.)"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.engine import Engine

WINDOW = timedelta(minutes=1)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    retry_after_s: int  # 0 when allowed


class RateLimiter:
    """`hit(key, limit)` serves or refuses one request of `key` under `limit` a minute; `count` and `peek`
    keep and read a tally without a decision (failed sign-ins are counted, and checked before the next)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def hit(self, key: str, limit: int, now: datetime | None = None) -> Decision:
        now = now or datetime.now(UTC)
        before, count = self._tally(key, now, increment=1)
        decision = _decide(before, count - 1, limit, now)
        if not decision.allowed:  # a refused request does not count: the limit is on requests served
            self._tally(key, now, increment=-1)
        return decision

    def peek(self, key: str, limit: int, now: datetime | None = None) -> Decision:
        """Whether one more request of `key` would be served, without counting it."""
        now = now or datetime.now(UTC)
        return _decide(*self._tally(key, now, increment=0), limit, now)

    def count(self, key: str, now: datetime | None = None) -> None:
        self._tally(key, now or datetime.now(UTC), increment=1)

    def _tally(self, key: str, now: datetime, increment: int) -> tuple[int, int]:
        """(previous minute's count, this minute's count after adding `increment`)."""
        current = _window(now)
        with self.engine.begin() as conn:
            if increment:
                count = conn.execute(
                    text("""INSERT INTO kb_rate_limits (key, window_start, count) VALUES (:key, :window, :n)
                            ON CONFLICT (key, window_start) DO UPDATE SET count = kb_rate_limits.count + :n RETURNING count"""),
                    {"key": key, "window": current, "n": increment},
                ).scalar_one()
                conn.execute(text("DELETE FROM kb_rate_limits WHERE key = :key AND window_start < :window"),
                             {"key": key, "window": current - WINDOW})  # fmt: skip
            recent = text("SELECT window_start, count FROM kb_rate_limits WHERE key = :key AND window_start >= :window")
            rows = dict(conn.execute(recent, {"key": key, "window": current - WINDOW}).all())
        before = int(rows.get(current - WINDOW, 0))
        return before, int(count if increment else rows.get(current, 0))


def _window(now: datetime) -> datetime:
    return now.replace(second=0, microsecond=0)


def _decide(before: int, served: int, limit: int, now: datetime) -> Decision:
    """Whether a request fits when `before` and `served` requests were served in the previous and this minute."""
    elapsed = (now - _window(now)) / WINDOW
    estimate = before * (1 - elapsed) + served + 1
    if estimate <= limit:
        return Decision(True, limit, max(0, math.floor(limit - estimate)), 0)
    return Decision(False, limit, 0, retry_after_s(before, served, limit, elapsed))


def retry_after_s(before: int, count: int, limit: int, elapsed: float) -> int:
    """Seconds until one more request fits: `before` and `count` are the previous and current minutes'
    served requests, `elapsed` the share of the current minute gone; at least 1."""
    minute = WINDOW.total_seconds()
    if before and count + 1 <= limit:
        # The previous minute's weight shrinks as time passes: before·(1 - t) + count + 1 ≤ limit.
        t = 1 - (limit - count - 1) / before
        return max(1, math.ceil((t - elapsed) * minute))
    # Only in the next minute, once this minute's weight has shrunk enough: count·(1 - t) + 1 ≤ limit.
    t = max(0.0, 1 - (limit - 1) / count) if count else 0.0
    return max(1, math.ceil((1 - elapsed + t) * minute))
