"""Faithful citations: an answer keeps a [n] only where source n supports the sentence, and a sentence
that states a name, path, command or number written in no source and no other evidence is left out.

The small model writes fluent steps that no document holds (`./fix_ledger.sh`) and cites a source for
them, and it answers general questions from its own knowledge while citing whatever was retrieved. Two
checks catch both while the answer streams: support (does source n say this sentence?) and identifiers
(is every literal the sentence states written somewhere the answer may take it from?). Answers may be
in another language than their sources, so support is lexical or, with a multilingual encoder,
semantic; identifiers are language-neutral and compared literally.
"""

from __future__ import annotations

import copy
import re
import threading
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from assets.embed import Embedder
from assets.parse import detect_language
from assets.sparse import analyze
from query_engine.prompts import NOT_FOUND

if TYPE_CHECKING:
    from query_engine.engine import SourceRef

# Thresholds measured with UniversalSentenceEncoder on ../shared/evalsets/xquad_en_ru_zh (dev split, 240
# paragraphs; every supported pair has one unsupported twin: the same sentence against another paragraph of
# the same Wikipedia article). Chosen on the even paragraphs, as balanced accuracy; reported on the odd ones:
# - lexical, question + answer span vs its paragraph in the same language (1,200 pairs): share >= 0.45 is
#   94.9 % correct (supported 93.3 %, unsupported 96.5 %; en 97.2 %, ru 96.5 %, zh 91.0 %). The cosine on the
#   same pairs is worse (en 85.0 %: it sees the topic, not the claim), hence lexical only within a language;
# - cosine >= 0.45 across languages: ru/zh sentences vs the English paragraph they were translated from
#   (2,474 pairs) 95.2 % correct (ru 95.5 %, zh 94.8 %; supported 97.8 %, unsupported 92.6 %); ru/zh question
#   + answer vs the English paragraph (800 pairs) 73.6 % (supported 49.5 %, unsupported 97.8 %: a question is
#   a weak claim);
# - everything together (4,474 pairs): 91.2 % correct (supported 87.9 %, unsupported 94.5 %).
# Comparing with source sentences alone scored as well as adding ~300-character windows of consecutive
# sentences (95.5 vs 94.8 % on ru sentences, 74.5 vs 74.8 % on ru questions) at half the encoding.
SUPPORT_THRESHOLD = 0.45
COSINE_THRESHOLD = 0.45
# Below this (same scale) a statement is a guess: with `sources_only`, an answer of guesses alone is the refusal. Between
# it and SUPPORT_THRESHOLD a statement is plausible: said, without a marker. The citation threshold is for precision and
# misses half of the correct cross-lingual answers (the 0.44 of answerable ru questions refused after answering, in the
# first 100-question run); measured on xquad dev (every third question, 300 per language; claim = question + answer
# span; against the sentences of its own paragraph, and the best of 5 paragraphs of other articles):
# - across languages (ru/zh claims, English paragraphs): 89.7 % / 86.5 % of supported claims reach 0.30 (54.8 / 56.3 %
#   reach 0.45), 4.0 % / 1.6 % of other-article claims do;
# - within a language (lexical share): en / ru / zh supported >= 99 / 99 / 97.6 %, other-article 4.0 / 3.2 / 0 %.
# "The capital of France is Paris", "Канада имеет столицу Торонто" score 0.13 against the sample runbooks.
GUESS_THRESHOLD = 0.30
MIN_JUDGED_CHARS = 20  # shorter pieces ("Yes.", "1.", a heading) carry too little to judge support on
# ... counted in English characters: a CJK character says about as much as 3.7 Latin ones (xquad's parallel
# paragraphs: 188,362 English characters against 47,375 CJK + 13,223 other Chinese ones). Counted as one, a whole
# Chinese sentence ("李白是唐朝的诗人。", 9 characters) was too short to judge: released uncited, never a guess.
CJK_CHAR_WEIGHT = 3.7
MAX_NOTE_ITEMS = 8
# What a grounded unit is: a statement a source supports, one no source comes near (below GUESS_THRESHOLD), or
# neither (plausible but not cited, too short to judge, a heading, a question, a withheld sentence).
SUPPORTED, UNSUPPORTED, NEUTRAL = "supported", "unsupported", "neutral"

