"""Each stage quarantines the one document it cannot handle and passes the rest on (the mechanism; the real pipeline
with real bad files is tests/integration/test_quarantine.py)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from assets import stages
from assets.chunk import Chunk
from assets.embed import Embedder
from assets.parse import ParsedDocument, Section


class _PickyEmbedder(Embedder):
    """Unit vectors from a hash of the text; raises on a text that holds POISON, returns NaN for one that holds NAN."""

    dimension = 4
    model_id = "picky"

    def count_tokens(self, text: str) -> list[int]:
        return [1] * len(text.split())

    def embed_passages(self, texts: list[str]) -> NDArray[np.float32]:
        if any("POISON" in t for t in texts):
            raise RuntimeError("the model cannot read this")
        rows = [np.full(4, np.nan) if "NAN" in t else np.ones(4) / 2 for t in texts]
        return np.array(rows, dtype=np.float32)

    def embed_queries(self, texts: list[str]) -> NDArray[np.float32]:
        return self.embed_passages(texts)


class _EmptyIndex:
    def vectors_by_chunk_hash(self, collection: str, doc_ids: list[str]) -> dict[str, NDArray[np.float32]]:
        return {}


def _chunk(doc_id: str, text: str) -> Chunk:
    return Chunk(f"{doc_id}#0", doc_id, "h", 0, text, 3, f"hash-{doc_id}")


def _doc(doc_id: str, text: str) -> ParsedDocument:
    return ParsedDocument(doc_id, "h", (Section(text),), {"path": doc_id})


def test_embedding_failure_quarantines_only_the_document_the_model_fails_on() -> None:
    chunks = [_chunk("a.md", "fine text"), _chunk("b.md", "POISON here"), _chunk("c.md", "NAN vector"), _chunk("d.md", "ok")]
    result = stages.embed(chunks, _PickyEmbedder(), _EmptyIndex(), "docs")  # type: ignore[arg-type]
    assert [c.doc_id for c in result.chunks] == ["a.md", "d.md"] and result.vectors.shape == (2, 4)
    assert {q.doc_id: q.kind for q in result.quarantined} == {"b.md": "embed_error", "c.md": "embedding_invalid"}
    assert all(q.stage == "embed" and "POISON" not in q.reason for q in result.quarantined)


def test_a_model_that_fails_on_every_document_fails_the_run() -> None:
    chunks = [_chunk("a.md", "POISON one"), _chunk("b.md", "POISON two")]
    with pytest.raises(RuntimeError):
        stages.embed(chunks, _PickyEmbedder(), _EmptyIndex(), "docs")  # type: ignore[arg-type]


def test_a_document_whose_masked_text_still_holds_a_secret_is_quarantined_without_its_text(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Stands for a detector finding that masking missed: the masker itself is total (test_mask_properties.py).
    def find(text: str) -> list[str]:
        return ["private-key"] if "LEAKY" in text else []

    monkeypatch.setattr(stages, "find_secrets", find)
    result = stages.mask([_doc("a.md", "plain runbook text"), _doc("b.md", "LEAKY material"), _doc("c.md", "more text")])
    assert [d.doc_id for d in result.documents] == ["a.md", "c.md"]
    (left,) = result.quarantined
    assert (left.doc_id, left.kind, left.stage) == ("b.md", "unmasked_secret", "mask") and "LEAKY" not in left.reason


def test_a_chunker_failure_or_an_empty_result_quarantines_that_document() -> None:
    class Chunker:
        spec: Any = type("Spec", (), {"chunk_tokens": 10})()

        def chunk(self, doc: ParsedDocument) -> list[Chunk]:
            if doc.doc_id == "boom.md":
                raise ValueError("splitter bug")
            if doc.doc_id == "long.md":
                return [Chunk("x", doc.doc_id, "h", 0, "many words", 99, "hh")]
            return [] if doc.doc_id == "empty.md" else [_chunk(doc.doc_id, doc.sections[0].text)]

    docs = [_doc(name, "text") for name in ("a.md", "boom.md", "empty.md", "long.md", "z.md")]
    result = stages.chunk(docs, Chunker())  # type: ignore[arg-type]
    assert [c.doc_id for c in result.chunks] == ["a.md", "z.md"]
    kinds = {q.doc_id: q.kind for q in result.quarantined}
    assert kinds == {"boom.md": "chunk_error", "empty.md": "empty", "long.md": "chunk_bounds"}


def test_every_stage_counts_a_document_once_under_the_first_stage_that_refused_it() -> None:
    parse = [stages.Quarantined("a.md", "bad bytes", "invalid_encoding", "parse")]
    later = [
        stages.Quarantined("a.md", "again", "empty", "chunk"),
        stages.Quarantined("b.md", "nan", "embedding_invalid", "embed"),
    ]
    merged = stages.all_quarantined(parse, later)
    assert [(q.doc_id, q.stage) for q in merged] == [("a.md", "parse"), ("b.md", "embed")]
