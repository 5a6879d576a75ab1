"""Model routing per task: coder (code generation and review), reasoner (troubleshooting, log analysis),
writer (documentation). A cheap classifier picks the task from the question; an explicit model wins.
The embedded default routes every task to the one embedded model."""

from __future__ import annotations

import re
from typing import Literal

Task = Literal["coder", "reasoner", "writer"]
TASKS: tuple[Task, ...] = ("coder", "reasoner", "writer")

# Word stems in English, Russian and Chinese; the first task with a hit wins, reasoner is the default.
_CUES: dict[Task, re.Pattern[str]] = {
    "coder": re.compile(
        r"(?i)\b(write|implement|refactor|review|fix the code|function|class|regex|unit test|snippet|sql query|bash script)\b"
        r"|напиши|реализ|рефактор|ревью|функци|код\b|скрипт|写|实现|重构|代码审查|函数|脚本"
    ),
    "writer": re.compile(
        r"(?i)\b(document|documentation|summari[sz]e|draft|postmortem|release notes|announcement|readme)\b"
        r"|документ|опиши|составь|резюм|постмортем|文档|总结|撰写|复盘"
    ),
    "reasoner": re.compile(r".", re.S),
}


def classify_task(question: str) -> Task:
    """The task a question asks for, from cue words; troubleshooting (reasoner) when none matches."""
    for task in ("coder", "writer"):
        if _CUES[task].search(question):
            return task
    return "reasoner"


def resolve_model(requested: str, question: str, routes: dict[str, str], default_model: str) -> tuple[str, Task | None]:
    """The model name to answer with, and the routed task (None when the request named a model itself)."""
    if requested in TASKS:
        return routes.get(requested, default_model), requested  # type: ignore[return-value]
    if requested != "default":
        return requested, None
    task = classify_task(question)
    return routes.get(task, default_model), task
