"""Answer quality and trust, per question language: containment and token F1 against reference answers,
citation precision, groundedness of what reaches the user, invented commands and paths, and refusals on
questions the corpus cannot answer (the set's own no-answer probes, e.g. prom_runbooks' alerts without a
runbook, and general-knowledge questions no engineering knowledge base answers, evals/probes/)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from llama_index.core.llms import LLM, ChatMessage, MessageRole
from rich.console import Console

from evals.datasets import DatasetError, EvalSet, load_dataset
from evals.suite import ingested
from kb.settings import EmbeddingSettings, LLMSettings, PlatformSettings
from query_engine.engine import Answer, AnswerEngine
from query_engine.grounding import split_units
from query_engine.llm import build_llm
from query_engine.prompts import NOT_FOUND, question_language
from query_engine.rerank import default_reranker

PROBES_DIR = Path(__file__).with_name("probes")
NO_ANSWER_FILE = "alerts_without_runbook.jsonl"
ANSWER_CHARS = 600  # answers kept in the result file for auditing
JUDGE_SOURCE_CHARS = 1200
JUDGE_PROMPT = "Source:\n{source}\n\nStatement: {statement}\n\nDoes the source state this? Answer yes or no."

_CJK = re.compile(r"[\u3400-\u9fff]")
_MARKER = re.compile(r"\[(\d{1,3}(?:\s*,\s*\d{1,3})*)\]")
# A literal a user would run or open: a command line (spaces), a path or URL, a flag, or a file name.
_FILE_NAME = re.compile(
    r"\.(?:sh|bash|py|js|ts|go|rb|ya?ml|json|toml|ini|cfg|conf|env|service|sql|log|txt|md|tf|pem|crt|key)$", re.I
)

Kind = Literal["answerable", "no_answer", "off_topic"]


def tokens(text: str) -> list[str]:
    """Lower-cased words; CJK text as characters (references are short spans)."""
    text = re.sub(r"\[\d+\]", " ", text.lower())
    return list(re.findall(r"[\u3400-\u9fff]|[^\W_]+", text))


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = tokens(prediction), tokens(reference)
    common = sum((Counter(pred) & Counter(ref)).values())
    if not common:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def contains(prediction: str, reference: str) -> bool:
    squash = (
        (lambda s: re.sub(r"\s+", " ", s.lower()).strip()) if not _CJK.search(reference) else (lambda s: re.sub(r"\s+", "", s))
    )
    return squash(reference) in squash(prediction)


def refused(text: str) -> bool:
    return any(phrase.rstrip(".。") in text for phrase in NOT_FOUND.values())


def looks_like_command_or_path(identifier: str) -> bool:
    """Whether an identifier is something a reader would run or open (`systemctl restart x`, /etc/x.conf,
    --force, deploy.yaml), as opposed to a number or a name that is merely stated."""
    value = identifier.strip()
    return bool(value) and (
        any(ch.isspace() for ch in value)
        or "/" in value
        or "\\" in value
        or value.startswith("-")
        or bool(_FILE_NAME.search(value))
    )


@dataclass(frozen=True)
class Probe:
    """One question to ask: answerable (with references and relevant documents) or one that must be refused."""

    id: str
    kind: Kind
    text: str
    references: tuple[str, ...] = ()
    relevant: frozenset[str] = frozenset()


def off_topic_questions(language: str, limit: int) -> list[str]:
    """The first `limit` general-knowledge questions in `language` (English where there is no file)."""
    path = PROBES_DIR / f"off_topic.{language}.txt"
    if not path.exists():
        path = PROBES_DIR / "off_topic.en.txt"
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()][:limit]


def no_answer_questions(dataset: Path, limit: int) -> list[str]:
    """The set's own questions that its corpus cannot answer (alerts without a runbook), as alert texts."""
    path = dataset / NO_ANSWER_FILE
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [f"{r.get('summary', '')} {r.get('description', '')}".strip() for r in rows][:limit]


def questions_language(evalset: EvalSet) -> str:
    """The language most of the set's questions are written in: off-topic probes are asked in it."""
    seen = Counter(question_language(q.text) for q in evalset.queries[:50])
    return seen.most_common(1)[0][0] if seen else "en"


