"""The daily retention job (the operators' guide): sessions idle 30 to 90 days summarized (messages kept), sessions
idle longer archived, sessions a user deleted purged after a 30-day grace, audit rows kept one year.

Four assets in group `operations`, run in this order by the `retention` job: `retention_summaries` →
`retention_archive` → `retention_purge` → `retention_audit`. The checks on the archive and the purge block what
follows, so a step that removed what the policy keeps stops the job before it removes more. Every step judges
by the resource's clock: the wall clock, or the resource's `now` (ISO 8601), which the tests set to move it forward.
The work itself lives in query_engine/memory.py (SessionStore, RetentionPolicy) and kb/access/audit.py (AuditLog.purge).
"""

import logging
import os
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Self

import dagster as dg
import httpx
from llama_index.core.llms import LLM
from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from kb.access.audit import AuditLog, audit_key
from kb.settings import AuthSettings, LLMSettings, PlatformSettings, PostgresSettings
from query_engine.llm import build_llm
from query_engine.memory import PendingSummary, RetentionPolicy, SessionStore, extractive_summary, fold_summary, migrate

log = logging.getLogger(__name__)

# After the 02:30 backup, so the newest backup still holds what this run removes.
CRON = "30 3 * * *"
GROUP = "operations"
SUMMARY_TOKENS = 256
# Characters a prompt's transcript may take: tokens left after the answer and the instructions, ~3 characters each.
PROMPT_OVERHEAD_TOKENS = 300
CHARS_PER_TOKEN = 3


class RetentionSettings(BaseSettings):
    """The retention policy and its job (KB_RETENTION_*); the LLM for summaries is KB_LLM_*'s."""

    model_config = SettingsConfigDict(env_prefix="KB_RETENTION_", extra="ignore")

    summarize_after_days: float = Field(default=30, gt=0, description="Sessions idle this long get a summary.")
    archive_after_days: float = Field(default=90, gt=0, description="Sessions idle longer are archived.")
    deletion_grace_days: float = Field(default=30, gt=0, description="A session a user deleted is purged after this.")
    audit_days: float = Field(default=365, gt=0, description="Audit rows (and kb_tool_calls rows) are kept this long.")
    batch_size: int = Field(default=200, ge=1, le=10_000, description="Sessions archived per transaction.")
    summaries_per_run: int = Field(default=100, ge=0, description="Summaries a run at most (the rest: next run); on CPU an "
                                   "LLM summary takes 5–20 s.")  # fmt: skip
    llm: bool = Field(default=True, description="Summarize with the configured LLM; false: extractive summaries only.")
    cron: str = Field(default=CRON, description="When retention_daily runs (UTC).")

    @model_validator(mode="after")
    def _coherent(self) -> Self:
        self.policy()  # RetentionPolicy refuses a summary window that ends before it starts
        return self

    def policy(self) -> RetentionPolicy:
        return _policy(self.summarize_after_days, self.archive_after_days, self.deletion_grace_days, self.audit_days)


def _policy(summarize: float, archive: float, grace: float, audit: float) -> RetentionPolicy:
    return RetentionPolicy(timedelta(days=summarize), timedelta(days=archive), timedelta(days=grace), timedelta(days=audit))


@dataclass
class Summarizer:
    """The LLM's summary while it answers; after its first failure (or when it is unreachable or off) an extractive
    one, so a down LLM costs one timeout a run and never fails the job."""

    llm: LLM | None
    budget_chars: int
    state: str  # 'reachable', 'unreachable', 'failed' or 'off': shown in the asset's metadata

    def summarize(self, pending: PendingSummary) -> tuple[str, str]:
        if self.llm is not None:
            llm = self.llm
            try:
                return fold_summary(lambda prompt: llm.complete(prompt).text, pending.previous, pending.messages,
                                    self.budget_chars), "llm"  # fmt: skip
            except Exception as exc:  # any client error: the rest of this run goes extractive
                log.warning("the LLM failed to summarize session %s (%s); extractive summaries from now on", pending.session_id,
                            type(exc).__name__)  # fmt: skip
                self.llm, self.state = None, "failed"
        return extractive_summary(pending.previous, pending.messages), "extractive"


