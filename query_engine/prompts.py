"""Prompts and the small language facts answers need."""

from __future__ import annotations

from assets.parse import detect_language

LANGUAGE_NAMES = {"en": "English", "ru": "Russian", "zh": "Simplified Chinese"}

NOT_FOUND = {
    "en": "I could not find this in the knowledge base.",
    "ru": "Я не нашёл ответа на этот вопрос в базе знаний.",
    "zh": "我在知识库中没有找到这个问题的答案。",
}

# Said before the source sentence quoted when the model found no answer in sources judged relevant.
CLOSEST_PASSAGE = {
    "en": "The sources do not state the answer in so many words; the closest passage is [{n}]:",
    "ru": "Прямого ответа в источниках нет; ближе всего к вопросу этот фрагмент [{n}]:",
    "zh": "资料没有直接给出答案；最接近的原文见 [{n}]：",
}

# Said before an answer shown in its sources' language when its translation did not keep its markers or numbers.
IN_SOURCE_LANGUAGE = {
    "en": "The answer, in the language of its sources:",
    "ru": "Ответ на языке источников:",
    "zh": "按资料原文作答：",
}

# Turns an answer written in its sources' language into the asker's (engine.py, the second ask across languages).
TRANSLATE_PROMPT = """Translate the user's text into {language}. Keep every citation marker such as [1], and every
name, number, command, path and code span, exactly as written. Reply with the translation only."""

SYSTEM_PROMPT = """You are the knowledge assistant of an engineering team.
Answer the question using only the numbered sources below.
Rules:
- Cite every statement with the number of its source in square brackets, like [1] or [2][3].
- If the sources do not answer the question, reply exactly: "{not_found}"
- Answer in {language}, whatever the language of the sources.
- Be concise and precise; keep commands, names and numbers exactly as written in the sources.

Sources:
{sources}"""


def question_language(text: str) -> str:
    return detect_language(text)


def estimate_tokens(text: str) -> int:
    """An upper estimate for Qwen-style BPE tokenizers: CJK characters count one each, other text one
    per 2.5 characters. Used to keep prompts inside the context window with room for the answer."""
    cjk = sum(1 for ch in text if "\u3400" <= ch <= "\u9fff")
    return cjk + (len(text) - cjk) * 2 // 5 + 1
