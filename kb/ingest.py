"""In-process ingestion: materialize each collection's asset group and report what changed."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
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
    quality gate stops only that collection. Returns the per-collection report; SIGINT or SIGTERM during
    a run (Dagster fails that run) stops the rest with KeyboardInterrupt."""
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
        with stop_signals_kept() as arrived:
            result = dg.materialize(
                assets,
                resources=resources,
                instance=instance,
                selection=dg.AssetSelection.groups(spec.name),
                run_config=run_config,
                raise_on_error=False,
                tags=cli_run_tags(),
            )
        if arrived:
            raise KeyboardInterrupt(f"signal {', '.join(signal.Signals(s).name for s in sorted(arrived))} during {spec.name}")
        seconds = round(time.perf_counter() - started, 2)
        report[spec.name] = _collection_report(spec.name, result, seconds)
        if on_done:
            on_done(spec.name)
    return report


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def cli_run_tags() -> dict[str, str]:
    """Tags of the runs `kb ingest` runs in its own process: the host, so that a later `kb ingest` on the same
    host (and only there: a pid means nothing elsewhere) can tell a run whose process was killed."""
    return {"kb/trigger": "cli", "kb/host": socket.gethostname()}


@contextmanager
def stop_signals_kept() -> Iterator[set[int]]:
    """Keep this process' SIGINT and SIGTERM handlers across an in-process Dagster run, and collect which of
    them arrived during it.

    Dagster's execution swaps in its own handlers and, when it ends, sets SIGTERM to whatever SIGINT is: for a
    process that a shell started in the background SIGINT is SIG_IGN, so SIGTERM stayed ignored for good. It
    also turns an interrupt during a step into a failed run and forgets it. Python writes the number of every
    signal it handles to the wakeup fd, whichever handler is installed, so that tells what arrived."""
    arrived: set[int] = set()
    if threading.current_thread() is not threading.main_thread():  # handlers belong to the main thread
        yield arrived
        return
    saved = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    reader, writer = os.pipe()
    os.set_blocking(reader, False)
    os.set_blocking(writer, False)
    previous = signal.set_wakeup_fd(writer, warn_on_full_buffer=False)
    try:
        yield arrived
    finally:
        signal.set_wakeup_fd(previous)
        for signum, handler in saved.items():
            if handler is not None:  # None: installed outside Python, nothing to restore
                signal.signal(signum, handler)
        try:
            arrived.update(b for b in os.read(reader, 1024) if b in STOP_SIGNALS)
        except BlockingIOError:
            pass
        os.close(reader)
        os.close(writer)


def _collection_report(collection: str, result: dg.ExecuteInProcessResult, seconds: float) -> dict[str, Any]:
    if not result.success:
        failures = [
            _error_chain(event.step_failure_data.error) if event.step_failure_data and event.step_failure_data.error
            else event.message
            for event in result.all_events
            if event.is_step_failure
        ]  # fmt: skip
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


def _error_chain(error: Any) -> str:
    """A step's error with its causes ("Error occurred while executing op ...: DiskFull: could not extend file ..."):
    Dagster wraps the exception that tells an operator what went wrong."""
    messages = []
    while error is not None and len(messages) < 5:
        messages.append(str(error.message).strip())
        error = error.cause
    return ": ".join(dict.fromkeys(m for m in messages if m))