LEFT_OUT_NOTE = {
    "en": "Left out (not in the sources): {items}.",
    "ru": "Опущено (этого нет в источниках): {items}.",
    "zh": "已省略（来源中没有这些内容）：{items}。",
}
# An earlier answer in the conversation is evidence, but not its note: what it left out stays out.
_OWN_NOTE = re.compile("|".join(re.escape(note.split("{items}")[0]) + r"[^\n]*" for note in LEFT_OUT_NOTE.values()))

# Function words, removed before the lexical share: "the", "is" and "of" are in every English source
# and would make "The capital of France is Paris" half supported by a ledger runbook.
_STOP_WORDS = """a an the and or but if then else of to in on at by for with from into onto over under about as
is are was were be been being am do does did done have has had having it its this that these those there here
which who whom whose what when where why how all any both each few more most other some such no nor not only
own same so than too very can could will would shall should may might must you your yours we our ours they their
them he she his her him i me my mine us also just via per up out off again once one use used using please
и в во не что он на я с со как а то все она так его но да ты к у же вы за бы по только ее мне было вот от меня
еще нет о из ему теперь когда даже ну вдруг ли если уже или ни быть был него до вас нибудь опять уж вам ведь там
потом себя ничего ей может они тут где есть надо ней для мы тебя их чем была сам чтоб без будто чего раз тоже
себе под будет ж тогда кто этот того потому этого какой совсем ним здесь этом один почти мой тем чтобы нее сейчас
были куда зачем всех никогда можно при наконец два об другой хоть после над больше тот через эти нас про всего
них какая много разве три эту моя впрочем хорошо свою этой перед иногда лучше чуть том нельзя такой им более
всегда конечно всю между это эта также нужно следует""".split()
_CJK_STOP_BIGRAMS = frozenset(
    "我们 你们 他们 它们 这个 那个 这些 那些 可以 如果 因为 所以 但是 没有 就是 还是 以及 或者 "
    "进行 需要 应该 一个 什么 怎么 如何 是否 已经 通过 然后 其中 以下 以上 之后 之前 时候 这样 那样".split()
)
_STOP_TERMS = frozenset(t for word in _STOP_WORDS for t in analyze(word)) | _CJK_STOP_BIGRAMS

_CJK_CHAR = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_SOURCE_SENTENCE = re.compile(r"(?<=[.!?])\s+|(?<=[。！？])|\n+")

# Citation markers: [n], [n][m] (two matches) and [n, m]; tool results are cited by label in the agent.
_MARKER = re.compile(r"\[(\d{1,3}(?:\s*,\s*\d{1,3})*)\]")
_TOOL_LABEL = re.compile(r"\[[a-z][\w.-]*: [^\[\]\n]*\]")
_TRAILING_CITES = re.compile(r"(?:[ \t]*(?:\[\d{1,3}(?:\s*,\s*\d{1,3})*\]|\[[a-z][\w.-]*: [^\[\]\n]*\]))+")
_MAYBE_CITE = re.compile(r"[ \t]*(?:\[[^\[\]\n]{0,80})?")  # what could still grow into a marker

# Sentence ends: '.', '!' and '?' only when whitespace follows (3.14, e.g.x, file.yaml); '。！？' and newline always.
_BOUNDARY = re.compile(r"[.!?]|[。！？\n]")
_LIST_NUMBER = re.compile(r"[ \t]*\d{1,3}")  # "1." at the start of a line numbers a list, it ends nothing
_FENCE_CLOSE = re.compile(r"^[ \t]*```[ \t]*(?:\n|\Z)", re.M)
_LIST_PREFIX = re.compile(r"^[ \t]*(?:\d{1,3}[.)]|[-*+•])(?=\s|$)", re.M)
_BARE_LIST_MARKER = re.compile(r"\s*(?:\d{1,3}[.)]|[-*+•])?\s*")