class RetentionResource(dg.ConfigurableResource):
    """Where the sessions and the audit log live, the policy in days, the LLM for summaries, and the clock."""

    database_url: str
    data_dir: str
    audit_key: str | None = Field(default=None, description="KB_AUTH_AUDIT_KEY; default: the data directory's audit.key.")
    summarize_after_days: float = 30
    archive_after_days: float = 90
    deletion_grace_days: float = 30
    audit_days: float = 365
    batch_size: int = 200
    summaries_per_run: int = 100
    llm_backend: str | None = Field(default=None, description="embedded, openai or ollama; unset: extractive summaries only.")
    llm_base_url: str | None = None
    llm_model: str = ""
    llm_api_key: str = "not-needed"
    llm_context_window: int = 8192
    llm_timeout_s: float = 120.0
    now: str | None = Field(default=None, description="ISO 8601 time the policy judges by (tests); default: the wall clock.")

    def clock(self) -> datetime:
        if not self.now:
            return datetime.now(UTC)
        at = datetime.fromisoformat(self.now)
        if at.tzinfo is None:
            raise ValueError(f"retention `now` needs a timezone: {self.now!r}")
        return at.astimezone(UTC)

    def policy(self) -> RetentionPolicy:
        return _policy(self.summarize_after_days, self.archive_after_days, self.deletion_grace_days, self.audit_days)

    @contextmanager
    def sessions(self) -> Iterator[SessionStore]:
        """The session store on the newest schema (the job may run before any API has migrated)."""
        migrate(self.database_url)
        store = SessionStore(self.database_url)
        try:
            yield store
        finally:
            store.engine.dispose()

    @contextmanager
    def audit(self) -> Iterator[AuditLog]:
        """The audit log on the job's clock: a purge and the rows the job records judge by the same `now`."""
        key = audit_key(Path(self.data_dir), self.audit_key)
        with AuditLog(self.database_url, key, clock=self.clock, pool_size=1) as audit_log:
            yield audit_log

    def summarizer(self) -> Summarizer:
        budget = max(1_000, (self.llm_context_window - SUMMARY_TOKENS - PROMPT_OVERHEAD_TOKENS) * CHARS_PER_TOKEN)
        if not self.llm_backend or not self.llm_base_url:
            return Summarizer(None, budget, "off")
        if not _reachable(self.llm_backend, self.llm_base_url):
            return Summarizer(None, budget, "unreachable")
        llm = build_llm(self.llm_backend, self.llm_base_url, self.llm_model, self.llm_api_key, self.llm_context_window,
                        SUMMARY_TOKENS, self.llm_timeout_s)  # fmt: skip
        return Summarizer(llm, budget, "reachable")


def _reachable(backend: str, base_url: str) -> bool:
    """One quick probe, so an LLM that is down is known before the first summary waits out its timeout."""
    url = base_url.rstrip("/") + ("/api/tags" if backend == "ollama" else "/models")
    try:
        return httpx.get(url, timeout=3).status_code == 200
    except httpx.HTTPError:
        return False


@dg.asset(
    group_name=GROUP, description="Summarize sessions idle 30–90 days (by default) whose summary misses messages; messages stay."
)
def retention_summaries(context: dg.AssetExecutionContext, retention: RetentionResource) -> dg.MaterializeResult:
    policy, now, summarizer = retention.policy(), retention.clock(), retention.summarizer()
    methods: Counter[str] = Counter()
    with retention.sessions() as store:
        redo = summarizer.llm is not None  # extractive summaries are redone once the LLM answers
        for pending in store.pending_summaries(policy, now, redo_extractive=redo, limit=retention.summaries_per_run):
            summary, method = summarizer.summarize(pending)
            methods[method if store.save_retention_summary(pending, summary, method, now) else "skipped_changed"] += 1
    context.log.info(f"summaries: {dict(methods)}; LLM {summarizer.state}")
    return dg.MaterializeResult(metadata={"now": now.isoformat(), "llm": summarizer.state, "summarized_llm": methods["llm"],
                                          "summarized_extractive": methods["extractive"],
                                          "skipped_changed": methods["skipped_changed"]})  # fmt: skip


@dg.asset(group_name=GROUP, deps=[retention_summaries],
          description="Move sessions idle over 90 days (default) into kb_session_archive, out of lists and search.")  # fmt: skip
def retention_archive(context: dg.AssetExecutionContext, retention: RetentionResource) -> dg.MaterializeResult:
    policy, now = retention.policy(), retention.clock()
    with retention.sessions() as store:
        moved = store.archive_idle(policy, now, context.run_id, retention.batch_size)
    if moved.sessions:
        with retention.audit() as audit_log:
            audit_log.record("system", "retention.archive", detail={"sessions": moved.sessions, "messages": moved.messages,
                                                                    "run_id": context.run_id})  # fmt: skip
    return dg.MaterializeResult(metadata={"now": now.isoformat(), "archived_sessions": moved.sessions,
                                          "archived_messages": moved.messages,
                                          "newest_updated_at": _iso(moved.newest)})  # fmt: skip


