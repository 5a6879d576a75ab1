"""The sparse lexical side of the index: BM25 term weights per chunk, hashed into a sparse vector.

Documents carry BM25's saturated term frequency; the inverse document frequency is applied at
query time (Qdrant's IDF modifier, or document frequencies counted in Postgres), so adding or
removing a chunk never rewrites the others.
"""

from __future__ import annotations

import re
import zlib
from collections import Counter
from dataclasses import dataclass
from functools import cache, lru_cache

import snowballstemmer

K1 = 1.2
B = 0.75
# Hashed term space; below pgvector's sparsevec limit of 1e9 dimensions.
DIMENSIONS = 1_000_000_000

_WORD = re.compile(r"[^\W\d_][\w'-]*|\d+(?:[.,]\d+)*", re.UNICODE)
_CJK_RUN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
_CYRILLIC = re.compile(r"[\u0400-\u04ff]")
_CAMEL = re.compile(r"[A-ZА-Я]?[a-zа-яё]+|[A-ZА-Я]+(?![a-zа-яё])|\d+")


@dataclass(frozen=True)
class SparseVector:
    indices: tuple[int, ...]
    values: tuple[float, ...]


@cache
def _stemmer(language: str) -> snowballstemmer.stemmer:
    return snowballstemmer.stemmer(language)


def analyze(text: str) -> list[str]:
    """Terms of a text: stemmed words (English or Russian by script) and CJK unigrams plus bigrams."""
    terms: list[str] = []
    for run in _CJK_RUN.findall(text):
        terms.extend(run)
        terms.extend(run[i : i + 2] for i in range(len(run) - 1))
    for word in _WORD.findall(_CJK_RUN.sub(" ", text)):
        terms.extend(_word_terms(word))
    return terms


@lru_cache(maxsize=200_000)
def _word_terms(word: str) -> tuple[str, ...]:
    """Stemmed terms of one word, cached: vocabularies are small next to token counts, and Snowball
    stemming in Python is the analyzer's main cost."""
    stemmer = _stemmer("russian" if _CYRILLIC.search(word) else "english")
    return tuple(stemmer.stemWord(part) for part in _word_parts(word))


def _word_parts(word: str) -> list[str]:
    """A word in lower case; identifiers (snake_case, camelCase, kebab-case) also as their parts, so
    `readOnly` and `check_file_readonly` meet a query for "read only file"."""
    pieces = [p for p in re.split(r"[_'-]+", word) if p]
    parts = [p.lower() for piece in pieces for p in _CAMEL.findall(piece) or [piece]]
    whole = word.lower().strip("_'-")
    return [whole, *parts] if len(parts) > 1 and whole else parts or ([whole] if whole else [])


def term_id(term: str) -> int:
    return zlib.crc32(term.encode("utf-8")) % DIMENSIONS


def bm25_document_vector(text: str, average_length: float) -> SparseVector:
    """BM25's document side: tf·(k1+1) / (tf + k1·(1 − b + b·len/avg)), one entry per hashed term."""
    terms = analyze(text)
    norm = K1 * (1 - B + B * len(terms) / max(average_length, 1.0))
    weights: Counter[int] = Counter()
    for term, tf in Counter(terms).items():
        weights[term_id(term)] += tf * (K1 + 1) / (tf + norm)
    ordered = sorted(weights.items())
    return SparseVector(tuple(i for i, _ in ordered), tuple(round(w, 4) for _, w in ordered))


def query_terms(text: str) -> list[int]:
    """Distinct hashed terms of a query; their weights (IDF) come from the index."""
    return sorted({term_id(t) for t in analyze(text)})