# Identifiers, taken in this order and blanked once taken, so `settlement-batch.log` is one identifier.
_BACKTICK = re.compile(r"`([^`\n]+)`")
_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s<>()\[\]{}\"'`]+", re.I)
_PATH = re.compile(
    r"(?<![\w.~/-])(?:~|\.{1,2})?/[\w.@%+=:-]+(?:/[\w.@%+=:-]+)*/?|(?<![\w.~/-])[\w.-]+(?:/[\w.@%+=:-]+)+/?", re.ASCII
)
_DOTTED = re.compile(r"(?<![\w.@/-])[A-Za-z_][\w-]*(?:\.[A-Za-z_][\w-]*)+(?![\w])", re.ASCII)
_FLAG = re.compile(r"(?<![\w-])--[A-Za-z][\w-]*", re.ASCII)
_VERSION = re.compile(r"(?<![\w.])v\d+(?:\.\d+)+", re.ASCII)
_WORD = re.compile(r"(?<![\w-])\w+(?:-\w+)*(?![\w-])", re.ASCII)
_CAMEL = re.compile(r"[a-z][A-Z]|[A-Z]{2}[a-z]{2}")
_NUMBER = re.compile(r"(?<![\w.,:/-])\d+(?:[.,:]\d+)*", re.ASCII)
_ANY_NUMBER = re.compile(r"\d+(?:[.,:]\d+)*")
_GROUPED = re.compile(r"\d{1,3}(?:[,.]\d{3})+")
_OPENING, _CLOSING = "\"'([{<*", "\"')]}>,;:!?.*"  # quotes and brackets around a literal, punctuation after it
_CODE_TRIM = "\"'()[]{},;"
# English compounds that are not identifiers: "read-only", "follow-up", "up-to-date" name nothing a
# source must contain. A hyphenated word made only of these parts is prose.
_PROSE_PARTS = frozenset(
    """re pre non co self well read write only up down to date follow long short high low real time built in on off
    out end multi cross sub semi one two three first second third party so called state of the art day per case by
    step side open source user friendly e mail x anti post all like based wide level free safe aware known driven
    facing term run set hand back front line opt sign check roll fail over hot cold hard soft fine grained point
    peer key value mid year month week hour minute full part make sure double single no go let ad hoc""".split()
)


@dataclass
class GroundingReport:
    """What grounding did to one answer."""

    sentences: int = 0
    cited_sentences: int = 0
    supported_citations: int = 0
    dropped_markers: int = 0
    withheld_sentences: int = 0
    unsupported_identifiers: list[str] = field(default_factory=list)
    refused_after_grounding: bool = False  # nothing the model wrote was left to say
    model_refused: bool = False  # the model itself wrote the not-found sentence (so grounding refused nothing it said)
    closest_passage: bool = False  # the engine quoted the closest source sentence instead of the refusal (engine.py)
    retried: bool = False  # the model refused sources judged relevant and was asked again on the closest ones (engine.py)
    translated: bool = False  # asked again in its sources' language, the answer was translated into the asker's (engine.py)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- support ----------------------------------------------------------------------------------------


def content_terms(text: str) -> set[str]:
    """Terms that carry meaning: no stop words, no 1-character terms; CJK text counts by its bigrams
    (single characters match almost any Chinese text)."""
    return {t for t in analyze(text) if len(t) > 1 and t not in _STOP_TERMS}


def judged_length(text: str) -> float:
    """The length of a text in English characters (CJK_CHAR_WEIGHT), the measure MIN_JUDGED_CHARS is in."""
    return len(text) + (CJK_CHAR_WEIGHT - 1) * len(_CJK_CHAR.findall(text))


def source_sentences(text: str) -> list[str]:
    """The pieces of a source a sentence is compared with: its sentences and lines, once each."""
    return list(dict.fromkeys(s.strip() for s in _SOURCE_SENTENCE.split(text) if s and s.strip()))