def probes_of(evalset: EvalSet, dataset: Path, limit: int, probes: int) -> list[Probe]:
    """The answerable questions (those with reference answers; in a set without any, such as prom_runbooks'
    alerts, those with a relevant document: scored for refusals and citations, not containment), then the
    set's no-answer probes and the off-topic ones."""
    answerable = [
        Probe(q.id, "answerable", q.text, tuple(evalset.answers.get(q.id, ())), frozenset(evalset.qrels.get(q.id, set())))
        for q in evalset.queries
        if evalset.answers.get(q.id) or (not evalset.answers and evalset.qrels.get(q.id))
    ][:limit]
    language = questions_language(evalset)
    return [
        *answerable,
        *(Probe(f"no_answer-{i}", "no_answer", text) for i, text in enumerate(no_answer_questions(dataset, probes))),
        *(Probe(f"off_topic-{language}-{i}", "off_topic", text) for i, text in enumerate(off_topic_questions(language, probes))),
    ]


def grounding_of(answer: Answer) -> dict[str, Any]:
    """The engine's grounding report of an answer ({} where the engine gives none)."""
    report = getattr(answer, "grounding", None) or {}
    if hasattr(report, "as_dict"):
        report = report.as_dict()
    return dict(report) if isinstance(report, dict) else {}


def cited_statements(text: str) -> list[tuple[str, list[int]]]:
    """The sentences of an answer that carry citations, without their markers, with the cited numbers."""
    units, _ = split_units(text, True, True)
    statements = []
    for unit in units:
        numbers = [int(n) for m in _MARKER.finditer(unit) for n in re.split(r"\s*,\s*", m.group(1))]
        claim = " ".join(_MARKER.sub(" ", unit).split())
        if numbers and claim:
            statements.append((claim, list(dict.fromkeys(numbers))))
    return statements


