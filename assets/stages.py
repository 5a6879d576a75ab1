"""The pipeline's stages as plain functions over explicit arguments; assets call these in order."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from numpy.typing import NDArray

from assets.budget import ParseBudget, parse_documents
from assets.chunk import Chunk, Chunker
from assets.collections import CollectionSpec
from assets.embed import Embedder
from assets.extract import RawDocument, Source
from assets.index import IndexPoint, VectorIndex
from assets.mask import find_secrets, mask_secrets
from assets.parse import ParsedDocument, Section
from assets.sparse import bm25_document_vector

# Kinds of the documents a source lists but does not read (assets/extract.py, RawDocument.skipped_kind).
EXTRACT_KINDS = frozenset({"oversize", "outside_source", "not_a_regular_file", "unreadable", "skipped"})


@dataclass(frozen=True)
class Quarantined:
    """A document left out of this run at one stage: `kind` is a short code (a metric label), `reason` a message that
    never holds the document's text."""

    doc_id: str
    reason: str
    kind: str = "unparseable"
    stage: str = "parse"


@dataclass(frozen=True)
class ExtractResult:
    """What changed at the source since the index was written."""

    changed: list[RawDocument]
    doc_hashes: dict[str, str]
    unchanged: int
    deleted: list[str]
    scope: list[str] | None = None  # the doc ids a webhook-driven run was limited to


@dataclass(frozen=True)
class ParseResult:
    documents: list[ParsedDocument]
    quarantined: list[Quarantined]


@dataclass(frozen=True)
class MaskResult:
    documents: list[ParsedDocument]
    counts: dict[str, int]
    quarantined: list[Quarantined] = field(default_factory=list)


@dataclass(frozen=True)
class ChunkResult:
    chunks: list[Chunk]
    quarantined: list[Quarantined] = field(default_factory=list)


@dataclass(frozen=True)
class EmbedResult:
    chunks: list[Chunk]
    vectors: NDArray[np.float32]
    embedded: int
    reused: int
    quarantined: list[Quarantined] = field(default_factory=list)


@dataclass(frozen=True)
class IndexReport:
    collection: str
    documents: int
    chunks: int
    embedded: int
    skipped_unchanged: int
    deleted: int
    quarantined: list[Quarantined] = field(default_factory=list)
    upserted: int = 0
    removed_chunks: int = 0


def document_hash(raw: RawDocument, fingerprint: str) -> str:
    return hashlib.sha256(f"{raw.content_hash}:{fingerprint}".encode()).hexdigest()


def extract(
    source: Source, index: VectorIndex, spec: CollectionSpec, fingerprint: str, max_bytes: int, only: list[str] | None = None
) -> ExtractResult:
    """Read the source (or just `only`) and keep the documents whose content or pipeline changed."""
    scope = frozenset(only) if only else None
    documents = source.documents(max_bytes, scope)
    indexed = index.document_hashes(spec.name)
    hashes = {d.doc_id: document_hash(d, fingerprint) for d in documents}
    changed = [d for d in documents if indexed.get(d.doc_id) != hashes[d.doc_id]]
    present = set(hashes)
    candidates = indexed.keys() if scope is None else scope & indexed.keys()
    deleted = sorted(set(candidates) - present)
    return ExtractResult(changed, hashes, len(documents) - len(changed), deleted, sorted(scope) if scope else None)


def parse(extracted: ExtractResult, spec: CollectionSpec, budget: ParseBudget | None = None) -> ParseResult:
    """Parse changed documents in worker processes, each under the time and memory budget; a document that fails
    (or was not read) is quarantined with its kind and reason, and the rest go on."""
    documents, failures = parse_documents(extracted.changed, spec.splitter, extracted.doc_hashes, budget or ParseBudget())
    return ParseResult(documents, [Quarantined(doc_id, reason, kind, _stage_of(kind)) for doc_id, kind, reason in failures])


def _stage_of(kind: str) -> str:
    """Where a parse failure happened: a file the source did not read failed at extraction."""
    return "extract" if kind in EXTRACT_KINDS else "parse"


