"""A cache of query embeddings, retrievals and whole answers that API replicas share (issue 16, item 6).

The same alert fires for everyone on call, so the same question arrives many times in minutes. A cached
retrieval or answer is only ever served for exactly the request that built it:

- the key holds the normalised question, the collections the caller may read, the caller's groups (which
  decide the documents they may see, assets/index.py), the filters and, for answers, the model and prompt
  settings; one user never gets an answer built from documents they may not see;
- the key also holds each of those collections' index version (`VectorIndex.versions`), bumped in the same
  transaction as every write and drop: a reindex, an ACL change (which rewrites the chunks' groups) or a
  deleted document makes every older entry unreachable at once, on every replica;
- values are JSON, never pickle: a shared Redis is data, not code this process would run.

Redis when `KB_CACHE_REDIS_URL` is set (shared by the replicas), an in-process TTL cache otherwise. A cache
that is down costs speed, never an answer: a failing Redis call counts as a miss and is logged once a minute.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import unicodedata
from collections import Counter as CounterOf
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any, Protocol

import numpy as np
from cachetools import TTLCache
from numpy.typing import NDArray
from prometheus_client import Counter

log = logging.getLogger(__name__)

# Bumped when what a key means or a value's shape changes: entries written by older code are never read.
SCHEMA = "1"
CACHE_LOOKUPS = Counter("kb_cache_lookups_total", "Cache lookups by kind and outcome.", ["kind", "outcome"])


class CacheStore(Protocol):
    def get(self, key: str) -> bytes | None: ...
    def set(self, key: str, value: bytes, ttl_s: int) -> None: ...


class LocalStore:
    """In-process: one replica's own entries, dropped after `ttl_s` or when `max_entries` push them out."""

    def __init__(self, max_entries: int = 10_000, ttl_s: int = 3600) -> None:
        self._entries: TTLCache[str, bytes] = TTLCache(maxsize=max_entries, ttl=ttl_s)
        self._lock = threading.Lock()  # TTLCache is not thread-safe; API requests run in threads

    def get(self, key: str) -> bytes | None:
        with self._lock:
            return self._entries.get(key)

    def set(self, key: str, value: bytes, ttl_s: int) -> None:
        with self._lock:  # TTLCache has one TTL for all entries: the one given at construction (build_cache passes both)
            self._entries[key] = value


class RedisStore:
    """Redis shared by the API replicas; entries expire after their TTL, memory is bounded by Redis's own policy."""

    def __init__(self, url: str) -> None:
        import redis

        self._client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._errors = redis.RedisError
        self._warned = 0.0

    def get(self, key: str) -> bytes | None:
        try:
            value = self._client.get(key)
        except self._errors as exc:
            self._warn(exc)
            return None
        return value if isinstance(value, bytes) else None

    def set(self, key: str, value: bytes, ttl_s: int) -> None:
        try:
            self._client.set(key, value, ex=ttl_s)
        except self._errors as exc:
            self._warn(exc)

    def _warn(self, exc: Exception) -> None:
        if time.monotonic() - self._warned > 60:
            self._warned = time.monotonic()
            log.warning("the answer cache (Redis) failed, serving without it: %s", exc)


def normalise_question(question: str) -> str:
    """What two askings of one question share: Unicode form, case and whitespace."""
    return " ".join(unicodedata.normalize("NFKC", question).casefold().split())


class QueryCache:
    """Keys and (de)serialisation over a store; `kind` names what is cached (embedding, retrieval, answer)."""

    def __init__(self, store: CacheStore, ttl_s: int = 3600) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.lookups: CounterOf[tuple[str, str]] = CounterOf()  # (kind, hit|miss): this process's, for `kb bench`

    @staticmethod
    def key(kind: str, parts: Mapping[str, Any]) -> str:
        body = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
        return f"kb:cache:{SCHEMA}:{kind}:{hashlib.sha256(body.encode()).hexdigest()}"

    def get_json(self, kind: str, parts: Mapping[str, Any]) -> Any | None:
        raw = self.store.get(self.key(kind, parts))
        outcome = "hit" if raw is not None else "miss"
        CACHE_LOOKUPS.labels(kind, outcome).inc()
        self.lookups[(kind, outcome)] += 1
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except ValueError:  # written by something else under our prefix: a miss
            return None

    def put_json(self, kind: str, parts: Mapping[str, Any], value: Any) -> None:
        self.store.set(self.key(kind, parts), json.dumps(value, ensure_ascii=False, default=_plain).encode(), self.ttl_s)

    def get_vector(self, model: str, text: str) -> NDArray[np.float32] | None:
        value = self.get_json("embedding", {"model": model, "text": text})
        return np.asarray(value, dtype=np.float32) if value is not None else None

    def put_vector(self, model: str, text: str, vector: NDArray[np.float32]) -> None:
        self.put_json("embedding", {"model": model, "text": text}, vector.astype(float).tolist())


def build_cache(enabled: bool, redis_url: str | None, ttl_s: int, max_entries: int) -> QueryCache | None:
    """Redis when a URL is given, an in-process cache otherwise; None when caching is off."""
    if not enabled:
        return None
    store: CacheStore = RedisStore(redis_url) if redis_url else LocalStore(max_entries, ttl_s)
    return QueryCache(store, ttl_s)


def request_parts(question: str, collections: Sequence[str], groups: Sequence[str] | None, filters: Any,
                  versions: Mapping[str, str]) -> dict[str, Any]:  # fmt: skip
    """What decides a retrieval: see the module's docstring. `groups` None (no restriction) and [] (no group)
    differ, and so do their keys."""
    return {
        "question": normalise_question(question),
        "collections": sorted(collections),
        "groups": sorted(groups) if groups is not None else None,
        "filters": filters,
        "versions": dict(sorted(versions.items())),
    }


def _plain(value: Any) -> Any:
    """JSON for the dataclasses and numpy scalars a retrieval holds."""
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