def source_excerpt(text: str, statement: str, size: int = JUDGE_SOURCE_CHARS) -> str:
    """`size` characters of a source for the judge: the stretch sharing most words with the statement
    (a chunk may be longer than the judge's prompt should be; across languages this is the start)."""
    if len(text) <= size:
        return text
    wanted = set(tokens(statement))
    starts = range(0, len(text) - size + 1, size // 6)
    best = max(starts, key=lambda s: len(wanted & set(tokens(text[s : s + size]))))
    return text[best : best + size]


class GroundednessJudge:
    """An independent check of citations with the same LLM: for each cited sentence, does one of its cited
    sources state it? One short prompt per (sentence, source), stopping at the first yes."""

    def __init__(self, model: LLM) -> None:
        self.model = model

    @classmethod
    def from_settings(cls, llm: LLMSettings, llm_url: str) -> GroundednessJudge:
        model = build_llm(llm.backend, llm_url, llm.model, llm.api_key, llm.context_window, 4, llm.timeout_s)
        if hasattr(model, "temperature"):
            model.temperature = 0.0  # OpenAILike already is; Ollama defaults to sampling
        return cls(model)

    def states(self, source: str, statement: str) -> bool:
        prompt = JUDGE_PROMPT.format(source=source_excerpt(source, statement), statement=statement)
        reply = self.model.chat([ChatMessage(role=MessageRole.USER, content=prompt)]).message.content or ""
        return reply.strip().lower().lstrip("*\"' ").startswith(("yes", "да", "是"))

    def judge(self, answer: Answer) -> dict[str, int]:
        texts = {s.n: s.text for s in answer.sources}
        statements = cited_statements(answer.text)
        supported = sum(any(self.states(texts[n], claim) for n in numbers if n in texts) for claim, numbers in statements)
        return {"statements": len(statements), "supported": supported}


@dataclass
class Row:
    """One asked question, what came back and how it scored; `as_dict` is what the result file keeps."""

    probe: Probe
    answer: str
    seconds: float
    refused: bool
    cited: list[str]
    grounding: dict[str, Any]
    contains: bool | None = None
    f1: float | None = None
    judge: dict[str, int] | None = None
    unsupported_commands_or_paths: list[str] = field(default_factory=list)
    prompt_tokens: int = 0  # the engine's estimate of the prompt (0: refused before any LLM call)

    @property
    def cited_relevant(self) -> list[str]:
        return [d for d in self.cited if d in self.probe.relevant]

    def as_dict(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "id": self.probe.id, "kind": self.probe.kind, "question": self.probe.text,
            "answer": self.answer[:ANSWER_CHARS], "seconds": round(self.seconds, 2), "refused": self.refused,
            "cited": self.cited, "grounding": self.grounding,
            "unsupported_commands_or_paths": self.unsupported_commands_or_paths, "prompt_tokens": self.prompt_tokens,
        }  # fmt: skip
        if self.probe.kind == "answerable":
            row |= {"references": list(self.probe.references), "relevant": sorted(self.probe.relevant),
                    "cited_relevant": self.cited_relevant, "contains": self.contains, "f1": round(self.f1 or 0.0, 4)}  # fmt: skip
        if self.judge is not None:
            row["judge"] = self.judge
        return row


def score(probe: Probe, answer: Answer, seconds: float, doc_of_file: dict[str, str]) -> Row:
    grounding = grounding_of(answer)
    invented = [i for i in grounding.get("unsupported_identifiers") or [] if looks_like_command_or_path(str(i))]
    row = Row(probe, answer.text, seconds, refused(answer.text),
              sorted({doc_of_file.get(s.doc_id, s.doc_id) for s in answer.sources if s.cited}), grounding,
              unsupported_commands_or_paths=invented, prompt_tokens=answer.prompt_tokens)  # fmt: skip
    if probe.kind == "answerable" and probe.references:
        row.contains = any(contains(answer.text, r) for r in probe.references)
        row.f1 = max(token_f1(answer.text, r) for r in probe.references)
    return row


def _share(part: float, whole: float) -> float | None:
    return round(part / whole, 4) if whole else None


def summarise(rows: Sequence[Row]) -> dict[str, Any]:
    """The figures over the rows. Grounding figures need a report on every answer that is not a refusal
    (refusals state nothing, and the engine's gate refuses before any grounding); otherwise they are None,
    rather than a perfect score for a check that did not run."""
    answerable = [r for r in rows if r.probe.kind == "answerable"]
    no_answer = [r for r in rows if r.probe.kind == "no_answer"]
    off_topic = [r for r in rows if r.probe.kind == "off_topic"]
    stated = [r for r in rows if not r.refused]
    reported = [r for r in stated if r.grounding]
    grounding = _grounding_figures(rows) if len(reported) == len(stated) else dict.fromkeys(_GROUNDING_FIGURES)
    judged = [r.judge for r in stated if r.judge is not None]
    referenced = [r for r in answerable if r.probe.references]
    cited_total = sum(len(r.cited) for r in answerable)
    n = max(len(answerable), 1)
    return {
        "questions": len(answerable),
        "questions_without_reference": len(answerable) - len(referenced),
        "answer_containment": _share(sum(bool(r.contains) for r in referenced), len(referenced)),
        "token_f1": _share(sum(r.f1 or 0.0 for r in referenced), len(referenced)),
        "citation_precision": _share(sum(len(r.cited_relevant) for r in answerable), cited_total),
        "answers_with_citations": round(sum(1 for r in answerable if r.cited) / n, 4),
        "refused_answerable": round(sum(r.refused for r in answerable) / n, 4),
        # Before any LLM call (the relevance gate: no grounding report) or after it (the model's own refusal,
        # or grounding finding no statement a source supports).
        "refused_answerable_by_gate": round(sum(r.refused and not r.grounding for r in answerable) / n, 4),
        "refused_answerable_after_answering": round(sum(r.refused and bool(r.grounding) for r in answerable) / n, 4),
        "refused_answerable_by_model": round(
            sum(r.refused and bool(r.grounding.get("model_refused")) for r in answerable) / n, 4
        ),
        # Refusals the engine replaced by the closest source passage quoted (engine.py), and how many of those hold
        # the reference answer.
        "answers_quoting_closest_passage": round(sum(bool(r.grounding.get("closest_passage")) for r in answerable) / n, 4),
        "quotes_containing_the_answer": _share(
            sum(bool(r.contains) for r in answerable if r.grounding.get("closest_passage")),
            sum(bool(r.grounding.get("closest_passage")) for r in answerable),
        ),
        # Refusals asked again on the closest sources (engine.py) and how many of those then hold the reference answer.
        "answers_retried_after_refusal": round(sum(bool(r.grounding.get("retried")) for r in answerable) / n, 4),
        "retries_containing_the_answer": _share(
            sum(bool(r.contains) for r in answerable if r.grounding.get("retried")),
            sum(bool(r.grounding.get("retried")) for r in answerable),
        ),
        "answers_with_grounding_report": _share(len(reported), len(stated)),
        **grounding,
        "judged_groundedness": _share(sum(j["supported"] for j in judged), sum(j["statements"] for j in judged)),
        "no_answer_probes": len(no_answer),
        "no_answer_refusal_rate": _share(sum(r.refused for r in no_answer), len(no_answer)),
        "no_answer_citing_rate": _share(sum(bool(r.cited) for r in no_answer), len(no_answer)),
        "off_topic_probes": len(off_topic),
        "off_topic_refusal_rate": _share(sum(r.refused for r in off_topic), len(off_topic)),
        "off_topic_citing_rate": _share(sum(bool(r.cited) for r in off_topic), len(off_topic)),
        "seconds_per_answer": round(sum(r.seconds for r in rows) / max(len(rows), 1), 2),
        # Prompt size of the answers the LLM wrote (what the time to the first token grows with on a CPU).
        "prompt_tokens_per_llm_answer": _share(sum(r.prompt_tokens for r in rows), sum(r.prompt_tokens > 0 for r in rows)),
    }


_GROUNDING_FIGURES = (
    "groundedness", "citation_support_rate", "unsupported_identifiers_per_answer", "answers_without_unsupported_command_or_path",
)  # fmt: skip


def _grounding_figures(rows: Sequence[Row]) -> dict[str, float | None]:
    # The not-found sentence of a refusal is no uncited statement: refusals count for the identifier
    # figures (nothing invented) but not for groundedness.
    stated = [r.grounding for r in rows if not r.refused]
    shown = sum(g.get("sentences", 0) - g.get("withheld_sentences", 0) for g in stated)
    kept = sum(g.get("supported_citations", 0) for g in stated)
    dropped = sum(g.get("dropped_markers", 0) for g in stated)
    return {
        "groundedness": _share(sum(g.get("cited_sentences", 0) for g in stated), shown),
        "citation_support_rate": _share(kept, kept + dropped),
        "unsupported_identifiers_per_answer": _share(
            sum(len(r.grounding.get("unsupported_identifiers") or []) for r in rows), len(rows)
        ),  # fmt: skip
        "answers_without_unsupported_command_or_path": _share(sum(not r.unsupported_commands_or_paths for r in rows), len(rows)),
    }


def evaluate_answers(
    dataset: Path,
    variant: str | None,
    collection: str | None,
    limit: int,
    llm_url: str,
    platform: PlatformSettings,
    embedding: EmbeddingSettings,
    llm: LLMSettings,
    console: Console,
    corpus_variant: str | None = None,
    probes: int = 20,
    judge: bool = False,
) -> dict[str, Any]:
    """Ask `limit` answerable questions, up to `probes` of the set's no-answer probes and `probes` off-topic
    questions in the questions' language through `AnswerEngine.answer`, as the API does, and score them.

    Beyond the reference-based figures (containment, token F1, citation precision, refusals):
    - `groundedness`: of the sentences that reach the user in answers that are not refusals, the share that
      carries a citation its source supports. It is read from the engine's grounding report, i.e. measured
      with the same support check the answer path applies (query_engine/grounding.py), so it shows what
      reaches the user after filtering; `citation_support_rate` is the share of the model's own markers that
      check kept (how often the model cited right before filtering);
    - `judged_groundedness` (with `judge`): the same LLM asked, for each cited sentence, whether a cited
      source states it: a second opinion independent of the support check;
    - `unsupported_identifiers_per_answer` and `answers_without_unsupported_command_or_path`: literals the
      model wrote that no source holds (the grounding withholds those sentences and names them in a note);
    - `no_answer_refusal_rate` on the set's own probes, `off_topic_refusal_rate` and `off_topic_citing_rate`
      (any source cited for a general-knowledge question: must be 0) on the off-topic ones.
    `corpus_variant` asks the `variant` questions over another language's corpus (cross-lingual)."""
    evalset = load_dataset(dataset, variant, corpus_variant, collection)
    asked = probes_of(evalset, dataset, limit, probes)
    if not asked:
        raise DatasetError(f"{dataset}: no answerable questions and no probes to ask")
    embedder = embedding.load()
    with ingested(evalset, platform, embedder, console) as (built, index, name):
        model = build_llm(llm.backend, llm_url, llm.model, llm.api_key, llm.context_window, llm.max_answer_tokens, llm.timeout_s)
        engine = AnswerEngine(index, embedder, [built.collection], default_reranker(embedder=embedder, specs=[built.spec]), model,
                              llm.context_window, llm.max_answer_tokens, dense_languages=embedding.languages,
                              source_tokens=llm.source_tokens)  # fmt: skip
        judge_model = GroundednessJudge.from_settings(llm, llm_url) if judge else None
        rows = []
        with console.status(f"asking {len(asked)} questions ({llm.model})") as status:
            for i, probe in enumerate(asked, 1):
                status.update(f"question {i} of {len(asked)} ({probe.kind}, {llm.model})")
                started = time.perf_counter()
                answer = asyncio.run(engine.answer(probe.text))
                row = score(probe, answer, time.perf_counter() - started, built.doc_of_file)
                if judge_model is not None and not row.refused:
                    row.judge = judge_model.judge(answer)
                rows.append(row)
    return {
        "dataset": evalset.label,
        "collection": name,
        "model": llm.model,
        "probes_language": questions_language(evalset),
        "judge": judge,
        **summarise(rows),
        "rows": [r.as_dict() for r in rows],
    }
