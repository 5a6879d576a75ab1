"""Knowledge gaps: what people ask that the knowledge base cannot answer, as a weekly report in the Dagster UI.

The asset `knowledge_gaps` (group `operations`) reads the conversations of the look-back window (30 days by default)
straight from PostgreSQL and keeps the questions whose answer
- was **refused**: the answer holds one of the NOT_FOUND sentences (query_engine/prompts.py; a "Left out…" note may
  follow), or it has no source at all (the relevance gate refused before the LLM ran, or the agent answered from live
  systems only: either way the knowledge base had nothing for it);
- was **down-voted**: a `kb_feedback` row with rating -1 (its comment is shown, masked);
- rests on a **low best source**: the best dense cosine among the answer's sources under the question language's
  threshold (see LOW_SCORE for why the cosine and not the reranker's score).
Sessions a user deleted are left out; archived ones are no longer in kb_sessions (and are older than any window).

The questions (masked first) are embedded with the multilingual Universal Sentence Encoder, so a Russian and an
English question about the same missing topic land in one cluster, and grouped by agglomerative clustering on cosine
distance (scikit-learn; see CLUSTER_DISTANCE). Each cluster is named by its most central question. The asset's
metadata holds a Markdown table of the clusters by size, counts per reason and per collection, and the path of the
full report, written as JSON to $KB_DATA_DIR/reports/knowledge_gaps/<date>.json.
"""

import json
import os
import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
from numpy.typing import NDArray
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from assets.embed import UniversalSentenceEncoder
from assets.mask import find_secrets, mask_secrets
from assets.parse import detect_language
from kb.settings import PlatformSettings, PostgresSettings
from query_engine.memory import migrate, sqlalchemy_url
from query_engine.prompts import NOT_FOUND

GROUP = "operations"
# Mondays 05:00 UTC: after the nightly backup (02:30) and retention (03:30), before the working week starts.
CRON = "0 5 * * 1"
REASONS = ("refused", "down_voted", "low_score")
NO_SOURCE = "(no source)"

# The low-score threshold is on the best *dense cosine* of an answer's sources (`metadata.dense_score` of the stored
# source, the embedding model's own cosine), not on the source's `score`: the default EvidenceReranker min-max
# normalises dense and BM25 scores per question, so the first source scores about 1 whether or not it answers, and
# a cross-encoder's logits (when configured) have a scale of their own. The cosine is what the relevance gate reads
# too. Its scale follows the question's language, because the dual embedder reads English questions with MiniLM
# and Russian or Chinese ones with USE. Measured on the relevance-gate calibration signals (3,594 questions of the
# dev splits, `kb eval calibrate`), among questions the gate let through: 10 % of the answerable English ones have a
# best cosine under 0.47 and 50 % of the unanswerable ones under 0.48; Russian 0.25 / 0.26, Chinese 0.25 / 0.24.
# At 0.45 (en) and 0.25 (ru, zh) the report flags 8 %, 9 % and 11 % of the answers that had an answer in the
# knowledge base and 33 %, 43 % and 59 % of those that had none: a shortlist worth an operator's look, not a verdict.
# They hold for the default dual embedder; another embedder needs its own (KB_GAPS_LOW_SCORE).
LOW_SCORE = {"en": 0.45, "ru": 0.25, "zh": 0.25}
# Average linkage, cosine distance 0.5 (USE cosine 0.5), chosen on the xquad dev questions in English, Russian and
# Chinese: translations of one question share a cluster (homogeneity 0.96, completeness 0.99 on 350 questions) while
# questions about different paragraphs almost never reach it (99.9th percentile cosine 0.51); with the paragraphs as
# topics (en and ru, 752 questions) it had the best adjusted Rand index (0.52) of the cuts 0.45–0.70 tried with average
# and complete linkage.
CLUSTER_DISTANCE = 0.5
TABLE_ROWS = 50  # clusters in the metadata table; the JSON report has all
EXAMPLE_COMMENTS = 3
CELL_CHARS = 160


