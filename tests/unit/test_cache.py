"""Keys and values of the query cache (query_engine/cache.py); the backends against the real index and Redis are in
tests/integration/test_cache.py."""

from __future__ import annotations

import json

import numpy as np

from query_engine.cache import LocalStore, QueryCache, normalise_question, request_parts
from query_engine.engine import Retrieval, SourceRef, _retrieval_from
from query_engine.relevance import Signals


def test_a_question_asked_in_other_case_width_or_spacing_is_the_same_question() -> None:
    assert normalise_question("  How long is   RETENTION?\n") == normalise_question("how long is retention?")
    assert normalise_question("ＡＢＣ 保留多久？") == normalise_question("abc 保留多久?")
    assert normalise_question("retention of payments.events") != normalise_question("retention of payments.refunds")


def test_everything_that_decides_what_a_caller_may_see_is_in_the_key() -> None:
    base = {"question": "q", "collections": ["docs"], "groups": ["payments"], "filters": None, "versions": {"docs": "v1"}}

    def key(**change: object) -> str:
        parts = {**base, **change}
        return QueryCache.key("retrieval", request_parts(str(parts["question"]), parts["collections"], parts["groups"],  # type: ignore[arg-type]
                                                         parts["filters"], parts["versions"]))  # type: ignore[arg-type]  # fmt: skip

    same = key()
    assert key(collections=["docs"]) == same and key(groups=["payments"]) == same
    differing = [key(groups=["support"]), key(groups=None), key(groups=[]), key(collections=["docs", "runbooks"]),
                 key(filters={"lang": "en"}), key(versions={"docs": "v2"})]  # fmt: skip
    assert same not in differing and len(set(differing)) == len(differing)
    # Order does not matter where it means nothing.
    assert key(groups=["a", "b"]) == key(groups=["b", "a"])


def test_a_retrieval_survives_the_json_round_trip_with_its_sources_and_signals() -> None:
    cache = QueryCache(LocalStore(10, 60))
    source = SourceRef(1, "docs", "kafka.md", "Retention", 0.91, "Events are kept 7 days.", {"lang": "en"}, cited=True)
    retrieval = Retrieval([source], {"embed_ms": 12.0}, True, Signals(0.9, 0.6, 0.5, cross_lingual=True))
    parts = request_parts("q", ["docs"], None, None, {"docs": "v1"})
    cache.put_json("retrieval", parts, retrieval)
    back = _retrieval_from(cache.get_json("retrieval", parts), {"cache_ms": 0.1})
    assert back.sources == [source] and back.answerable and back.signals == retrieval.signals
    assert back.timings == {"cache_ms": 0.1}
    assert cache.lookups[("retrieval", "hit")] == 1


def test_values_are_json_and_a_foreign_value_under_the_key_is_a_miss() -> None:
    store = LocalStore(10, 60)
    cache = QueryCache(store)
    cache.put_vector("model", "q", np.array([0.5, 0.25], dtype=np.float32))
    assert json.loads(store.get(QueryCache.key("embedding", {"model": "model", "text": "q"})) or b"") == [0.5, 0.25]
    assert cache.get_vector("model", "q").tolist() == [0.5, 0.25]  # type: ignore[union-attr]
    store.set(QueryCache.key("answer", {"x": 1}), b"\x80not json", 60)
    assert cache.get_json("answer", {"x": 1}) is None
