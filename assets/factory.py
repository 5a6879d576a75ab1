"""One factory turns each collection spec into its asset group, checks, job and schedule."""

import time

import dagster as dg
from pydantic import Field

from assets import checks, stages
from assets.chunk import Chunker
from assets.collections import CollectionSpec
from assets.extract import source_for
from pipelines.resources import EmbedderResource, IndexResource, StorageResource

STAGES = ("raw_documents", "parsed_documents", "masked_documents", "chunks", "embeddings", "index")


class ExtractConfig(dg.Config):
    paths: list[str] = Field(default_factory=list, description="Only these documents (webhook runs); empty: the whole source.")


def asset_key(collection: str, stage: str) -> dg.AssetKey:
    return dg.AssetKey([collection, stage])


def extract_op_name(collection: str) -> str:
    return f"{collection}__raw_documents"


def job_name(collection: str) -> str:
    return f"ingest_{collection}"


def _check(collection: str, stage: str, name: str, description: str, blocking: bool = True) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(name, asset=asset_key(collection, stage), description=description, blocking=blocking)


def _result(
    name: str, outcome: checks.CheckOutcome, severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.ERROR
) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=name, passed=outcome.passed, severity=severity, metadata={"details": dg.MetadataValue.json(outcome.metadata)}
    )


def _quarantine_metadata(quarantined: list[stages.Quarantined]) -> dict[str, object]:
    """What a stage left out, as asset metadata: how many and which, with the reason."""
    listed = [{"doc_id": q.doc_id, "kind": q.kind, "reason": q.reason} for q in quarantined]
    return {"quarantined": len(quarantined), "quarantine": dg.MetadataValue.json(listed[:200])}