class SupportScorer:
    """How well each of a fixed set of source texts supports a sentence. The sources are fixed for an
    answer, so their terms and sentence vectors are computed once.

    The encoder judges a sentence only against sources in another language: within one language the
    lexical share separates supported from unsupported pairs better (measured above), while across
    languages it is near 0 whatever the sentence says."""

    def __init__(self, texts: Sequence[str], encoder: Embedder | None = None) -> None:
        self.texts = list(texts)
        self.encoder = encoder
        self.languages = [detect_language(t) for t in self.texts]
        self._terms = [content_terms(t) for t in self.texts]
        self._vectors: dict[int, NDArray[np.float32]] = {}
        self._lock = threading.Lock()

    def prepare(self, indices: Sequence[int] | None = None) -> None:
        """Embed the sentences of these sources (all by default) in one batch, e.g. in a thread while the
        LLM reads its prompt."""
        if self.encoder is None:
            return
        with self._lock:
            wanted = [i for i in (range(len(self.texts)) if indices is None else indices) if i not in self._vectors]
            per_source = [source_sentences(self.texts[i]) for i in wanted]
            flat = [piece for pieces in per_source for piece in pieces]
            if not flat:
                self._vectors.update({i: np.zeros((0, self.encoder.dimension), np.float32) for i in wanted})
                return
            vectors = self.encoder.embed_queries(flat)
            bounds = np.cumsum([0, *(len(w) for w in per_source)])
            self._vectors.update({i: vectors[bounds[k] : bounds[k + 1]] for k, i in enumerate(wanted)})

    def other_language(self, language: str) -> list[int]:
        """The sources the encoder judges for a sentence in `language`."""
        return [i for i, source_language in enumerate(self.languages) if source_language != language]

    def lexical(self, sentence: str) -> list[float]:
        """Per source: the share of the sentence's content terms that the source contains."""
        terms = content_terms(sentence)
        return [len(terms & source) / len(terms) if terms else 0.0 for source in self._terms]

    def cosine(self, sentence: str, indices: Sequence[int] | None = None) -> list[float]:
        """Per source: the best cosine between the sentence and one of the source's sentences; 0 for sources
        not in `indices` (all by default) and without an encoder."""
        chosen = list(range(len(self.texts)) if indices is None else indices)
        scores = [0.0] * len(self.texts)
        if self.encoder is None or not sentence.strip() or not chosen:
            return scores
        self.prepare(chosen)
        vector = self.encoder.embed_queries([sentence])[0]
        for i in chosen:
            vectors = self._vectors[i]
            scores[i] = float((vectors @ vector).max()) if len(vectors) else 0.0
        return scores

    def scores(self, sentence: str) -> list[float]:
        """Per source: the lexical share, or for a source in another language the larger of it and the
        cosine rescaled so that COSINE_THRESHOLD lands on SUPPORT_THRESHOLD. A source supports the
        sentence when its score reaches SUPPORT_THRESHOLD."""
        lexical = self.lexical(sentence)
        if self.encoder is None:
            return lexical
        cosine = self.cosine(sentence, self.other_language(detect_language(sentence)))
        return [max(a, _on_support_scale(c)) for a, c in zip(lexical, cosine, strict=True)]


def _on_support_scale(cosine: float) -> float:
    """A cosine rescaled so that COSINE_THRESHOLD lands on SUPPORT_THRESHOLD."""
    return min(1.0, cosine * SUPPORT_THRESHOLD / COSINE_THRESHOLD)


def support(sentence: str, source_text: str, encoder: Embedder | None = None) -> float:
    """How well one source supports one sentence, on the scale of SUPPORT_THRESHOLD."""
    return SupportScorer([source_text], encoder).scores(sentence)[0]


# -- identifiers ------------------------------------------------------------------------------------


def identifiers(text: str) -> list[str]:
    """The literals a sentence states that a source must hold for it to be true: `code spans`, URLs, paths,
    file and dotted names, --flags, versions, snake_case / ENV_VARS, camelCase, kebab-case, and numbers with
    two or more digits or a separator inside (30, 7.5, 10:00); list numbering at a line start is not one."""
    found: list[str] = []
    text = _LIST_PREFIX.sub(lambda m: " " * len(m.group()), text)

    def take(pattern: re.Pattern[str], accept: Callable[[str], bool] = lambda _: True) -> None:
        nonlocal text

        def blank(match: re.Match[str]) -> str:
            value = match.group(1).strip() if pattern is _BACKTICK else match.group().lstrip(_OPENING).rstrip(_CLOSING)
            if value and accept(value):
                found.append(value)
                return " " * len(match.group())
            return match.group()

        text = pattern.sub(blank, text)

    take(_BACKTICK)
    take(_URL)
    take(_PATH, _is_path)
    take(_DOTTED, lambda v: any(len(p) > 1 for p in v.split(".")))
    take(_FLAG)
    take(_VERSION)
    take(_WORD, _is_code_word)
    take(_NUMBER, lambda v: sum(ch.isdigit() for ch in v) >= 2 or not v.isdigit())
    return list(dict.fromkeys(found))


def _is_path(value: str) -> bool:
    """Absolute and home paths always; a relative one needs two slashes or a file extension ("and/or" is prose)."""
    if value.startswith(("/", "./", "../", "~/")):
        return len(value) > 1
    last = value.rstrip("/").rsplit("/", 1)[-1]
    return value.count("/") >= 2 or bool(re.search(r"\.[A-Za-z]\w*$", last))


def _is_code_word(word: str) -> bool:
    if not any(ch.isalpha() for ch in word):
        return False
    if "_" in word.strip("_") or _CAMEL.search(word):
        return True
    if "-" in word:
        return not all(part.lower() in _PROSE_PARTS for part in word.split("-"))
    return False


