"""Model routing per task: a cheap classifier, an explicit model wins, the embedded default is one model."""

from __future__ import annotations

from kb.settings import LLMSettings
from query_engine.routing import classify_task, resolve_model


def test_questions_route_to_their_task_in_three_languages() -> None:
    assert classify_task("Write a function that validates an IBAN") == "coder"
    assert classify_task("Напиши скрипт для ротации ключей") == "coder"
    assert classify_task("写一个函数计算 Luhn 校验") == "coder"
    assert classify_task("Draft release notes for gateway-core 2.42.0") == "writer"
    assert classify_task("Составь документ о схеме ledger") == "writer"
    assert classify_task("why is gateway-core restarting in payments?") == "reasoner"
    assert classify_task("为什么 settlement-batch 失败了？") == "reasoner"


def test_explicit_model_wins_and_routes_fall_back_to_the_default_model() -> None:
    routes = {"coder": "big-coder", "reasoner": "small", "writer": "small"}
    assert resolve_model("default", "Write a function", routes, "small") == ("big-coder", "coder")
    assert resolve_model("writer", "anything", routes, "small") == ("small", "writer")
    assert resolve_model("my-model", "Write a function", routes, "small") == ("my-model", None)
    embedded = LLMSettings().route_table()
    assert set(embedded.values()) == {LLMSettings().model}  # every task to the one embedded model
