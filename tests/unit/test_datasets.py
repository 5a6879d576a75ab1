"""The evaluation-set loader: variants, cross-lingual corpora and their reference answers."""

from __future__ import annotations

import json
from pathlib import Path

from evals.datasets import load_dataset


def _write_jsonl(path: Path, rows: list[dict[str, object]]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _aligned_set(root: Path) -> Path:
    for lang, title, answer in (("en", "Panthers", "Kawann Short"), ("ru", "Пантеры", "Кейван Шорт")):
        _write_jsonl(root / f"corpus.{lang}.jsonl", [{"id": "p000", "title": title, "text": f"{answer} led the team."}])
        _write_jsonl(root / f"queries.{lang}.jsonl", [{"id": "q1", "text": f"Who led? ({lang})"}])
        (root / f"qrels.{lang}.tsv").write_text("query-id\tcorpus-id\tscore\nq1\tp000\t1\n", encoding="utf-8")
        _write_jsonl(root / f"answers.{lang}.jsonl", [{"id": "q1", "answers": [answer]}])
    return root


def test_cross_lingual_run_accepts_the_corpus_language_spelling_of_an_answer(tmp_path: Path) -> None:
    evalset = load_dataset(_aligned_set(tmp_path), "ru", corpus_variant="en")
    assert evalset.label == f"{tmp_path.name}:ru->en"
    assert evalset.corpus[0].title == "Panthers"
    assert evalset.answers["q1"] == ["Кейван Шорт", "Kawann Short"]


def test_same_language_run_keeps_only_its_own_references(tmp_path: Path) -> None:
    evalset = load_dataset(_aligned_set(tmp_path), "ru")
    assert evalset.corpus[0].title == "Пантеры"
    assert evalset.answers["q1"] == ["Кейван Шорт"]
