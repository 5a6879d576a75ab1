from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from assets.collections import load_specs
from assets.sparse import analyze, bm25_document_vector, query_terms, term_id
from kb.events import route_push
from kb.settings import PROJECT_ROOT


def test_english_and_russian_words_are_stemmed() -> None:
    assert analyze("Retries retried") == ["retri", "retri"]
    assert analyze("платежи платежей") == ["платеж", "платеж"]


def test_chinese_text_yields_characters_and_bigrams() -> None:
    assert analyze("结算批") == ["结", "算", "批", "结算", "算批"]


def test_bm25_weights_saturate_with_term_frequency() -> None:
    vector = bm25_document_vector("kafka kafka kafka kafka lag", average_length=5)
    weights = dict(zip(vector.indices, vector.values, strict=True))
    assert weights[term_id("kafka")] > weights[term_id("lag")]
    assert weights[term_id("kafka")] < 4 * weights[term_id("lag")]
    assert query_terms("Kafka lag kafka") == sorted({term_id("kafka"), term_id("lag")})


def test_a_sixth_collection_is_a_config_change(tmp_path: Path) -> None:
    config = yaml.safe_load((PROJECT_ROOT / "collections.yaml").read_text())
    config["collections"]["adrs"] = {
        "chunk_tokens": 300,
        "chunk_overlap": 30,
        "splitter": "prose",
        "metadata": ["status"],
        "source": {"kind": "folder", "path": "adr"},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    specs = {s.name: s for s in load_specs(tmp_path / "c.yaml")}
    assert len(specs) == 6
    assert specs["adrs"].chunk_tokens == 300 and specs["adrs"].source.path == str(tmp_path / "adr")
    assert specs["incidents"].chunk_tokens == 512 and specs["incidents"].chunk_overlap == 50


def test_overlap_not_below_size_is_refused(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("collections:\n  x:\n    chunk_tokens: 100\n    chunk_overlap: 100\n    source: {path: a}\n")
    with pytest.raises(ValidationError, match="chunk_overlap"):
        load_specs(tmp_path / "c.yaml")


def test_a_push_is_routed_to_the_collections_bound_to_its_repository(sample_specs) -> None:  # type: ignore[no-untyped-def]
    bound = [
        s.model_copy(update={"source": s.source.model_copy(update={"repository": "payments/gateway", "subdir": "src"})})
        if s.name == "code_snippets"
        else s
        for s in sample_specs
    ]
    payload = {
        "repository": {"full_name": "payments/gateway"},
        "commits": [{"added": ["src/a.py"], "modified": ["src/b.go", "README.md"]}, {"removed": ["src/c.py"]}],
    }
    assert route_push(payload, bound) == {"code_snippets": ["a.py", "b.go", "c.py"]}


def test_common_terms_score_but_do_not_select_candidates() -> None:
    from assets.index import candidate_terms

    frequencies = {1: 900, 2: 30, 3: 40, 4: 0}  # in 1,000 chunks: one common term, two rare, one unseen
    assert sorted(candidate_terms(frequencies, 1000, 50)) == [2, 3]
    # Too few chunks hold the rare terms to fill the list: the next rarest terms join until it can fill.
    assert sorted(candidate_terms(frequencies, 1000, 100)) == [1, 2, 3]
    assert sorted(candidate_terms({1: 900, 2: 600, 3: 30}, 1000, 100)) == [2, 3]
    assert candidate_terms({1: 900}, 1000, 10) == [1]
