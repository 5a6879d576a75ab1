"""The packaged embedding models: the FlagEmbedding query path and the multilingual USE backend."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from assets.embed import UniversalSentenceEncoder, load_embedder
from kb.settings import EmbeddingSettings
from pipelines.resources import EmbedderResource

PASSAGES = [
    "Consumer lag on the payments topic: scale the Kafka consumer group up to the partition count.",
    "Rotate the TLS certificate of the card gateway before it expires; the alert fires 14 days ahead.",
]


def test_query_embedding_matches_flagembedding(embedder) -> None:  # type: ignore[no-untyped-def]
    questions = ["kafka consumer lag", "how do I rotate the gateway certificate after an expiry alert?"]
    ours = embedder.embed_queries(questions)
    reference = np.asarray(embedder._model.encode_queries(questions), dtype=np.float32)
    assert ours.shape == (2, embedder.dimension)
    assert np.allclose(ours, reference, atol=1e-5)


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
    assert EmbeddingSettings().languages == ["en"]
    assert EmbeddingSettings(backend="use-multilingual").languages == ["en", "ru", "zh"]
    assert EmbeddingSettings(backend="use-multilingual", languages=["en"]).languages == ["en"]
    resource = EmbedderResource(**EmbeddingSettings(backend="use-multilingual").resource_fields())
    assert resource.fingerprint().startswith("use-multilingual-v3-")
    with pytest.raises(ValidationError, match="KB_EMBEDDING_BACKEND"):
        EmbeddingSettings(backend="word2vec")
