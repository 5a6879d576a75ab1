"""The pipeline's stages as plain functions over explicit arguments; assets call these in order."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field, replace

import numpy as np
from numpy.typing import NDArray

from assets.chunk import Chunk, Chunker
from assets.collections import CollectionSpec
from assets.embed import Embedder
from assets.extract import RawDocument, Source
from assets.index import IndexPoint, VectorIndex
from assets.mask import mask_secrets
from assets.parse import ParsedDocument, ParseError, Section, parse_document
from assets.sparse import bm25_document_vector


@dataclass(frozen=True)
class Quarantined:
    doc_id: str
    reason: str


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
class EmbedResult:
    chunks: list[Chunk]
    vectors: NDArray[np.float32]
    embedded: int
    reused: int


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


def parse(extracted: ExtractResult, spec: CollectionSpec) -> ParseResult:
    """Parse changed documents; a failure quarantines that document with its reason and the rest go on."""
    documents, quarantined = [], []
    for raw in extracted.changed:
        try:
            documents.append(parse_document(raw, spec.splitter, extracted.doc_hashes[raw.doc_id]))
        except ParseError as exc:
            quarantined.append(Quarantined(raw.doc_id, str(exc)))
        except Exception as exc:  # a parser bug on one file must not fail the collection
            quarantined.append(Quarantined(raw.doc_id, f"parser error {type(exc).__name__}: {exc}"[:500]))
    return ParseResult(documents, quarantined)


def mask(documents: list[ParsedDocument]) -> tuple[list[ParsedDocument], dict[str, int]]:
    """Mask secrets in every section and in metadata values; count what was masked by kind."""
    total: Counter[str] = Counter()
    masked = []
    for doc in documents:
        sections = []
        for section in doc.sections:
            result = mask_secrets(section.text)
            total.update(result.counts)
            sections.append(Section(result.text, section.headings, section.metadata))
        metadata = {k: mask_secrets(v).text for k, v in doc.metadata.items()}
        masked.append(replace(doc, sections=tuple(sections), metadata=metadata))
    return masked, dict(total)


def chunk(documents: list[ParsedDocument], chunker: Chunker) -> list[Chunk]:
    return [c for doc in documents for c in chunker.chunk(doc)]


def embed(chunks: list[Chunk], embedder: Embedder, index: VectorIndex, collection: str) -> EmbedResult:
    """Embed only chunk texts the index does not hold yet; reuse stored vectors for the rest."""
    stored = index.vectors_by_chunk_hash(collection, sorted({c.doc_id for c in chunks}))
    missing = [c for c in chunks if c.chunk_hash not in stored]
    fresh = embedder.embed_passages([c.text for c in missing])
    by_hash = dict(stored)
    by_hash.update({c.chunk_hash: v for c, v in zip(missing, fresh, strict=True)})
    vectors = np.stack([by_hash[c.chunk_hash] for c in chunks]) if chunks else np.zeros((0, embedder.dimension), np.float32)
    return EmbedResult(chunks, vectors.astype(np.float32), len(missing), len(chunks) - len(missing))


def write_index(
    extracted: ExtractResult, parsed: ParseResult, embedded: EmbedResult, index: VectorIndex, spec: CollectionSpec, dimension: int
) -> IndexReport:
    """Upsert new and moved chunks, drop chunks of changed documents that no longer exist, delete
    documents gone from the source: one write, so a failed run leaves the previous index intact."""
    index.ensure_collection(spec.name, dimension)
    parsed_ids = [d.doc_id for d in parsed.documents]
    stored = index.stored_chunks(spec.name, parsed_ids + extracted.deleted)
    new_ids = {c.chunk_id for c in embedded.chunks}
    average = spec.chunk_tokens * 0.6  # BM25 length normalisation against a typical chunk of this collection
    # Every chunk of a changed document is written (its doc_hash changed); only new text was embedded.
    upserts = [
        IndexPoint(c.chunk_id, c.doc_id, c.doc_hash, c.chunk_no, c.chunk_hash, c.text, c.metadata, v,
                   bm25_document_vector(c.text, average))
        for c, v in zip(embedded.chunks, embedded.vectors, strict=True)
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
        quarantined=parsed.quarantined,
        upserted=len(upserts),
        removed_chunks=len(removed),
    )