def mask(documents: list[ParsedDocument]) -> MaskResult:
    """Mask secrets in every section and metadata value; a document whose masked text still holds something the
    detector flags (or that the masker fails on) is quarantined, never passed on, and the rest go on."""
    total: Counter[str] = Counter()
    masked, quarantined = [], []
    for doc in documents:
        try:
            result, counts, left = _mask_document(doc)
        except Exception as exc:  # a masker bug on one document must not stop the batch, nor let its text through
            quarantined.append(Quarantined(doc.doc_id, f"masking failed: {type(exc).__name__}", "mask_error", "mask"))
            continue
        if left:
            kinds = ", ".join(sorted(set(left)))
            reason = f"{len(left)} secret pattern(s) left after masking ({kinds})"
            quarantined.append(Quarantined(doc.doc_id, reason, "unmasked_secret", "mask"))
            continue
        total.update(counts)
        masked.append(result)
    return MaskResult(masked, dict(total), quarantined)


def _mask_document(doc: ParsedDocument) -> tuple[ParsedDocument, Counter[str], list[str]]:
    """The document masked, what was masked by kind, and the kinds the detector still finds in the masked text."""
    counts: Counter[str] = Counter()
    sections = []
    for section in doc.sections:
        # Headings lead every chunk's text; section metadata (symbol, kind, name) becomes chunk metadata.
        result = mask_secrets(section.text)
        headings = [mask_secrets(h) for h in section.headings]
        meta = {k: mask_secrets(v) for k, v in section.metadata.items()}
        for masked in (result, *headings, *meta.values()):
            counts.update(masked.counts)
        sections.append(Section(result.text, tuple(h.text for h in headings), {k: m.text for k, m in meta.items()}))
    metadata = {k: mask_secrets(v).text for k, v in doc.metadata.items()}
    left = [kind for s in sections for t in (s.text, *s.headings, *s.metadata.values()) for kind in find_secrets(t)]
    left += [kind for v in metadata.values() for kind in find_secrets(v)]
    return replace(doc, sections=tuple(sections), metadata=metadata), counts, left


def chunk(documents: list[ParsedDocument], chunker: Chunker) -> ChunkResult:
    """Chunk each document; one the chunker fails on, or that yields no chunk, is quarantined."""
    chunks, quarantined = [], []
    for doc in documents:
        try:
            pieces = chunker.chunk(doc)
        except Exception as exc:  # a chunker bug on one document must not stop the batch
            quarantined.append(
                Quarantined(doc.doc_id, f"chunking failed: {type(exc).__name__}: {exc}"[:300], "chunk_error", "chunk")
            )
            continue
        if not pieces:
            quarantined.append(Quarantined(doc.doc_id, "no chunk: the document has no indexable text", "empty", "chunk"))
            continue
        limit = chunker.spec.chunk_tokens
        if any(p.token_count > limit or not p.text.strip() for p in pieces):
            reason = f"a chunk is empty or over the {limit}-token bound"
            quarantined.append(Quarantined(doc.doc_id, reason, "chunk_bounds", "chunk"))
            continue
        chunks.extend(pieces)
    return ChunkResult(chunks, quarantined)


def embed(chunks: list[Chunk], embedder: Embedder, index: VectorIndex, collection: str) -> EmbedResult:
    """Embed only chunk texts the index does not hold yet; reuse stored vectors for the rest. A batch the model
    fails on is retried document by document, so only the documents it fails on (or whose vectors are not finite
    unit vectors) are quarantined."""
    stored = index.vectors_by_chunk_hash(collection, sorted({c.doc_id for c in chunks}))
    missing = [c for c in chunks if c.chunk_hash not in stored]
    by_hash = dict(stored)
    failed: dict[str, Quarantined] = {}
    try:
        fresh = embedder.embed_passages([c.text for c in missing])
        by_hash.update({c.chunk_hash: v for c, v in zip(missing, fresh, strict=True)})
    except Exception:
        by_hash.update(_embed_per_document(missing, embedder, failed))
        if len(failed) > 1 and failed.keys() == {c.doc_id for c in missing}:
            raise  # every document fails: the model is broken, not a document; the run fails and the index stays
    for c in chunks:
        if c.doc_id not in failed and c.chunk_hash in by_hash and not _unit_vector(by_hash[c.chunk_hash]):
            failed[c.doc_id] = Quarantined(
                c.doc_id, "the model gave a non-finite or non-unit vector", "embedding_invalid", "embed"
            )
    kept = [c for c in chunks if c.doc_id not in failed]
    vectors = np.stack([by_hash[c.chunk_hash] for c in kept]) if kept else np.zeros((0, embedder.dimension), np.float32)
    embedded = sum(1 for c in missing if c.doc_id not in failed)
    return EmbedResult(kept, vectors.astype(np.float32), embedded, len(kept) - embedded, list(failed.values()))


