"""CI gate on answers: a few xquad questions per language (en, and ru / zh over the en corpus) and as many
off-topic probes, asked through `AnswerEngine` with the embedded 0.5B model; floors in evals/gate.json
under `answers`. The full figures come from `kb eval answers`; this catches a change that makes answers
cite sources for general knowledge, stop refusing off-topic questions, or refuse answerable ones."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from evals.answers import evaluate_answers
from kb.models import MODELS, provision
from kb.platform import Platform, free_port
from kb.settings import PROJECT_ROOT, EmbeddingSettings, IndexSettings, LLMSettings, PlatformSettings, PostgresSettings

EVALSETS = Path(os.environ.get("KB_EVALSETS", PROJECT_ROOT.parent / "shared" / "evalsets"))
GATE = json.loads((PROJECT_ROOT / "evals" / "gate.json").read_text())["answers"]

# On a developer machine without the shared sets the gate cannot run; in CI it must.
pytestmark = [
    pytest.mark.answers,
    pytest.mark.skipif(
        not EVALSETS.is_dir() and not os.environ.get("CI"), reason=f"shared eval sets not found at {EVALSETS} (set KB_EVALSETS)"
    ),
]


@pytest.fixture(scope="module")
def llm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LLMSettings, str]]:
    """The embedded llama.cpp server with the gate's model, started as `kb eval answers` starts it."""
    settings = LLMSettings(backend="embedded", model=GATE["model"], context_window=4096, max_answer_tokens=256, timeout_s=900)
    platform = PlatformSettings()
    runtime = Platform(platform, PostgresSettings(), IndexSettings())
    try:
        model_path = provision(MODELS[settings.model], platform.data_dir / "models")
        url = runtime.start_llm(model_path, settings.model, free_port(), settings.context_window, settings.threads,
                                tmp_path_factory.mktemp("llm-logs"))  # fmt: skip
        runtime.wait_for(f"{url}/models", "the LLM server", timeout=300)
        yield settings, url
    finally:
        runtime.stop()


@pytest.mark.parametrize("case", GATE["cases"], ids=lambda c: c["id"])
def test_answers_stay_within_the_gate(case: dict, llm: tuple[LLMSettings, str]) -> None:  # type: ignore[type-arg]
    settings, url = llm
    result = evaluate_answers(
        EVALSETS / case["dataset"], case.get("variant"), None, GATE["questions"], url, PlatformSettings(), EmbeddingSettings(),
        settings, Console(quiet=True), corpus_variant=case.get("corpus_variant"), probes=GATE["probes"],
    )  # fmt: skip
    assert result["questions"] == GATE["questions"] and result["off_topic_probes"] == GATE["probes"]
    assert result["probes_language"] == case["variant"], "off-topic probes must be asked in the questions' language"
    figures = {k: v for k, v in result.items() if k != "rows"}
    for metric, floor in (GATE["min"] | case.get("min", {})).items():
        assert result[metric] is not None and result[metric] >= floor, (
            f"{case['id']} {metric} {result[metric]} < {floor}: {figures}"
        )
    for metric, ceiling in (GATE["max"] | case.get("max", {})).items():
        assert result[metric] is not None and result[metric] <= ceiling, (
            f"{case['id']} {metric} {result[metric]} > {ceiling}: {figures}"
        )
