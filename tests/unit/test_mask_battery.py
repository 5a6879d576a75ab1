"""The masker against the battery of evals/masking.py: no secret survives in any container it travels in
(prose in three languages, code, YAML, .env, JSON, URLs), and no identifier is eaten."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from assets.mask import MaskResult, find_secrets, mask_secrets
from evals.masking import BENIGN_CASES, BENIGN_TEXTS, CONTAINERS, SECRET_CASES, Case, battery_report, leaked, masking_report


@pytest.mark.parametrize("container", list(CONTAINERS))
@pytest.mark.parametrize("case", SECRET_CASES, ids=lambda c: c.kind)
def test_no_piece_of_a_secret_survives_masking(case: Case, container: str) -> None:
    assert leaked(case, container) == []


@pytest.mark.parametrize("container", list(CONTAINERS))
@pytest.mark.parametrize("case", SECRET_CASES, ids=lambda c: c.kind)
def test_masked_text_masks_to_itself_and_has_no_findings(case: Case, container: str) -> None:
    once = mask_secrets(CONTAINERS[container](case)).text
    assert mask_secrets(once).text == once and find_secrets(once) == []


@pytest.mark.parametrize("container", list(CONTAINERS))
@pytest.mark.parametrize("case", BENIGN_CASES, ids=lambda c: c.kind)
def test_identifiers_come_out_unchanged(case: Case, container: str) -> None:
    text = CONTAINERS[container](case)
    assert mask_secrets(text) == MaskResult(text, {})


@pytest.mark.parametrize("text", BENIGN_TEXTS)
def test_secret_names_around_no_secret_are_left_alone(text: str) -> None:
    assert mask_secrets(text) == MaskResult(text, {})


def test_the_leak_check_sees_a_secret_the_masker_does_not_know() -> None:
    unknown = Case("unknown", "plain-words-no-secret-shape", "note")
    assert leaked(unknown, "prose-en") and leaked(unknown, "url")


def test_the_battery_has_thirty_kinds_and_reports_none_leaked() -> None:
    report = battery_report()
    assert report["kinds"] >= 30 and {"prose-en", "prose-ru", "prose-zh", "code", "yaml", "env", "json", "url"} <= set(
        report["containers"]
    )
    assert report["cases"] == report["kinds"] * len(report["containers"])
    assert (report["leaked_cases"], report["leaks"], report["false_positives"], report["altered_benign_texts"]) == (0, {}, {}, [])


def test_report_counts_masks_per_source_and_shows_contexts_without_values(tmp_path: Path) -> None:
    docs = tmp_path / "kb"
    docs.mkdir()
    (docs / "runbook.md").write_text("Call +7 (916) 123-45-67, then set DB_PASSWORD=Zq8wLm3Tx9 in .env.\n", encoding="utf-8")
    (docs / "scan.pdf").write_bytes(b"%PDF-1.4 \x00\x01")
    corpus = tmp_path / "corpus.jsonl"
    rows = [{"id": "a", "text": "ИНН 7707083893, commit 5f3d11c"}, {"id": "b", "text": "nothing here, version 1.24.3"}]
    corpus.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")

    report = masking_report([docs, corpus])

    kb, jsonl = report["sources"]
    assert (kb["texts"], kb["skipped"], kb["counts"]) == (1, 1, {"phone": 1, "credential": 1})
    assert (jsonl["texts"], jsonl["counts"]) == (2, {"inn": 1}) and report["counts"] == {"phone": 1, "credential": 1, "inn": 1}
    phone, credential = kb["examples"]["phone"][0], kb["examples"]["credential"][0]
    assert "[MASKED:phone]" in phone["context"] and "123-45-67" not in phone["context"] and phone["shape"] == "+9 (999) 999-99-99"
    assert "DB_PASSWORD=[MASKED:credential]" in credential["context"] and "Zq8wLm3Tx9" not in json.dumps(report)
    assert jsonl["examples"]["inn"][0] == {
        "source": "corpus.jsonl:a",
        "context": "ИНН [MASKED:inn], commit 5f3d11c",
        "shape": "9999999999",
    }