def _embed_per_document(
    missing: list[Chunk], embedder: Embedder, failed: dict[str, Quarantined]
) -> dict[str, NDArray[np.float32]]:
    by_doc: dict[str, list[Chunk]] = {}
    for c in missing:
        by_doc.setdefault(c.doc_id, []).append(c)
    vectors: dict[str, NDArray[np.float32]] = {}
    for doc_id, doc_chunks in by_doc.items():
        try:
            fresh = embedder.embed_passages([c.text for c in doc_chunks])
        except Exception as exc:
            failed[doc_id] = Quarantined(doc_id, f"embedding failed: {type(exc).__name__}"[:300], "embed_error", "embed")
            continue
        vectors.update({c.chunk_hash: v for c, v in zip(doc_chunks, fresh, strict=True)})
    return vectors


def _unit_vector(vector: NDArray[np.float32]) -> bool:
    return bool(np.isfinite(vector).all()) and abs(float(np.linalg.norm(vector)) - 1.0) <= 0.02


def write_index(
    extracted: ExtractResult,
    parsed: ParseResult,
    embedded: EmbedResult,
    index: VectorIndex,
    spec: CollectionSpec,
    dimension: int,
    quarantined: Sequence[Quarantined] = (),
) -> IndexReport:
    """Upsert new and moved chunks, drop chunks of changed documents that no longer exist, delete
    documents gone from the source: one write, so a failed run leaves the previous index intact.

    `quarantined` are the documents any stage left out: they keep what the index held of them (their old doc hash
    makes the next run try them again), and a chunk the index cannot store quarantines its document here."""
    index.ensure_collection(spec.name, dimension)
    rejected = _unstorable(embedded.chunks)
    left_out = [*quarantined, *rejected]
    excluded = {q.doc_id for q in left_out}
    landed = [d.doc_id for d in parsed.documents if d.doc_id not in excluded]
    stored = index.stored_chunks(spec.name, landed + extracted.deleted)
    kept = [(c, v) for c, v in zip(embedded.chunks, embedded.vectors, strict=True) if c.doc_id not in excluded]
    new_ids = {c.chunk_id for c, _ in kept}
    average = spec.chunk_tokens * 0.6  # BM25 length normalisation against a typical chunk of this collection
    # Every chunk of a changed document is written (its doc_hash changed); only new text was embedded.
    upserts = [
        IndexPoint(c.chunk_id, c.doc_id, c.doc_hash, c.chunk_no, c.chunk_hash, c.text, c.metadata, v,
                   bm25_document_vector(c.text, average))
        for c, v in kept
    ]  # fmt: skip
    removed = [s.chunk_id for s in stored if s.chunk_id not in new_ids]
    index.write(spec.name, upserts, removed)
    return IndexReport(
        collection=spec.name,
        documents=len(extracted.doc_hashes),
        chunks=index.count(spec.name),
        embedded=embedded.embedded,
        skipped_unchanged=extracted.unchanged,
        deleted=len(extracted.deleted),
        quarantined=left_out,
        upserted=len(upserts),
        removed_chunks=len(removed),
    )


def _unstorable(chunks: Sequence[Chunk]) -> list[Quarantined]:
    """Documents with a chunk no index can store: a NUL character (PostgreSQL text refuses it) in text or metadata."""
    bad = {c.doc_id for c in chunks if "\x00" in c.text or any("\x00" in str(v) for v in c.metadata.values())}
    return [Quarantined(doc_id, "a chunk holds a NUL character", "index_rejected", "index") for doc_id in sorted(bad)]


def ingest_batch(
    extracted: ExtractResult, spec: CollectionSpec, chunker: Chunker, embedder: Embedder, index: VectorIndex
) -> IndexReport:
    """Every stage in one call, as the asset group runs them (evals and benchmarks build their indexes with it)."""
    parsed = parse(extracted, spec)
    masked = mask(parsed.documents)
    chunked = chunk(masked.documents, chunker)
    embedded = embed(chunked.chunks, embedder, index, spec.name)
    left_out = all_quarantined(parsed.quarantined, masked.quarantined, chunked.quarantined, embedded.quarantined)
    return write_index(extracted, parsed, embedded, index, spec, embedder.dimension, left_out)


def all_quarantined(*groups: Sequence[Quarantined]) -> list[Quarantined]:
    """The documents left out by any stage, once each (the first stage that refused one says why)."""
    seen: dict[str, Quarantined] = {}
    for group in groups:
        for q in group:
            seen.setdefault(q.doc_id, q)
    return list(seen.values())
