"""Client housekeeping: the chat titles, tags and follow-up suggestions a chat client asks the model to write.

Open WebUI (and clients like it) send these through the same chat endpoint, often naming the knowledge-base
model. They are not questions: they never reach retrieval or the session store, and get a short plain answer
from the LLM. `UTILITY_MODEL` is the model to set as such a client's task model; any request naming it is
answered the same way.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol

UTILITY_MODEL = "kb-utility"
UTILITY_MAX_TOKENS = 256

# Open WebUI's task templates all start with "### Task:" and quote the chat in <chat_history> (titles, tags,
# follow-ups, search queries, autocompletion, image prompts); its emoji and multi-model prompts have their own openings.
_TASK_KINDS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("title", re.compile(r"(?i)generate a (concise|short)[^\n]{0,40}title")),
    ("tags", re.compile(r"(?i)generate 1-3 broad tags|\"tags\"\s*:")),
    ("follow_up", re.compile(r"(?i)follow[_ -]?ups?|messages this user might naturally send next")),
    ("queries", re.compile(r"(?i)\"queries\"\s*:|generating search queries")),
    ("autocomplete", re.compile(r"(?i)autocompletion system")),
    ("image_prompt", re.compile(r"(?i)image generation")),
)
_TASK_OPENING = re.compile(r"^\s*#{2,4}\s*Task:\s*\n", re.I)
_OTHER_OPENINGS = (
    re.compile(r"^\s*Your task is to reflect the speaker's likely facial expression", re.I),  # Open WebUI's emoji task
    re.compile(r"^\s*You have been provided with a set of responses from various models", re.I),  # its merge task
)


class HasText(Protocol):
    role: str

    def text(self) -> str: ...


def housekeeping_kind(messages: Sequence[HasText]) -> str | None:
    """The kind of housekeeping the last user message asks for ('title', 'tags', …, 'other'), or None for a question."""
    last = next((m.text() for m in reversed(messages) if m.role == "user"), "")
    if _TASK_OPENING.match(last):
        if "<chat_history>" not in last and "### Output" not in last and "JSON" not in last:
            return None  # a user who starts their own question with "### Task:" is still asking a question
        head = last[:600]
        return next((kind for kind, cue in _TASK_KINDS if cue.search(head)), "other")
    if any(opening.match(last) for opening in _OTHER_OPENINGS):
        return "other"
    return None