class KnowledgeGapsSettings(BaseSettings):
    """The knowledge-gap report (KB_GAPS_*)."""

    model_config = SettingsConfigDict(env_prefix="KB_GAPS_", extra="ignore")

    window_days: float = Field(default=30, gt=0, description="Questions asked (or down-voted) this many days back.")
    low_score: dict[str, float] = Field(default_factory=lambda: dict(LOW_SCORE),
                                        description="Best dense cosine under which an answer counts as weakly sourced, "
                                                    "per question language (JSON).")  # fmt: skip
    cluster_distance: float = Field(default=CLUSTER_DISTANCE, gt=0, lt=2, description="Cosine distance joining clusters.")
    max_questions: int = Field(default=5_000, ge=1, le=50_000, description="Newest questions clustered a run (the "
                                                                           "distance matrix grows with its square).")  # fmt: skip
    keep_reports: int = Field(default=12, ge=1, description="Report files kept (newest first).")
    cron: str = Field(default=CRON, description="When knowledge_gaps_weekly runs (UTC).")

    @field_validator("low_score")
    @classmethod
    def _needs_english(cls, value: dict[str, float]) -> dict[str, float]:
        return _valid_thresholds(value)


def _valid_thresholds(value: Mapping[str, float]) -> dict[str, float]:
    if "en" not in value:
        raise ValueError("low_score needs an 'en' threshold (the fallback for other languages)")
    return dict(value)


@dataclass(frozen=True)
class AnswerRow:
    """One assistant message of the window, with the question before it and its down-votes, as SQL returns it."""

    message_id: int
    user: str
    question: str
    answer: str
    sources: Any  # the stored JSON: {"items": [...]}
    answered_at: datetime
    comments: list[str]
    down_votes: int
    voted_at: datetime | None


@dataclass(frozen=True)
class GapQuestion:
    """A question the knowledge base could not answer well: masked, with why and where its best source was."""

    message_id: int
    user: str
    question: str
    language: str
    reasons: tuple[str, ...]
    collection: str
    best_score: float | None
    comments: tuple[str, ...]
    last_seen: datetime


@dataclass
class GapCluster:
    label: str
    questions: list[GapQuestion] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.questions)

    def reasons(self) -> Counter[str]:
        return Counter(r for q in self.questions for r in q.reasons)

    def collections(self) -> Counter[str]:
        return Counter(q.collection for q in self.questions)

    def last_seen(self) -> datetime:
        return max(q.last_seen for q in self.questions)

    def comments(self, limit: int = EXAMPLE_COMMENTS) -> list[str]:
        newest = sorted(self.questions, key=lambda q: q.last_seen, reverse=True)
        return [c for q in newest for c in q.comments][:limit]

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "count": self.count, "users": len({q.user for q in self.questions}),
                "reasons": dict(self.reasons()), "collections": dict(self.collections()),
                "last_seen": self.last_seen().isoformat(), "comments": self.comments(),
                # No user names: the report shows what is asked, not who asked it.
                "questions": [{"message_id": q.message_id, "question": q.question, "language": q.language,
                               "reasons": list(q.reasons), "collection": q.collection, "best_score": q.best_score,
                               "last_seen": q.last_seen.isoformat(), "comments": list(q.comments)}
                              for q in sorted(self.questions, key=lambda q: q.last_seen, reverse=True)]}  # fmt: skip


# ---- classifying one answer (pure) ----


def refused_text(answer: str) -> bool:
    """Whether the answer holds a NOT_FOUND sentence (as evals/answers.py `refused` reads it: the sentence may be
    followed by a "Left out…" note, and its final full stop may be missing)."""
    return any(phrase.rstrip(".。") in answer for phrase in NOT_FOUND.values())


def source_items(sources: Any) -> list[dict[str, Any]]:
    """The stored sources' list (`{"items": [...]}`), tolerating older or odd rows."""
    items = sources.get("items") if isinstance(sources, dict) else None
    return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []


def best_source(items: Sequence[dict[str, Any]]) -> tuple[str, float | None]:
    """The collection of the top-ranked source (lowest `n`: the reranker's first) and the best dense cosine of all
    of them (None when no source carries one, e.g. sources found by BM25 alone)."""
    if not items:
        return NO_SOURCE, None
    top = min(items, key=_rank)
    cosines = [float(d) for i in items if isinstance(d := (i.get("metadata") or {}).get("dense_score"), int | float)]
    return str(top.get("collection") or NO_SOURCE), max(cosines, default=None)


