"""The packaged embedding models: the FlagEmbedding query path, the multilingual USE backend, and the
default dual embedder that holds both."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from assets.embed import DualEmbedder, FlagEmbedder, UniversalSentenceEncoder, load_embedder, multilingual_encoder
from kb.settings import EmbeddingSettings
from pipelines.resources import EmbedderResource

PASSAGES = [
    "Consumer lag on the payments topic: scale the Kafka consumer group up to the partition count.",
    "Rotate the TLS certificate of the card gateway before it expires; the alert fires 14 days ahead.",
]


def test_query_embedding_matches_flagembedding(embedder) -> None:  # type: ignore[no-untyped-def]
    english = embedder.english if isinstance(embedder, DualEmbedder) else embedder
    assert isinstance(english, FlagEmbedder)
    questions = ["kafka consumer lag", "how do I rotate the gateway certificate after an expiry alert?"]
    ours = english.embed_queries(questions)
    reference = np.asarray(english._model.encode_queries(questions), dtype=np.float32)
    assert ours.shape == (2, english.dimension)
    assert np.allclose(ours, reference, atol=1e-5)


def test_the_default_dual_embedder_keeps_english_ranking_and_reads_across_languages(embedder) -> None:  # type: ignore[no-untyped-def]
    assert isinstance(embedder, DualEmbedder)
    assert embedder.dimension == embedder.english.dimension + embedder.multilingual.dimension
    assert multilingual_encoder(embedder) is embedder.multilingual
    passages = embedder.embed_passages(PASSAGES)
    assert np.allclose(np.linalg.norm(passages, axis=1), 1.0, atol=1e-3)
    # An English question: the English model's own cosines, once the dual score is scaled back.
    question = "What to do about consumer lag?"
    dual = passages @ embedder.embed_queries([question])[0] * embedder.score_scale(question)
    alone = embedder.english.embed_passages(PASSAGES) @ embedder.english.embed_queries([question])[0]
    assert np.allclose(dual, alone, atol=1e-4)
    # Russian and Chinese questions go through the multilingual half and find the English passage.
    for text, expected in (("Как увеличить число потребителей Kafka при отставании?", 0), ("如何更换即将过期的 TLS 证书?", 1)):
        assert embedder.query_weights(text) == (0.0, 1.0)
        scores = passages @ embedder.embed_queries([text])[0] * embedder.score_scale(text)
        assert int(np.argmax(scores)) == expected, (text, scores)
        alone = embedder.multilingual.embed_passages(PASSAGES) @ embedder.multilingual.embed_queries([text])[0]
        assert np.allclose(scores, alone, atol=1e-4)


def test_multilingual_encoder_matches_questions_across_languages() -> None:
    model = load_embedder("use-multilingual", "", "mean", 32, 512)
    assert isinstance(model, UniversalSentenceEncoder) and model.dimension == 512
    passages = model.embed_passages(PASSAGES)
    assert np.allclose(np.linalg.norm(passages, axis=1), 1.0, atol=1e-3)
    for question, expected in (
        ("Как увеличить число потребителей Kafka при отставании?", 0),
        ("如何更换即将过期的 TLS 证书?", 1),
        ("What to do about consumer lag?", 0),
    ):
        scores = passages @ model.embed_queries([question])[0]
        assert int(np.argmax(scores)) == expected, (question, scores)
    assert len(model.count_tokens("Kafka consumer lag")) >= 3


def test_embedding_settings_choose_languages_by_backend() -> None:
    assert EmbeddingSettings().backend == "dual" and EmbeddingSettings().languages == ["en", "ru", "zh"]
    assert EmbeddingSettings(backend="flagembedding").languages == ["en"]
    assert EmbedderResource(**EmbeddingSettings().resource_fields()).fingerprint().startswith("dual-")
    assert EmbeddingSettings(backend="use-multilingual").languages == ["en", "ru", "zh"]
    assert EmbeddingSettings(backend="use-multilingual", languages=["en"]).languages == ["en"]
    resource = EmbedderResource(**EmbeddingSettings(backend="use-multilingual").resource_fields())
    assert resource.fingerprint().startswith("use-multilingual-v3-")
    with pytest.raises(ValidationError, match="KB_EMBEDDING_BACKEND"):
        EmbeddingSettings(backend="word2vec")
