"""Split parsed documents into chunks sized in the embedding model's tokens, keeping metadata."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from llama_index.core.node_parser import SentenceSplitter

from assets.collections import CollectionSpec
from assets.embed import Embedder
from assets.parse import ParsedDocument, Section, document_kind

# Namespace of the deterministic chunk ids: uuid5(namespace, "collection/doc_id#n").
CHUNK_NAMESPACE = uuid.UUID("6f2a3c9e-1b7d-4e55-9a0c-4b1f0d2e8a71")

Tokenize = Callable[[str], Sequence[int]]


@dataclass(frozen=True)
class Chunk:
    chunk_id: str
    doc_id: str
    doc_hash: str
    chunk_no: int
    text: str
    token_count: int
    chunk_hash: str
    metadata: dict[str, str] = field(default_factory=dict)


def chunk_id(collection: str, doc_id: str, chunk_no: int) -> str:
    return str(uuid.uuid5(CHUNK_NAMESPACE, f"{collection}/{doc_id}#{chunk_no}"))


class Chunker:
    """One collection's chunking: token-sized windows with overlap, never crossing a section."""

    def __init__(self, spec: CollectionSpec, embedder: Embedder) -> None:
        self.spec = spec
        self.tokenize: Tokenize = embedder.count_tokens
        self.model_id = embedder.model_id
        self._splitters: dict[int, SentenceSplitter] = {}

    def _splitter(self, size: int) -> SentenceSplitter:
        if size not in self._splitters:
            overlap = min(self.spec.chunk_overlap, size // 4)
            self._splitters[size] = SentenceSplitter(chunk_size=size, chunk_overlap=overlap, tokenizer=self.tokenize)
        return self._splitters[size]

    def count(self, text: str) -> int:
        return len(self.tokenize(text))

    def chunk(self, doc: ParsedDocument) -> list[Chunk]:
        kind = document_kind(doc.doc_id, self.spec.splitter)
        pieces: list[tuple[str, Section]] = []
        sections = _merge_small_units(doc.sections, self.count, self.spec.chunk_tokens) if kind == "code" else doc.sections
        for section in sections:
            # Code and manifests lead with their path (names like redis-master-deployment.yaml carry meaning);
            # prose leads with its heading path.
            header = doc.metadata.get("path", doc.doc_id) if kind in ("code", "yaml") else " > ".join(section.headings)
            pieces.extend((text, section) for text in self._split_section(section, header))
        chunks = []
        for n, (text, section) in enumerate(pieces):
            metadata = {**doc.metadata, **section.metadata}
            if section.headings:
                metadata.update(headings=" > ".join(section.headings), section=section.headings[-1])
            chunks.append(
                Chunk(
                    chunk_id=chunk_id(self.spec.name, doc.doc_id, n),
                    doc_id=doc.doc_id,
                    doc_hash=doc.doc_hash,
                    chunk_no=n,
                    text=text,
                    token_count=self.count(text),
                    # The text as this model embeds it: a stored vector is reused only for the same text
                    # and the same model, so switching models never mixes vector spaces.
                    chunk_hash=hashlib.sha256(f"{self.model_id}\x1f{text}".encode()).hexdigest(),
                    metadata=metadata,
                )
            )
        return chunks

    def _split_section(self, section: Section, header: str) -> list[str]:
        """Sections that fit stay whole; longer ones are split with overlap. The header leads every
        piece so a chunk read alone still says where it comes from."""
        header_text = f"{header}\n\n" if header and header != section.text.strip() else ""
        budget = self.spec.chunk_tokens - (self.count(header_text) if header_text else 0)
        body = section.text.strip()
        if self.count(body) <= budget:
            return [header_text + body]
        return [header_text + piece for piece in self._splitter(max(budget, 32)).split_text(body)]


def _merge_small_units(sections: Sequence[Section], count: Callable[[str], int], limit: int) -> list[Section]:
    """Code units without a symbol (imports, constants) join the next unit when both fit in one chunk."""
    merged: list[Section] = []
    pending: Section | None = None
    for section in sections:
        if pending is not None:
            joined = f"{pending.text.rstrip()}\n\n{section.text}"
            if count(joined) <= limit:
                section = Section(joined, section.headings, {**pending.metadata, **section.metadata})
            else:
                merged.append(pending)
            pending = None
        if "symbol" not in section.metadata:
            pending = section
        else:
            merged.append(section)
    if pending is not None:
        merged.append(pending)
    return merged
