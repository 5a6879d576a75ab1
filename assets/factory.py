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
        result = stages.parse(raw, spec)
        folder = storage.record_quarantine(c, result.quarantined, [d.doc_id for d in result.documents])
        quarantined = [{"doc_id": q.doc_id, "reason": q.reason} for q in result.quarantined]
        yield dg.Output(
            result,
            metadata={
                "parsed": len(result.documents),
                "quarantined": len(quarantined),
                "quarantine": dg.MetadataValue.json(quarantined),
                "quarantine_dir": dg.MetadataValue.path(str(folder)),
            },
        )
        yield _result("non_empty_text", checks.check_parsed_text(result.documents))

    @dg.asset(
        key=key("masked_documents"),
        group_name=c,
        ins={"parsed": dg.AssetIn(key("parsed_documents"))},
        check_specs=[_check(c, "masked_documents", "no_unmasked_secrets", "No secret pattern survives masking.")],
        description=f"{c}: passwords, tokens, keys, card numbers, SSNs and phone numbers masked.",
    )
    def masked_documents(parsed: stages.ParseResult):  # type: ignore[no-untyped-def]
        documents, counts = stages.mask(parsed.documents)
        yield dg.Output(
            documents,
            metadata={
                "documents": len(documents),
                "masked": sum(counts.values()),
                "masked_by_kind": dg.MetadataValue.json(counts),
            },
        )
        yield _result("no_unmasked_secrets", checks.check_no_secrets(documents))

    @dg.asset(
        key=key("chunks"),
        group_name=c,
        ins={"documents": dg.AssetIn(key("masked_documents"))},
        check_specs=[
            _check(c, "chunks", "chunk_bounds", f"Chunks non-empty, unique, at most {spec.chunk_tokens} tokens."),
            _check(c, "chunks", "duplicate_chunks", "Identical chunk texts across documents.", blocking=False),
        ],
        description=f"{c}: {spec.chunk_tokens}-token chunks, {spec.chunk_overlap} overlap, metadata {', '.join(spec.metadata)}.",
    )
    def chunks(documents: list, embedder: EmbedderResource):  # type: ignore[no-untyped-def,type-arg]
        chunker = Chunker(spec, embedder.get())
        result = stages.chunk(documents, chunker)
        tokens = [ch.token_count for ch in result]
        yield dg.Output(
            result,
            metadata={
                "chunks": len(result),
                "max_tokens": max(tokens, default=0),
                "mean_tokens": round(sum(tokens) / len(tokens), 1) if tokens else 0,
            },
        )
        yield _result("chunk_bounds", checks.check_chunks(result, spec.chunk_tokens))
        yield _result("duplicate_chunks", checks.check_duplicates(result), dg.AssetCheckSeverity.WARN)

    @dg.asset(
        key=key("embeddings"),
        group_name=c,
        ins={"chunks": dg.AssetIn(key("chunks"))},
        check_specs=[_check(c, "embeddings", "vector_quality", "Model dimension, no NaN, unit norm.")],
        description=f"{c}: dense vectors (FlagEmbedding, batched); unchanged chunk texts reuse stored vectors.",
    )
    def embeddings(chunks: list, embedder: EmbedderResource, index: IndexResource):  # type: ignore[no-untyped-def,type-arg]
        model = embedder.get()
        started = time.perf_counter()
        result = stages.embed(chunks, model, index.get(), c)
        seconds = time.perf_counter() - started
        yield dg.Output(
            result,
            metadata={
                "embedded": result.embedded,
                "reused": result.reused,
                "seconds": round(seconds, 2),
                "model": model.model_id,
            },
        )
        yield _result("vector_quality", checks.check_embeddings(result.vectors, model.dimension))

    @dg.asset(
        key=key("index"),
        group_name=c,
        ins={
            "raw": dg.AssetIn(key("raw_documents")),
            "parsed": dg.AssetIn(key("parsed_documents")),
            "embedded": dg.AssetIn(key("embeddings")),
        },
        description=f"{c}: dense + BM25 sparse vectors in the index; deleted documents removed.",
    )
    def index(
        raw: stages.ExtractResult,
        parsed: stages.ParseResult,
        embedded: stages.EmbedResult,
        index: IndexResource,
        embedder: EmbedderResource,
    ) -> dg.Output[stages.IndexReport]:
        report = stages.write_index(raw, parsed, embedded, index.get(), spec, embedder.get().dimension)
        return dg.Output(
            report,
            metadata={
                "documents": report.documents,
                "chunks": report.chunks,
                "embedded": report.embedded,
                "skipped_unchanged": report.skipped_unchanged,
                "deleted": report.deleted,
                "upserted": report.upserted,
                "removed_chunks": report.removed_chunks,
                "quarantined": len(report.quarantined),
            },
        )

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