@dg.asset(group_name=GROUP, deps=[retention_archive],
          description="Delete for good sessions users deleted over 30 days (default) ago; messages cascade.")  # fmt: skip
def retention_purge(context: dg.AssetExecutionContext, retention: RetentionResource) -> dg.MaterializeResult:
    policy, now = retention.policy(), retention.clock()
    with retention.sessions() as store:
        purged = store.purge_deleted(policy, now)
    if purged.sessions:
        with retention.audit() as audit_log:
            audit_log.record("system", "retention.purge", detail={"sessions": purged.sessions, "messages": purged.messages,
                                                                  "ids": purged.ids, "run_id": context.run_id})  # fmt: skip
    context.log.info(f"purged {purged.sessions} deleted session(s) with {purged.messages} message(s)")
    return dg.MaterializeResult(metadata={"now": now.isoformat(), "purged_sessions": purged.sessions,
                                          "purged_messages": purged.messages,
                                          "newest_deleted_at": _iso(purged.newest)})  # fmt: skip


@dg.asset(group_name=GROUP, deps=[retention_purge],
          description="Purge audit and kb_tool_calls rows older than a year (default); the purge is audited.")  # fmt: skip
def retention_audit(context: dg.AssetExecutionContext, retention: RetentionResource) -> dg.MaterializeResult:
    policy, now = retention.policy(), retention.clock()
    with retention.sessions() as store:
        tool_calls = store.purge_tool_calls(now - policy.audit_for)
    with retention.audit() as audit_log:
        rows = audit_log.purge(older_than=policy.audit_for)
    context.log.info(f"purged {rows} audit row(s) and {tool_calls} tool-call row(s)")
    return dg.MaterializeResult(metadata={"now": now.isoformat(), "audit_rows_purged": rows, "tool_calls_purged": tool_calls})


@dg.asset_check(asset=retention_summaries, description="No session idle 30–90 days is left with a summary missing messages.")
def idle_sessions_have_summaries(context: dg.AssetCheckExecutionContext, retention: RetentionResource) -> dg.AssetCheckResult:
    meta, _ = _materialized(context, retention_summaries.key)
    with retention.sessions() as store:
        left = store.pending_summaries(retention.policy(), _now(meta, retention), redo_extractive=False, limit=1_000)
    # A warning: summaries_per_run may leave some for the next run, and nothing was lost meanwhile.
    return dg.AssetCheckResult(passed=not left, severity=dg.AssetCheckSeverity.WARN,
                               metadata={"unsummarized": len(left), "sessions": [p.session_id for p in left[:20]]})  # fmt: skip


@dg.asset_check(asset=retention_archive, blocking=True,
                description="Every session this run archived was idle past the limit, and kept all its messages.")  # fmt: skip
def archive_holds_only_idle_sessions(context: dg.AssetCheckExecutionContext, retention: RetentionResource) -> dg.AssetCheckResult:
    _, run_id = _materialized(context, retention_archive.key)
    policy = retention.policy()
    with retention.sessions() as store:
        archived = store.archived(run_id=run_id)
    too_young = [a["id"] for a in archived if policy.stage(_dt(a["updated_at"]), None, a["archived_at"]) != "archive"]
    incomplete = [a["id"] for a in archived if len(a["messages"]) != a["message_count"]]
    metadata: dict[str, Any] = {"archived": len(archived), "too_young": too_young[:20], "incomplete": incomplete[:20]}
    return dg.AssetCheckResult(passed=not too_young and not incomplete, metadata=metadata)


@dg.asset_check(asset=retention_archive, blocking=True,
                description="The archive gained exactly the sessions and messages kb_sessions lost; none in both.")  # fmt: skip
def archive_matches_deleted_rows(context: dg.AssetCheckExecutionContext, retention: RetentionResource) -> dg.AssetCheckResult:
    meta, run_id = _materialized(context, retention_archive.key)
    with retention.sessions() as store:
        archived = store.archived(run_id=run_id)
        still_live = [a["id"] for a in archived if store.stored(a["id"])]
    counts = {"archive_rows": len(archived), "archive_messages": sum(a["message_count"] for a in archived),
              "deleted_sessions": meta.get("archived_sessions", 0),
              "deleted_messages": meta.get("archived_messages", 0)}  # fmt: skip
    passed = (counts["archive_rows"], counts["archive_messages"]) == (counts["deleted_sessions"], counts["deleted_messages"])
    return dg.AssetCheckResult(passed=passed and not still_live, metadata={**counts, "still_live": still_live[:20]})


@dg.asset_check(asset=retention_purge, blocking=True,
                description="Only sessions past the deletion grace were purged, and none past it is left.")  # fmt: skip