def _rank(item: dict[str, Any]) -> int:
    n = item.get("n")
    return n if isinstance(n, int) else 1_000_000


def gap_reasons(answer: str, items: Sequence[dict[str, Any]], down_votes: int, best: float | None,
                threshold: float) -> tuple[str, ...]:  # fmt: skip
    """Why an answer is a gap, in REASONS order; empty when it is not. A refusal is not also called low-scored:
    the refusal already says the knowledge base had nothing."""
    refused = refused_text(answer) or not items
    low = not refused and best is not None and best < threshold
    return tuple(r for r, hit in zip(REASONS, (refused, down_votes > 0, low), strict=True) if hit)


def classify(row: AnswerRow, low_score: Mapping[str, float]) -> GapQuestion | None:
    """The row as a masked gap question, or None when its answer was fine."""
    question = mask_secrets(row.question).text
    language = detect_language(question)
    items = source_items(row.sources)
    collection, best = best_source(items)
    reasons = gap_reasons(row.answer, items, row.down_votes, best, low_score.get(language, low_score["en"]))
    if not reasons:
        return None
    comments = tuple(mask_secrets(c).text for c in row.comments if c and c.strip())
    last_seen = max(row.answered_at, row.voted_at or row.answered_at)
    return GapQuestion(row.message_id, row.user, question, language, reasons, collection,
                       None if best is None else round(best, 4), comments, last_seen)  # fmt: skip


# ---- clustering (pure) ----


def cluster_labels(vectors: NDArray[np.float32], distance: float) -> NDArray[np.int64]:
    """Agglomerative clustering, average linkage on cosine distance, cut at `distance`: scikit-learn's, as a
    well-kept implementation of exactly this (a greedy threshold pass would depend on the order of the questions)."""
    if len(vectors) < 2:
        return np.zeros(len(vectors), dtype=np.int64)
    from sklearn.cluster import AgglomerativeClustering

    model = AgglomerativeClustering(n_clusters=None, metric="cosine", linkage="average", distance_threshold=distance)
    return np.asarray(model.fit_predict(vectors), dtype=np.int64)


def central(vectors: NDArray[np.float32]) -> int:
    """The member with the highest mean cosine to the others: the question that speaks for the cluster."""
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return int(np.argmax((unit @ unit.T).sum(axis=1)))


def build_clusters(questions: Sequence[GapQuestion], vectors: NDArray[np.float32], labels: NDArray[np.int64]) -> list[GapCluster]:
    """Clusters by size (then by the newest question), each labelled by its most central question."""
    clusters = []
    for label in np.unique(labels):
        members = [int(i) for i in np.flatnonzero(labels == label)]
        cluster = GapCluster(questions[members[central(vectors[members])]].question, [questions[i] for i in members])
        clusters.append(cluster)
    return sorted(clusters, key=lambda c: (-c.count, -c.last_seen().timestamp(), c.label))


# ---- the report (pure) ----


def _cell(value: str, limit: int = CELL_CHARS) -> str:
    """One Markdown table cell: one line, cut to `limit` characters, with pipes escaped and no HTML tag a question
    could smuggle into the UI."""
    flat = re.sub(r"\s+", " ", value).strip()
    flat = flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"
    return flat.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;")


def _counts(counter: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])))


