"""The shared cache of retrievals and answers (query_engine/cache.py) on the real index and a real redis-server.

What it must never do: serve a result built before a reindex or an ACL change, or one user's result to a user
with other access. What it must do: answer a repeated question without searching or calling the LLM again,
with the sources the first answer had.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from assets.chunk import chunk_id
from assets.index import IndexPoint, PgVectorIndex
from assets.sparse import bm25_document_vector
from query_engine.cache import LocalStore, QueryCache, RedisStore
from query_engine.engine import Answer, AnswerEngine
from query_engine.relevance import LanguageGate, RelevanceGate
from query_engine.rerank import EvidenceReranker
from tests.redis_server import redis_url  # noqa: F401

COLLECTION = "cache_contract"
RETENTION = "The payments.events topic keeps events for 7 days; the retention is set on the topic."
RETENTION_CHANGED = "The payments.events topic keeps events for 14 days since the storage upgrade."
QUESTION = "How long does the payments.events topic keep events?"


class CountingLLM:
    """Answers from the first source and counts its calls (a cache hit must not reach the LLM)."""

    def __init__(self) -> None:
        self.calls = 0
        self.metadata = type("Metadata", (), {"model_name": "counting"})()

    async def astream_chat(self, messages: list[Any]) -> Any:
        self.calls += 1
        prompt = messages[0].content or ""
        days = "14 days" if "14 days" in prompt else "7 days"
        answer = f"The payments.events topic keeps events for {days} [1]."

        async def gen() -> Any:
            for word in answer.split(" "):
                yield type("Chunk", (), {"delta": word + " "})()

        return gen()


def point(embedder, doc: str, text: str, groups: str | None = None) -> IndexPoint:  # type: ignore[no-untyped-def]
    metadata: dict[str, Any] = {"path": doc, "lang": "en", "collection": COLLECTION}
    if groups is not None:
        metadata["acl_groups"] = groups
    return IndexPoint(chunk_id(COLLECTION, doc, 0), doc, f"hash-{text[:12]}", 0, f"chunk-{text[:12]}", text, metadata,
                      embedder.embed_passages([text])[0], bm25_document_vector(text, 20))  # fmt: skip


@pytest.fixture(params=["in-process", "redis"])
def cache(request: pytest.FixtureRequest) -> Iterator[QueryCache]:
    if request.param == "redis":
        import redis

        url = request.getfixturevalue("redis_url")
        redis.Redis.from_url(url).flushdb()
        yield QueryCache(RedisStore(url), ttl_s=60)
    else:
        yield QueryCache(LocalStore(100, 60), ttl_s=60)


@pytest.fixture
def index(postgres_url: str, embedder) -> Iterator[PgVectorIndex]:  # type: ignore[no-untyped-def]
    backend = PgVectorIndex(postgres_url)
    backend.drop_collection(COLLECTION)
    backend.ensure_collection(COLLECTION, embedder.dimension)
    backend.write(COLLECTION, [point(embedder, "kafka/retention.md", RETENTION)], [])
    yield backend
    backend.drop_collection(COLLECTION)
    backend.close()


def engine(index: PgVectorIndex, embedder, cache: QueryCache, llm: CountingLLM | None = None) -> AnswerEngine:  # type: ignore[no-untyped-def]
    # A gate that lets any source through (and refuses when there is none): these tests are about what is
    # cached, not about relevance.
    open_gate = RelevanceGate({"en": LanguageGate(-5.0, (10.0, 0.0, 0.0), 0.5)})
    return AnswerEngine(index, embedder, [COLLECTION], EvidenceReranker(), llm, gate=open_gate, cache=cache)  # type: ignore[arg-type]


def answer(e: AnswerEngine, groups: list[str] | None = None) -> Answer:
    return asyncio.run(e.answer(QUESTION, groups=groups))


def test_a_repeated_question_is_answered_from_the_cache_with_its_sources(index, embedder, cache) -> None:  # type: ignore[no-untyped-def]
    llm = CountingLLM()
    e = engine(index, embedder, cache, llm)
    first, second = answer(e), answer(e)
    assert llm.calls == 1
    assert second.text == first.text and "7 days" in second.text
    assert [(s.doc_id, s.cited) for s in second.sources] == [(s.doc_id, s.cited) for s in first.sources]
    assert second.sources[0].doc_id == "kafka/retention.md" and second.sources[0].cited
    assert second.grounding == first.grounding and "cache_ms" in second.timings
    # A differently typed asking of the same question is the same question.
    asyncio.run(e.answer("  how long does the PAYMENTS.EVENTS topic keep events? "))
    assert llm.calls == 1


def test_a_reindex_makes_cached_retrievals_and_answers_unreachable(index, embedder, cache) -> None:  # type: ignore[no-untyped-def]
    llm = CountingLLM()
    e = engine(index, embedder, cache, llm)
    assert "7 days" in answer(e).text
    assert "cache_ms" in e.retrieve(QUESTION).timings
    index.write(COLLECTION, [point(embedder, "kafka/retention.md", RETENTION_CHANGED)], [])
    retrieval = e.retrieve(QUESTION)
    assert "cache_ms" not in retrieval.timings and "14 days" in retrieval.sources[0].text
    assert "14 days" in answer(e).text and llm.calls == 2
    # Another API replica: with Redis it shares the current entries, in-process it has its own.
    shared = isinstance(cache.store, RedisStore)
    other = engine(index, embedder, cache if shared else QueryCache(LocalStore(100, 60)), llm)
    assert "14 days" in answer(other).text and llm.calls == (2 if shared else 3)


def test_an_acl_change_and_other_users_access_never_reuse_a_cached_result(index, embedder, cache) -> None:  # type: ignore[no-untyped-def]
    llm = CountingLLM()
    e = engine(index, embedder, cache, llm)
    index.write(COLLECTION, [point(embedder, "kafka/retention.md", RETENTION, groups="payments")], [])
    assert [s.doc_id for s in e.retrieve(QUESTION, groups=["payments"]).sources] == ["kafka/retention.md"]
    # Another user, same question: not the payments team's cached result.
    assert e.retrieve(QUESTION, groups=["support"]).sources == []
    # The ACL now names support instead of payments: the chunks are rewritten with their new groups.
    index.write(COLLECTION, [point(embedder, "kafka/retention.md", RETENTION, groups="support")], [])
    assert e.retrieve(QUESTION, groups=["payments"]).sources == []
    assert [s.doc_id for s in e.retrieve(QUESTION, groups=["support"]).sources] == ["kafka/retention.md"]
    # Answers follow the same keys: the payments user's answer is refused now, without the LLM.
    before = llm.calls
    refused = answer(e, groups=["payments"])
    assert refused.sources == [] and llm.calls == before


def test_a_redis_that_is_down_costs_speed_never_an_answer(index, embedder) -> None:  # type: ignore[no-untyped-def]
    from kb.platform import free_port

    llm = CountingLLM()
    e = engine(index, embedder, QueryCache(RedisStore(f"redis://127.0.0.1:{free_port()}/0"), ttl_s=60), llm)
    assert "7 days" in answer(e).text and "7 days" in answer(e).text
    assert llm.calls == 2