def build_collection_defs(spec: CollectionSpec) -> dg.Definitions:
    """The asset group of one collection: raw → parsed → masked → chunks → embeddings → index."""
    c = spec.name

    def key(stage: str) -> dg.AssetKey:
        return asset_key(c, stage)

    @dg.asset(
        key=key("raw_documents"),
        group_name=c,
        description=f"{c}: source documents that changed since the index was written.",
        kinds={"python"},
    )
    def raw_documents(
        context: dg.AssetExecutionContext,
        config: ExtractConfig,
        index: IndexResource,
        embedder: EmbedderResource,
        storage: StorageResource,
    ) -> dg.Output[stages.ExtractResult]:
        fingerprint = spec.fingerprint(embedder.fingerprint())
        source = source_for(spec.source, storage.git_cache)
        result = stages.extract(source, index.get(), spec, fingerprint, storage.max_file_bytes, config.paths or None)
        context.log.info(f"{len(result.changed)} changed, {result.unchanged} unchanged, {len(result.deleted)} deleted")
        return dg.Output(
            result,
            metadata={
                "documents": len(result.doc_hashes),
                "changed": len(result.changed),
                "unchanged": result.unchanged,
                "deleted": len(result.deleted),
                "scope": dg.MetadataValue.json(result.scope or "all"),
            },
        )

    @dg.asset(
        key=key("parsed_documents"),
        group_name=c,
        ins={"raw": dg.AssetIn(key("raw_documents"))},
        check_specs=[_check(c, "parsed_documents", "non_empty_text", "Every parsed document has text.")],
        description=f"{c}: documents parsed with unstructured or on their code/YAML structure; failures quarantined.",
    )
    def parsed_documents(raw: stages.ExtractResult, storage: StorageResource):  # type: ignore[no-untyped-def]
        result = stages.parse(raw, spec, storage.parse_budget)
        yield dg.Output(result, metadata={"parsed": len(result.documents), **_quarantine_metadata(result.quarantined)})
        yield _result("non_empty_text", checks.check_parsed_text(result.documents))

    @dg.asset(
        key=key("masked_documents"),
        group_name=c,
        ins={"parsed": dg.AssetIn(key("parsed_documents"))},
        check_specs=[
            _check(
                c,
                "masked_documents",
                "no_unmasked_secrets",
                "Documents whose masked text still held a secret pattern: quarantined, the rest go on.",
                blocking=False,
            )
        ],  # fmt: skip
        description=f"{c}: passwords, tokens, keys, card numbers, SSNs and phone numbers masked.",
    )
    def masked_documents(parsed: stages.ParseResult):  # type: ignore[no-untyped-def]
        result = stages.mask(parsed.documents)
        yield dg.Output(
            result,
            metadata={
                "documents": len(result.documents),
                "masked": sum(result.counts.values()),
                "masked_by_kind": dg.MetadataValue.json(result.counts),
                **_quarantine_metadata(result.quarantined),
            },
        )
        left = [q for q in result.quarantined if q.kind == "unmasked_secret"]
        outcome = checks.CheckOutcome(not left, {"quarantined": [{"doc_id": q.doc_id, "reason": q.reason} for q in left]})
        yield _result("no_unmasked_secrets", outcome, dg.AssetCheckSeverity.WARN)

    @dg.asset(
        key=key("chunks"),
        group_name=c,
        ins={"masked": dg.AssetIn(key("masked_documents"))},
        check_specs=[
            _check(c, "chunks", "chunk_bounds", f"Chunks non-empty, unique, at most {spec.chunk_tokens} tokens."),
            _check(c, "chunks", "duplicate_chunks", "Identical chunk texts across documents.", blocking=False),
        ],
        description=f"{c}: {spec.chunk_tokens}-token chunks, {spec.chunk_overlap} overlap, metadata {', '.join(spec.metadata)}.",
    )
    def chunks(masked: stages.MaskResult, embedder: EmbedderResource):  # type: ignore[no-untyped-def]
        chunker = Chunker(spec, embedder.get())
        result = stages.chunk(masked.documents, chunker)
        tokens = [ch.token_count for ch in result.chunks]
        yield dg.Output(
            result,
            metadata={
                "chunks": len(result.chunks),
                "max_tokens": max(tokens, default=0),
                "mean_tokens": round(sum(tokens) / len(tokens), 1) if tokens else 0,
                **_quarantine_metadata(result.quarantined),
            },
        )
        yield _result("chunk_bounds", checks.check_chunks(result.chunks, spec.chunk_tokens))
        yield _result("duplicate_chunks", checks.check_duplicates(result.chunks), dg.AssetCheckSeverity.WARN)

    @dg.asset(
        key=key("embeddings"),
        group_name=c,
        ins={"chunks": dg.AssetIn(key("chunks"))},
        check_specs=[_check(c, "embeddings", "vector_quality", "Model dimension, no NaN, unit norm.")],
        description=f"{c}: dense vectors (FlagEmbedding, batched); unchanged chunk texts reuse stored vectors.",
    )
    def embeddings(chunks: stages.ChunkResult, embedder: EmbedderResource, index: IndexResource):  # type: ignore[no-untyped-def]
        model = embedder.get()
        started = time.perf_counter()
        result = stages.embed(chunks.chunks, model, index.get(), c)
        seconds = time.perf_counter() - started
        yield dg.Output(
            result,
            metadata={
                "embedded": result.embedded,
                "reused": result.reused,
                "seconds": round(seconds, 2),
                "model": model.model_id,
                **_quarantine_metadata(result.quarantined),
            },
        )
        yield _result("vector_quality", checks.check_embeddings(result.vectors, model.dimension))

    @dg.asset(
        key=key("index"),
        group_name=c,
        ins={
            "raw": dg.AssetIn(key("raw_documents")),
            "parsed": dg.AssetIn(key("parsed_documents")),
            "masked": dg.AssetIn(key("masked_documents")),
            "chunked": dg.AssetIn(key("chunks")),
            "embedded": dg.AssetIn(key("embeddings")),
        },
        check_specs=[
            _check(
                c,
                "index",
                "quarantine",
                "Documents left out of the index (any stage), with the reason; they keep "
                "what the index held of them and are tried again on every run.",
                blocking=False,
            )
        ],  # fmt: skip
        description=f"{c}: dense + BM25 sparse vectors in the index; deleted documents removed; quarantine recorded.",
    )
    def index(  # type: ignore[no-untyped-def]
        raw: stages.ExtractResult,
        parsed: stages.ParseResult,
        masked: stages.MaskResult,
        chunked: stages.ChunkResult,
        embedded: stages.EmbedResult,
        index: IndexResource,
        embedder: EmbedderResource,
        storage: StorageResource,
    ):
        left_out = stages.all_quarantined(parsed.quarantined, masked.quarantined, chunked.quarantined, embedded.quarantined)
        report = stages.write_index(raw, parsed, embedded, index.get(), spec, embedder.get().dimension, left_out)
        records = storage.record_quarantine(c, raw, parsed, report.quarantined)
        yield dg.Output(
            report,
            metadata={
                "documents": report.documents,
                "chunks": report.chunks,
                "embedded": report.embedded,
                "skipped_unchanged": report.skipped_unchanged,
                "deleted": report.deleted,
                "upserted": report.upserted,
                "removed_chunks": report.removed_chunks,
                **_quarantine_metadata(report.quarantined),
            },
        )
        listed = [r.as_dict() for r in records]
        outcome = checks.CheckOutcome(not records, {"quarantined": len(records), "documents": listed[:200]})
        yield _result("quarantine", outcome, dg.AssetCheckSeverity.WARN)

    job = dg.define_asset_job(job_name(c), selection=dg.AssetSelection.groups(c), description=f"Reindex {c}.")
    schedules = (
        [
            dg.ScheduleDefinition(
                name=f"{c}_refresh", job=job, cron_schedule=spec.schedule, default_status=dg.DefaultScheduleStatus.RUNNING
            )
        ]
        if spec.schedule
        else []
    )
    return dg.Definitions(
        assets=[raw_documents, parsed_documents, masked_documents, chunks, embeddings, index], jobs=[job], schedules=schedules
    )
