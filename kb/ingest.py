"""In-process ingestion: materialize each collection's asset group and report what changed."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import dagster as dg

from assets.collections import CollectionSpec
from assets.factory import extract_op_name
from assets.stages import IndexReport
from pipelines.definitions import build_definitions


def ingest_collections(
    specs: Sequence[CollectionSpec],
    resources: dict[str, dg.ConfigurableResource],
    instance: dg.DagsterInstance,
    only: Sequence[str] | None = None,
    paths: Sequence[str] = (),
    on_done: Callable[[str], None] | None = None,
    log_level: str = "WARNING",
) -> dict[str, dict[str, Any]]:
    """Run each selected collection's pipeline in this process; one run per collection so a failed
    quality gate stops only that collection. Returns the per-collection report."""
    defs = build_definitions(specs, resources)
    assets = list(defs.assets or [])
    report: dict[str, dict[str, Any]] = {}
    for spec in specs:
        if only and spec.name not in only:
            continue
        started = time.perf_counter()
        run_config: dict[str, Any] = {"loggers": {"console": {"config": {"log_level": log_level}}}}
        if paths:
            run_config["ops"] = {extract_op_name(spec.name): {"config": {"paths": list(paths)}}}
        result = dg.materialize(
            assets,
            resources=resources,
            instance=instance,
            selection=dg.AssetSelection.groups(spec.name),
            run_config=run_config,
            raise_on_error=False,
            tags={"kb/trigger": "cli"},
        )
        seconds = round(time.perf_counter() - started, 2)
        report[spec.name] = _collection_report(spec.name, result, seconds)
        if on_done:
            on_done(spec.name)
    return report


def _collection_report(collection: str, result: dg.ExecuteInProcessResult, seconds: float) -> dict[str, Any]:
    if not result.success:
        failures = [
            str(event.step_failure_data.error.message).strip()
            if event.step_failure_data and event.step_failure_data.error
            else event.message
            for event in result.all_events
            if event.is_step_failure
        ]
        failed_checks = [
            e.event_specific_data.check_name  # type: ignore[union-attr]
            for e in result.all_events
            if e.event_type_value == "ASSET_CHECK_EVALUATION" and not e.event_specific_data.passed  # type: ignore[union-attr]
        ]
        return {
            "ok": False,
            "error": "; ".join(filter(None, failures)) or "run failed",
            "failed_checks": failed_checks,
            "seconds": seconds,
        }
    index: IndexReport = result.output_for_node(f"{collection}__index")
    return {
        "ok": True,
        "documents": index.documents,
        "chunks": index.chunks,
        "embedded": index.embedded,
        "skipped_unchanged": index.skipped_unchanged,
        "deleted": index.deleted,
        "quarantined": [asdict(q) for q in index.quarantined],
        "seconds": seconds,
    }