def purge_spared_sessions_in_grace(context: dg.AssetCheckExecutionContext, retention: RetentionResource) -> dg.AssetCheckResult:
    meta, _ = _materialized(context, retention_purge.key)
    policy, now = retention.policy(), _now(meta, retention)
    newest = meta.get("newest_deleted_at")
    early = newest is not None and policy.stage(now, _dt(newest), now) != "purge"
    with retention.sessions() as store:
        stages = store.stages(policy, now)
    return dg.AssetCheckResult(passed=not early and stages["purge"] == 0,
                               metadata={"newest_deleted_at_purged": newest or "none", "purged_early": early,
                                         "past_grace_left": stages["purge"], "in_grace": stages["grace"]})  # fmt: skip


@dg.asset_check(asset=retention_audit, blocking=True, description="The audit chain still verifies after the purge.")
def audit_chain_verifies(retention: RetentionResource) -> dg.AssetCheckResult:
    with retention.audit() as audit_log:
        result = audit_log.verify()
    return dg.AssetCheckResult(passed=result.ok, metadata={"rows": result.rows, "problem": result.problem or "none",
                                                           "last_seq": result.last_seq})  # fmt: skip


ASSETS = [retention_summaries, retention_archive, retention_purge, retention_audit]
CHECKS = [idle_sessions_have_summaries, archive_holds_only_idle_sessions, archive_matches_deleted_rows,
          purge_spared_sessions_in_grace, audit_chain_verifies]  # fmt: skip

retention_job = dg.define_asset_job(
    "retention",
    selection=dg.AssetSelection.assets(*ASSETS),
    description="Summarize, archive and purge sessions; purge old audit rows.",
)


def _materialized(context: dg.AssetCheckExecutionContext, key: dg.AssetKey) -> tuple[dict[str, Any], str | None]:
    """The checked asset's newest materialization (this run's, when the job runs it): its metadata and run id."""
    event = context.instance.get_latest_materialization_event(key)
    if event is None or event.asset_materialization is None:
        return {}, None
    metadata = {name: value.value for name, value in event.asset_materialization.metadata.items()}
    return metadata, event.run_id


def _now(metadata: dict[str, Any], retention: RetentionResource) -> datetime:
    """The time the asset judged by, so the check judges the same way."""
    return _dt(metadata["now"]) if metadata.get("now") else retention.clock()


def _dt(value: str | datetime) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


def _from_env(name: str, value: str | None) -> Any:
    """The value as an EnvVar when it came from that variable, so a secret never sits in the resource's config."""
    return dg.EnvVar(name) if value and os.environ.get(name) == value else value


def build_retention_defs(platform: PlatformSettings, postgres: PostgresSettings, llm: LLMSettings | None = None,
                         settings: RetentionSettings | None = None,
                         auth: AuthSettings | None = None) -> dg.Definitions:  # fmt: skip
    """The retention assets, their checks, the `retention` job, its daily schedule and its resource (settings from
    KB_RETENTION_*, the LLM from KB_LLM_*, the audit key from KB_AUTH_AUDIT_KEY unless given)."""
    settings = settings or RetentionSettings()
    llm = llm or LLMSettings()
    url = postgres.database_url or f"postgresql://postgres@{platform.host}:{platform.postgres_port}/kb"
    resource = RetentionResource(
        database_url=_from_env("DATABASE_URL", url),
        data_dir=str(platform.data_dir),
        audit_key=_from_env("KB_AUTH_AUDIT_KEY", (auth or AuthSettings()).audit_key),
        summarize_after_days=settings.summarize_after_days,
        archive_after_days=settings.archive_after_days,
        deletion_grace_days=settings.deletion_grace_days,
        audit_days=settings.audit_days,
        batch_size=settings.batch_size,
        summaries_per_run=settings.summaries_per_run,
        llm_backend=llm.backend if settings.llm else None,
        llm_base_url=llm.base_url or f"http://{platform.host}:{llm.port}/v1",
        llm_model=llm.model,
        llm_api_key=_from_env("KB_LLM_API_KEY", llm.api_key),
        llm_context_window=llm.context_window,
        llm_timeout_s=llm.timeout_s,
    )
    schedule = dg.ScheduleDefinition(name="retention_daily", job=retention_job, cron_schedule=settings.cron,
                                     execution_timezone="UTC", default_status=dg.DefaultScheduleStatus.RUNNING)  # fmt: skip
    return dg.Definitions(assets=ASSETS, asset_checks=CHECKS, jobs=[retention_job], schedules=[schedule],
                          resources={"retention": resource})  # fmt: skip