def _normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    text = re.sub(r"\\[nrt\"]", " ", text)  # tool results are JSON: "line\nline" holds words, not "nline"
    return re.sub(r"\s+", " ", text)


def _number_keys(number: str) -> set[str]:
    """Spellings of one number: 7,5 = 7.5 (Russian decimal comma), 1,000 = 1000, 02:00 = 2:00."""
    keys = {number, number.replace(",", ".")}
    if _GROUPED.fullmatch(number):
        keys.add(re.sub(r"[,.]", "", number))
    keys |= {k.lstrip("0") or "0" for k in keys}
    return keys


@lru_cache(maxsize=4096)
def _literal(value: str) -> re.Pattern[str]:
    """`value` as a whole token: not a part of a longer word on a side where it starts or ends with one."""
    left = r"(?<![0-9a-z_])" if value[:1].isalnum() else ""
    right = r"(?![0-9a-z_])" if value[-1:].isalnum() else ""
    return re.compile(left + re.escape(value) + right)


class KnownText:
    """Everything an answer may take a literal from: the sources (with their paths and sections) and the
    evidence (the question, tool results, the conversation)."""

    def __init__(self, texts: Sequence[str]) -> None:
        self.text = "\n".join(_normalise(t) for t in texts)
        self.numbers = {k for n in _ANY_NUMBER.findall(self.text) for k in _number_keys(n)}

    def holds(self, value: str) -> bool:
        normal = _normalise(value).strip()
        if not normal:
            return True
        if _ANY_NUMBER.fullmatch(normal):
            return bool(_number_keys(normal) & self.numbers)
        return bool(_literal(normal).search(self.text))

    def holds_code(self, code: str) -> list[str]:
        """The tokens of a command or code line that nothing holds; a line written whole somewhere passes."""
        if self.holds(code):
            return []
        unknown = []
        for token in code.split():
            token = token.strip(_CODE_TRIM)
            placeholder = token.startswith("<") or token.startswith("{") or token.startswith("$")
            if token and any(ch.isalnum() for ch in token) and not placeholder and not self.holds(token):
                unknown.append(token)
        return unknown

    def unknown(self, text: str) -> list[str]:
        """The identifiers of `text` that nothing holds."""
        missing: list[str] = []
        for value in identifiers(text):
            known = not self.holds_code(value) if " " in value else self.holds(value)
            if not known:
                missing.append(value)
        return missing

    def unknown_in_code(self, block: str) -> list[str]:
        """The tokens of a fenced code block that nothing holds; comment lines are prose and skipped."""
        lines = block.strip("\n").split("\n")
        body = [ln for ln in lines if not ln.strip().startswith("```")]
        missing: list[str] = []
        for line in body:
            if line.strip() and not line.strip().startswith(("#", "//")):
                missing.extend(self.holds_code(line.strip()))
        return list(dict.fromkeys(missing))


# -- the stream -------------------------------------------------------------------------------------


def split_units(text: str, at_line_start: bool, final: bool) -> tuple[list[str], str]:
    """Completed units of `text` (sentences with their end and any markers written after it, or a whole
    fenced code block) and the rest, held until the next text shows where it ends."""
    units: list[str] = []
    start = pos = 0
    while True:
        line_start = (at_line_start if start == 0 else text[start - 1] == "\n") and pos == start
        if line_start:
            ahead = text[start:].lstrip(" \t")
            if ahead.startswith("```"):
                end = _fence_end(text, start, final)
                if end is None:
                    return units, text[start:]
                units.append(text[start:end])
                start = pos = end
                continue
            if ahead and "```".startswith(ahead) and not final:
                return units, text[start:]  # may still open a code block
        match = _BOUNDARY.search(text, pos)
        if match is None:
            break
        end = match.end()
        if match.group() in ".!?":
            if end == len(text) and not final:
                return units, text[start:]
            if end < len(text) and not text[end].isspace():
                pos = end
                continue
            at_line = at_line_start if start == 0 else text[start - 1] == "\n"
            if match.group() == "." and at_line and _LIST_NUMBER.fullmatch(text, start, match.start()):
                pos = end
                continue
        if match.group() != "\n":
            trailing = _TRAILING_CITES.match(text, end)
            end = trailing.end() if trailing else end
            if not final and _MAYBE_CITE.fullmatch(text, end):
                return units, text[start:]  # markers written after the full stop belong to this sentence
        units.append(text[start:end])
        start = pos = end
    rest = text[start:]
    if final and rest:
        return [*units, rest], ""
    return units, rest