def clusters_table(clusters: Sequence[GapCluster], limit: int = TABLE_ROWS) -> str:
    """The clusters as a Markdown table, largest first."""
    if not clusters:
        return "No knowledge gaps in this window."
    lines = ["| # | question (most central) | questions | users | reasons | collections | last seen (UTC) | comments |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for n, c in enumerate(clusters[:limit], 1):
        comments = " · ".join(_cell(x, 80) for x in c.comments())
        lines.append(f"| {n} | {_cell(c.label)} | {c.count} | {len({q.user for q in c.questions})} | {_counts(c.reasons())} "
                     f"| {_cell(_counts(c.collections()))} | {c.last_seen():%Y-%m-%d %H:%M} | {comments} |")  # fmt: skip
    if len(clusters) > limit:
        lines.append(f"\n{len(clusters) - limit} smaller cluster(s) more in the JSON report.")
    return "\n".join(lines)


def by_reason(questions: Sequence[GapQuestion]) -> dict[str, int]:
    """Questions per reason (one question may have two: down-voted and weakly sourced)."""
    counts = Counter(r for q in questions for r in q.reasons)
    return {r: counts[r] for r in REASONS}


def by_collection(questions: Sequence[GapQuestion]) -> dict[str, dict[str, int]]:
    """Per collection of the best source: questions in total and per reason."""
    table: dict[str, dict[str, int]] = {}
    for q in questions:
        row = table.setdefault(q.collection, {"questions": 0, **dict.fromkeys(REASONS, 0)})
        row["questions"] += 1
        for reason in q.reasons:
            row[reason] += 1
    return dict(sorted(table.items(), key=lambda kv: (-kv[1]["questions"], kv[0])))


def collections_table(counts: Mapping[str, Mapping[str, int]]) -> str:
    if not counts:
        return "No knowledge gaps in this window."
    lines = ["| collection | questions | " + " | ".join(REASONS) + " |", "|---" * (len(REASONS) + 2) + "|"]
    lines += [f"| {_cell(name)} | {row['questions']} | " + " | ".join(str(row[r]) for r in REASONS) + " |"
              for name, row in counts.items()]  # fmt: skip
    return "\n".join(lines)


def report(clusters: Sequence[GapCluster], questions: Sequence[GapQuestion], since: datetime, until: datetime,
           settings: Mapping[str, Any], left_out: int) -> dict[str, Any]:  # fmt: skip
    return {"generated_at": until.isoformat(), "since": since.isoformat(), "until": until.isoformat(),
            "settings": dict(settings), "questions": len(questions), "left_out": left_out,
            "by_reason": by_reason(questions), "by_collection": by_collection(questions),
            "clusters": [c.as_dict() for c in clusters]}  # fmt: skip


def write_report(directory: Path, content: dict[str, Any], at: datetime, keep: int) -> Path:
    """<directory>/<date>.json (a second run the same day replaces it); only the newest `keep` reports stay, so
    masked questions do not outlive the window by much."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{at:%Y-%m-%d}.json"
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(content, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    partial.replace(path)
    for old in sorted(directory.glob("????-??-??.json"), reverse=True)[keep:]:
        old.unlink()
    return path


# ---- reading PostgreSQL ----

# Every assistant message of a live session answered or down-voted in the window, with the user message right before
# it. The WHERE keeps a superset of the gaps (refusal sentence, no sources, a down-vote, or no source at or above the
# highest low-score threshold); `classify` decides. Our own SQL: the tables are the contract, not the API's code.
GATHER = text("""
WITH votes AS (
    SELECT message_id, count(*) AS down_votes, max(greatest(created_at, updated_at)) AS voted_at,
           coalesce(array_agg(comment ORDER BY updated_at) FILTER (WHERE coalesce(comment, '') <> ''), '{}') AS comments
      FROM kb_feedback
     WHERE rating = -1 AND greatest(created_at, updated_at) <= :until
     GROUP BY message_id
)
SELECT a.id, s."user", q.content AS question, a.content AS answer, a.sources, a.created_at,
       coalesce(v.down_votes, 0) AS down_votes, coalesce(v.comments, '{}') AS comments, v.voted_at
  FROM kb_messages a
  JOIN kb_sessions s ON s.id = a.session_id AND s.deleted_at IS NULL
  JOIN kb_messages q ON q.session_id = a.session_id AND q.seq = a.seq - 1 AND q.role = 'user'
  LEFT JOIN votes v ON v.message_id = a.id
 WHERE a.role = 'assistant' AND a.created_at <= :until
   AND greatest(a.created_at, coalesce(v.voted_at, a.created_at)) >= :since
   AND (v.message_id IS NOT NULL
        OR position(:refused_en IN a.content) > 0 OR position(:refused_ru IN a.content) > 0
        OR position(:refused_zh IN a.content) > 0
        OR NOT EXISTS (
            SELECT 1 FROM jsonb_array_elements(
                       CASE WHEN jsonb_typeof(a.sources -> 'items') = 'array' THEN a.sources -> 'items' ELSE '[]'::jsonb END) i
             WHERE CASE WHEN jsonb_typeof(i -> 'metadata' -> 'dense_score') = 'number'
                        THEN (i -> 'metadata' ->> 'dense_score')::float8 END >= :highest_threshold))
""")


def gather_rows(engine: Engine, since: datetime, until: datetime, highest_threshold: float) -> Iterator[AnswerRow]:
    phrases = {f"refused_{lang}": phrase.rstrip(".。") for lang, phrase in NOT_FOUND.items()}
    params = {"since": since, "until": until, "highest_threshold": highest_threshold, **phrases}
    with engine.connect() as conn:
        for r in conn.execute(GATHER, params):
            yield AnswerRow(r.id, r.user, r.question, r.answer, r.sources, r.created_at, list(r.comments), r.down_votes,
                            r.voted_at)  # fmt: skip


class KnowledgeGapsResource(dg.ConfigurableResource):
    """Where the conversations are, where reports go, the window, the thresholds, and the clock."""

    database_url: str
    data_dir: str
    window_days: float = 30
    low_score: dict[str, float] = Field(default_factory=lambda: dict(LOW_SCORE))
    cluster_distance: float = CLUSTER_DISTANCE
    max_questions: int = 5_000
    keep_reports: int = 12
    now: str | None = Field(default=None, description="ISO 8601 end of the window (tests); default: the wall clock.")

    def clock(self) -> datetime:
        if not self.now:
            return datetime.now(UTC)
        at = datetime.fromisoformat(self.now)
        if at.tzinfo is None:
            raise ValueError(f"knowledge gaps `now` needs a timezone: {self.now!r}")
        return at.astimezone(UTC)

    @property
    def directory(self) -> Path:
        return Path(self.data_dir) / "reports" / "knowledge_gaps"

    def settings(self) -> dict[str, Any]:
        return {"window_days": self.window_days, "low_score": self.low_score, "cluster_distance": self.cluster_distance,
                "max_questions": self.max_questions}  # fmt: skip

    @contextmanager
    def engine(self) -> Iterator[Engine]:
        migrate(self.database_url)  # the schedule may fire before any API has migrated (kb_feedback is new)
        engine = create_engine(sqlalchemy_url(self.database_url), pool_size=1, max_overflow=0)
        try:
            yield engine
        finally:
            engine.dispose()

    def gather(self, since: datetime, until: datetime) -> tuple[list[GapQuestion], int]:
        """The window's gap questions, newest first, at most `max_questions`; and how many more there were."""
        thresholds = _valid_thresholds(self.low_score)
        with self.engine() as engine:
            found = [q for row in gather_rows(engine, since, until, max(thresholds.values()))
                     if (q := classify(row, thresholds)) is not None]  # fmt: skip
        found.sort(key=lambda q: (q.last_seen, q.message_id), reverse=True)
        return found[: self.max_questions], max(0, len(found) - self.max_questions)


@cache
def _encoder() -> UniversalSentenceEncoder:
    """Loaded once a process: the weights come from the installed package, never from a hub."""
    return UniversalSentenceEncoder()


def embed_questions(questions: Sequence[GapQuestion]) -> NDArray[np.float32]:
    return _encoder().embed_queries([q.question for q in questions]) if questions else np.zeros((0, 512), dtype=np.float32)


@dg.asset(group_name=GROUP, description="Questions the knowledge base could not answer (refused, down-voted, weakly "
                                        "sourced) in the window, clustered by topic across languages.")  # fmt: skip
def knowledge_gaps(context: dg.AssetExecutionContext, gaps: KnowledgeGapsResource) -> dg.MaterializeResult:
    until = gaps.clock()
    since = until - timedelta(days=gaps.window_days)
    questions, left_out = gaps.gather(since, until)
    vectors = embed_questions(questions)
    clusters = build_clusters(questions, vectors, cluster_labels(vectors, gaps.cluster_distance))
    content = report(clusters, questions, since, until, gaps.settings(), left_out)
    path = write_report(gaps.directory, content, until, gaps.keep_reports)
    context.log.info(f"{len(questions)} gap question(s) in {len(clusters)} cluster(s) since {since:%Y-%m-%d}; report {path}")
    return dg.MaterializeResult(metadata={
        "clusters_table": dg.MetadataValue.md(clusters_table(clusters)),
        "collections_table": dg.MetadataValue.md(collections_table(content["by_collection"])),
        "by_reason": dg.MetadataValue.json(content["by_reason"]),
        "by_collection": dg.MetadataValue.json(content["by_collection"]),
        # Plain numbers as well, so the UI plots them run over run.
        "questions": len(questions), "clusters": len(clusters), **content["by_reason"], "left_out": left_out,
        "since": since.isoformat(), "until": until.isoformat(),
        "report": dg.MetadataValue.path(str(path)),
    })  # fmt: skip


def _report_of_latest(context: dg.AssetCheckExecutionContext) -> tuple[dict[str, Any], dict[str, Any]]:
    """The newest materialization's metadata and the JSON report it points to (empty when either is missing)."""
    event = context.instance.get_latest_materialization_event(knowledge_gaps.key)
    if event is None or event.asset_materialization is None:
        return {}, {}
    metadata = {name: value.value for name, value in event.asset_materialization.metadata.items()}
    path = Path(str(metadata.get("report", "")))
    return metadata, json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


@dg.asset_check(asset=knowledge_gaps, description="The report's clusters hold every gathered question exactly once.")
def report_covers_every_question(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    metadata, content = _report_of_latest(context)
    ids = [q["message_id"] for c in content.get("clusters", []) for q in c["questions"]]
    counted = sum(c["count"] for c in content.get("clusters", []))
    gathered = metadata.get("questions")
    passed = bool(content) and counted == len(ids) == len(set(ids)) == content.get("questions") == gathered
    return dg.AssetCheckResult(passed=passed, severity=dg.AssetCheckSeverity.WARN,
                               metadata={"gathered": gathered if gathered is not None else -1, "in_clusters": counted,
                                         "distinct_messages": len(set(ids)), "report_found": bool(content)})  # fmt: skip


@dg.asset_check(asset=knowledge_gaps, description="No question or comment in the report still holds a secret.")
def report_has_no_secrets(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    _, content = _report_of_latest(context)
    texts = [t for c in content.get("clusters", []) for q in c["questions"] for t in (q["question"], *q["comments"])]
    kinds = Counter(kind for t in texts for kind in find_secrets(t))
    return dg.AssetCheckResult(passed=bool(content) and not kinds, metadata={"texts": len(texts), "secrets": dict(kinds)})


knowledge_gaps_job = dg.define_asset_job(
    # Not named like the asset: a job and an asset's op may not share a name in one code location.
    "knowledge_gaps_report",
    selection=dg.AssetSelection.assets(knowledge_gaps),
    description="Report the knowledge base's gaps.",
)


def _from_env(name: str, value: str) -> Any:
    """DATABASE_URL as an EnvVar when it came from there, so a password never sits in the resource's config."""
    return dg.EnvVar(name) if os.environ.get(name) == value else value


def build_knowledge_gaps_defs(platform: PlatformSettings, postgres: PostgresSettings,
                              settings: KnowledgeGapsSettings | None = None) -> dg.Definitions:  # fmt: skip
    """The `knowledge_gaps` asset, its checks, its job, the weekly schedule and the resource (KB_GAPS_*)."""
    settings = settings or KnowledgeGapsSettings()
    url = postgres.database_url or f"postgresql://postgres@{platform.host}:{platform.postgres_port}/kb"
    resource = KnowledgeGapsResource(database_url=_from_env("DATABASE_URL", url), data_dir=str(platform.data_dir),
                                     window_days=settings.window_days, low_score=settings.low_score,
                                     cluster_distance=settings.cluster_distance, max_questions=settings.max_questions,
                                     keep_reports=settings.keep_reports)  # fmt: skip
    schedule = dg.ScheduleDefinition(name="knowledge_gaps_weekly", job=knowledge_gaps_job, cron_schedule=settings.cron,
                                     execution_timezone="UTC", default_status=dg.DefaultScheduleStatus.RUNNING)  # fmt: skip
    return dg.Definitions(assets=[knowledge_gaps], asset_checks=[report_covers_every_question, report_has_no_secrets],
                          jobs=[knowledge_gaps_job], schedules=[schedule],
                          resources={"gaps": resource})  # fmt: skip
