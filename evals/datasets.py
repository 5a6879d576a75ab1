"""Loader for the BEIR-like evaluation sets: corpus, queries, qrels, answers, meta."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Document:
    id: str
    title: str
    text: str


@dataclass(frozen=True)
class Query:
    id: str
    text: str


@dataclass
class EvalSet:
    name: str
    variant: str | None
    corpus: list[Document]
    queries: list[Query]
    qrels: dict[str, set[str]]
    answers: dict[str, list[str]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    collection: str | None = None

    @property
    def label(self) -> str:
        return f"{self.name}:{self.variant}" if self.variant else self.name


class DatasetError(ValueError):
    """The folder is not in the expected format; the message says what is missing."""


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _pick(folder: Path, stem: str, suffix: str, variant: str | None, fallbacks: tuple[str, ...] = ()) -> Path | None:
    names = ([f"{stem}.{variant}{suffix}"] if variant else []) + [f"{stem}{suffix}", *fallbacks]
    return next((folder / n for n in names if (folder / n).exists()), None)


def _read_answers(path: Path | None) -> dict[str, list[str]]:
    """Reference answer spans by question id (`answers` list or a single `answer`)."""
    if path is None:
        return {}
    rows = ((str(a["id"]), a.get("answers") or ([a["answer"]] if a.get("answer") else [])) for a in _read_jsonl(path))
    return {qid: [str(v) for v in values] for qid, values in rows}


def collection_of(meta: dict[str, Any]) -> str | None:
    """`maps_to_collection` names a collection as its first word; 'none (…)' maps to none."""
    first = str(meta.get("maps_to_collection", "")).split(" ")[0].strip()
    return None if first in ("", "none") else first


def load_dataset(
    path: Path, variant: str | None = None, corpus_variant: str | None = None, collection: str | None = None
) -> EvalSet:
    """Read a folder: `corpus.jsonl`, `queries.jsonl`, `qrels.tsv` (+ `answers.jsonl`, `meta.json`).

    `variant` picks suffixed files (`queries.ru.jsonl`), or else a query field (`text_with_name`);
    `corpus_variant` reads another language's corpus with these queries (cross-lingual runs)."""
    if not path.is_dir():
        raise DatasetError(f"{path} is not a folder")
    meta = json.loads((path / "meta.json").read_text(encoding="utf-8")) if (path / "meta.json").exists() else {}
    corpus_file = _pick(path, "corpus", ".jsonl", corpus_variant or variant, ("corpus_small.jsonl",))
    queries_file = _pick(path, "queries", ".jsonl", variant)
    qrels_file = _pick(path, "qrels", ".tsv", variant)
    missing = [n for n, f in (("corpus", corpus_file), ("queries", queries_file), ("qrels", qrels_file)) if f is None]
    if missing:
        raise DatasetError(f"{path}: no {', '.join(missing)} file")
    assert corpus_file and queries_file and qrels_file
    suffixed = variant is not None and queries_file.name == f"queries.{variant}.jsonl"
    field_name = "text" if suffixed or variant is None else f"text_{variant}"
    raw_queries = _read_jsonl(queries_file)
    if raw_queries and field_name not in raw_queries[0]:
        raise DatasetError(f"{queries_file}: no variant file or field for {variant!r}")
    corpus = [Document(str(d["id"]), str(d.get("title") or ""), str(d["text"])) for d in _read_jsonl(corpus_file)]
    qrels: dict[str, set[str]] = {}
    with qrels_file.open(encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            if float(row.get("score", 1)) > 0:
                qrels.setdefault(row["query-id"], set()).add(row["corpus-id"])
    queries = [Query(str(q["id"]), str(q[field_name])) for q in raw_queries if str(q["id"]) in qrels]
    answers = _read_answers(_pick(path, "answers", ".jsonl", variant))
    if corpus_variant is not None and corpus_variant != variant:
        # Across languages a right answer may quote the source's own spelling ("Kawann Short" for
        # "Кейван Шорт"): the corpus language's reference spans count too, where the set aligns its ids.
        for qid, values in _read_answers(_pick(path, "answers", ".jsonl", corpus_variant)).items():
            if qid in answers:
                answers[qid] = [*answers[qid], *(v for v in values if v not in answers[qid])]
    label_variant = variant if corpus_variant is None else f"{variant}->{corpus_variant}"
    return EvalSet(path.name, label_variant, corpus, queries, qrels, answers, meta, collection or collection_of(meta))