def _fence_end(text: str, start: int, final: bool) -> int | None:
    opening_end = text.find("\n", start)
    if opening_end == -1:
        return len(text) if final else None
    close = _FENCE_CLOSE.search(text, opening_end + 1)
    if close is None or (not close.group().endswith("\n") and not final):
        return len(text) if final else None
    return close.end()


class GroundedStream:
    """Streams an answer sentence by sentence, keeping a citation only where its source supports the
    sentence and withholding sentences that state identifiers no source or evidence holds.

    `feed` returns only completed sentences, so what it emits is final; at `final=True` a note names what
    was left out, and `report` says what was done. `evidence` holds the other texts facts may come from
    (the question, tool results, the conversation); `redact` masks what the note and report repeat.

    With `sources_only` (an answer with nothing but the sources to draw on: no conversation, no tool
    results), an answer none of whose statements a source supports is a guess from the model's own
    knowledge ("Paris", for a question the knowledge base does not cover): it becomes the refusal. Until a
    supported statement comes, what the model wrote is held back, so nothing of such a guess is sent."""

    def __init__(
        self, sources: Sequence[SourceRef], evidence: Sequence[str] = (), language: str = "en",
        encoder: Embedder | None = None, redact: Callable[[str], str] | None = None, sources_only: bool = False,
        question: str = "",
    ) -> None:  # fmt: skip
        self.sources = list(sources)
        self.question = question  # what a short answer ("John Elway.") is the rest of
        self.sources_only = sources_only
        self.language = language
        self.redact = redact or (lambda text: text)
        self.scorer = SupportScorer([s.text for s in self.sources], encoder)
        where = [f"{s.collection}/{s.doc_id} {s.section or ''}" for s in self.sources]
        self.known = KnownText([*(s.text for s in self.sources), *where, *(_OWN_NOTE.sub("", e) for e in evidence)])
        self._index = {s.n: i for i, s in enumerate(self.sources)}
        self._start()

    def _start(self) -> None:
        """The state of one answer being streamed (the sources, their vectors and the known text are fixed)."""
        self.report = GroundingReport()
        self._buffer = ""
        self._emitted = ""
        self._at_line_start = True
        self._line_withheld = False
        self._stated = False  # whether an emitted unit said something beyond markers and whitespace
        self._held = ""  # what came before that (or, with sources_only, before a supported statement)
        self._guessed = False  # with sources_only: a held statement that no source supports
        self._kind = NEUTRAL  # what the last grounded unit was
        self._written = ""  # the model's text as it came

    def fresh(self, language: str | None = None) -> GroundedStream:
        """A new stream over the same sources and evidence, sharing the sentence vectors computed so far; with
        `language`, for an answer written in that language."""
        stream = copy.copy(self)
        stream.language = language or self.language
        stream._start()
        return stream

    def prepare(self) -> None:
        """Embed the sentences of the sources in another language than the answer's now (they are the ones
        the encoder judges); otherwise the first sentence that needs them does it."""
        self.scorer.prepare(self.scorer.other_language(self.language))

    def feed(self, delta: str, final: bool = False) -> str:
        self._written += delta
        units, self._buffer = split_units(self._buffer + delta, self._at_line_start, final)
        out: list[str] = []
        for unit in units:
            self._kind = NEUTRAL
            grounded = self._ground(unit)
            out.append(self._release(grounded))
            self._at_line_start = unit.endswith("\n")
        self._emitted = (self._emitted + "".join(out))[-2:]  # where the note starts depends on how the text ends
        if final:
            self.report.model_refused = any(phrase.rstrip(".。") in self._written for phrase in NOT_FOUND.values())
            out.append(self._note())
        return "".join(out)

    def _release(self, grounded: str) -> str:
        """What to send of a grounded unit now: nothing while it waits for a statement that may be sent."""
        if self._stated:
            return grounded
        says_something = bool(_MARKER.sub("", grounded).strip())
        if self.sources_only and self._kind != SUPPORTED:
            self._guessed = self._guessed or self._kind == UNSUPPORTED
            self._held += grounded
            return ""
        if not says_something:  # markers and blank lines alone would cite a refusal
            self._held += grounded
            return ""
        released, self._held, self._stated = self._held + grounded, "", True
        return released

    def _ground(self, unit: str) -> str:
        starts_line = self._at_line_start
        if self._line_withheld:  # the start of this line was left out: so are its newline and leading spaces
            self._line_withheld = False
            if unit == "\n":
                return ""
            unit = unit.lstrip(" \t")
        if not unit.strip():
            return unit
        if unit.lstrip().startswith("```"):
            return self._withhold(unit, self.known.unknown_in_code(unit), starts_line)
        outside_code = _BACKTICK.sub(lambda m: " " * len(m.group()), unit)  # arr[1] in code cites nothing
        markers = list(_MARKER.finditer(outside_code))
        claim = " ".join(_claim(unit, markers, outside_code).split())
        written = [n for n in _numbers(markers) if n in self._index]  # [9] of three sources goes in any case
        if _BARE_LIST_MARKER.fullmatch(claim) and not (markers and any(ch.isdigit() for ch in claim)):
            # "1." numbers a list; "38.[1]" (a bare number with a citation) is an answer, judged below.
            return _rewrite(unit, markers, set(written), None, self.report)
        self.report.sentences += 1
        missing = self.known.unknown(claim)
        if missing:
            return self._withhold(unit, missing, starts_line)
        if _MARKER.sub("", claim).rstrip().endswith(("?", "？")):
            # A question (often the user's, repeated back) states nothing a source could support.
            return _rewrite(unit, markers, set(), None, self.report)
        judged = judged_length(claim) >= MIN_JUDGED_CHARS and not unit.lstrip().startswith("#")
        if not judged and not written and self.question and content_terms(claim):
            added = self._elliptical_source(claim)
            if added is not None:
                self._kind = SUPPORTED
            return _rewrite(unit, markers, set(), added, self.report)
        if not judged and not (written and content_terms(claim)):
            return _rewrite(unit, markers, set(written), None, self.report)
        scores = self.scorer.scores(claim) if self.sources else []
        keep = {n for n in written if scores[self._index[n]] >= SUPPORT_THRESHOLD}
        added = None
        cites_tool = bool(_TOOL_LABEL.search(outside_code))  # a tool result already backs it (agent answers)
        # A marker is added only to a sentence long enough in its own characters: a short Chinese one is judged (a guess
        # is refused) but a few words lie near many source sentences: an off-topic Chinese answer of the 0.5B model got
        # a marker that way (tests/evals/test_answer_gate.py, zh over en).
        if judged and len(claim) >= MIN_JUDGED_CHARS and not keep and not cites_tool and scores:
            best = max(range(len(scores)), key=lambda i: scores[i])
            added = self.sources[best].n if scores[best] >= SUPPORT_THRESHOLD else None
        if keep or added is not None or cites_tool:
            self._kind = SUPPORTED
        elif (judged or written) and max(scores, default=0.0) < GUESS_THRESHOLD and not self._near_with_question(claim):
            self._kind = UNSUPPORTED  # long enough to judge (or it claimed a source), and no source comes near it
        return _rewrite(unit, markers, keep, added, self.report)

    def _near_with_question(self, claim: str) -> bool:
        """Whether a source in another language comes near the claim read together with the question: how
        GUESS_THRESHOLD was calibrated across languages (question + answer span), as a short answer states only the
        part the question asked for ("比赛还剩17秒。" alone scores 0.25 against the paragraph that says it, 0.41 with
        its question; the general-knowledge "大熊猫平时主要吃竹子。" 0.20 and 0.18 against the English paragraphs retrieved for
        it, measured on xquad zh->en answers)."""
        return self.near_with_question(claim, self.scorer.other_language(detect_language(claim)))

    def near_with_question(self, claim: str, indices: Sequence[int] | None = None) -> bool:
        """Whether one of the sources (`indices`, all by default) comes near the claim read together with the
        question, on the scale GUESS_THRESHOLD was calibrated on. An answer written in its sources' language to
        a question in another (engine.py) is judged so as a whole: the question is how a general-knowledge
        answer to a question no source covers ("War and Peace was written by …") is told from a short one."""
        if not self.question or self.scorer.encoder is None:
            return False
        cosine = self.scorer.cosine(f"{self.question} {claim}", indices)
        return _on_support_scale(max(cosine, default=0.0)) >= GUESS_THRESHOLD

    def _elliptical_source(self, claim: str) -> int | None:
        """The source of a short answer ("John Elway.", "17 seconds."), too short to judge alone: it states the
        question with the answer filled in, so its source supports the two together and holds every term of the
        answer itself. Only a source in the answer's language: across languages nothing checks the answer's own
        terms, and the question alone would make any relevant source look like support for a wrong answer."""
        together = self.scorer.lexical(f"{self.question} {claim}")
        own = self.scorer.lexical(claim)
        language = detect_language(claim)
        candidates = [i for i, lang in enumerate(self.scorer.languages) if lang == language and own[i] == 1.0]
        best = max(candidates, key=together.__getitem__, default=None)
        return self.sources[best].n if best is not None and together[best] >= SUPPORT_THRESHOLD else None

    def _withhold(self, unit: str, missing: list[str], starts_line: bool) -> str:
        if not missing:
            return unit
        self.report.withheld_sentences += 1
        named = [*self.report.unsupported_identifiers, *(self.redact(m) for m in missing)]
        self.report.unsupported_identifiers = list(dict.fromkeys(named))
        self._line_withheld = starts_line and not unit.endswith("\n")
        return ""

    def _note(self) -> str:
        items = self.report.unsupported_identifiers
        held, self._held = self._held, ""
        if not self._stated and not self._guessed and _MARKER.sub("", held).strip():
            self._emitted, self._stated = held[-2:], True  # short statements nothing contradicts ("7 days.")
            return held + self._note()
        # Everything the model wrote was withheld, only markers, or a guess no source supports: say so as a
        # refusal, never an empty answer or a lone "Left out" note that reads like an answer.
        refusal = "" if self._stated else NOT_FOUND.get(self.language, NOT_FOUND["en"])
        if refusal:
            self.report.refused_after_grounding = True
        if not items:
            return self._separated(refusal)
        shown = ", ".join(f"`{i}`" for i in items[:MAX_NOTE_ITEMS]) + (
            f" (+{len(items) - MAX_NOTE_ITEMS})" if len(items) > MAX_NOTE_ITEMS else ""
        )
        note = LEFT_OUT_NOTE.get(self.language, LEFT_OUT_NOTE["en"]).format(items=shown)
        return self._separated(f"{refusal}\n\n{note}" if refusal else note)

    def _separated(self, text: str) -> str:
        """`text` after what was emitted, on a paragraph of its own."""
        if not text:
            return ""
        newlines = len(self._emitted) - len(self._emitted.rstrip("\n"))  # of the last two characters emitted
        gap = "\n" * (2 - newlines) if self._emitted.strip() else ""
        return gap + text


def _numbers(markers: list[re.Match[str]]) -> list[int]:
    return [int(n) for m in markers for n in re.split(r"\s*,\s*", m.group(1))]


def _claim(unit: str, markers: list[re.Match[str]], outside_code: str) -> str:
    """What the sentence says: without its markers, tool labels and heading marks."""
    spans = [(m.start(), m.end()) for m in markers] + [(m.start(), m.end()) for m in _TOOL_LABEL.finditer(outside_code)]
    chars = list(unit)
    for start, end in spans:
        chars[start:end] = " " * (end - start)
    return re.sub(r"^[ \t]*#+[ \t]*", "", "".join(chars), flags=re.M)


def _rewrite(unit: str, markers: list[re.Match[str]], keep: set[int], added: int | None, report: GroundingReport) -> str:
    """`unit` with the markers not in `keep` taken out (with the space before them) and `added` put before
    the sentence's end; unchanged when every marker stays and none is added."""
    text, cursor, kept_any = "", 0, False
    for match in markers:
        numbers = [int(n) for n in re.split(r"\s*,\s*", match.group(1))]
        kept = [n for n in numbers if n in keep]
        report.dropped_markers += len(numbers) - len(kept)
        report.supported_citations += len(kept)
        kept_any = kept_any or bool(kept)
        text += unit[cursor : match.start()]
        if not kept:
            if not unit.startswith("[", match.end()):  # "seconds [9][1]" keeps the space for [1]
                text = text.rstrip(" \t")
        elif len(kept) < len(numbers):
            text += "[" + ", ".join(str(n) for n in kept) + "]"
        else:
            text += match.group()
        cursor = match.end()
    text += unit[cursor:]
    if added is not None:
        report.supported_citations += 1
        text = _append_marker(text, added)
    if kept_any or added is not None:
        report.cited_sentences += 1
    return text


def _append_marker(text: str, n: int) -> str:
    body = text.rstrip()
    trailing = text[len(body) :]
    end = re.search(r"[.!?。！？:;,]*$", body)
    cut = end.start() if end else len(body)
    space = "" if cut and _CJK_CHAR.match(body[cut - 1]) else " "
    return body[:cut] + f"{space}[{n}]" + body[cut:] + trailing
