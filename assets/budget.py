"""Parse documents in worker processes, each document under a wall-time and a memory budget.

A parser that hangs on one document, or takes all memory on it, must cost that document only: each
document is parsed by a worker process (pebble) that is killed when it overruns the time budget, under
an address-space limit (RLIMIT_AS) that turns a runaway allocation into a MemoryError. Such documents
come back as failures with a short kind and a reason that never quotes the document, and the others
go on (in a fresh worker where one was killed or died).

Workers are started with "spawn": the calling process may hold torch and other threaded libraries, and
a fork of it is not safe. A worker imports the parsers this call's documents need before it takes its
first document, so the import (seconds for unstructured) counts against no document's time. The
memory limit is set around each parse: `memory_mb` is what parsing one document may add to what the
worker has mapped when it starts on it (its parsers, 0.4 to 1.8 GB of address space, included).
Every document goes through a worker, tiny ones too: an in-process path would have no budget at all,
and it saves little, since a fresh process pays the same imports (README, "Parse budget").
"""

from __future__ import annotations

import concurrent.futures
import importlib
import multiprocessing
import os
import resource
import signal
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import PurePosixPath

from pebble import ProcessExpired, ProcessPool

from assets.extract import RawDocument
from assets.parse import ParsedDocument, ParseError, failure_without_message, parse_document

Parse = Callable[[RawDocument, str, str], ParsedDocument]
Failure = tuple[str, str, str]  # (doc_id, kind, reason)

# The parser modules a document needs, by file suffix: imported by each worker before its first document.
PARSER_MODULES = {
    ".md": "unstructured.partition.md",
    ".markdown": "unstructured.partition.md",
    ".html": "unstructured.partition.html",
    ".htm": "unstructured.partition.html",
    ".docx": "unstructured.partition.docx",
    ".pdf": "unstructured.partition.pdf",
}
_MIB = 1024 * 1024
# An upper bound on starting a worker and importing its parsers (seconds for unstructured and spaCy).
WORKER_START_SECONDS = 120


@dataclass(frozen=True)
class ParseBudget:
    """Per-document limits: wall seconds (0: none) and the MiB of address space one document's parse may
    add to its worker (its loaded parsers not counted); and how many worker processes parse at once."""

    seconds: float = 60
    memory_mb: int = 2048
    workers: int = 1


@dataclass(frozen=True)
class _Failed:
    """A worker's report that a document did not parse (an exception would cross the pipe too, but
    its message, which may quote the document, would come with it)."""

    kind: str
    reason: str


def parse_documents(
    raws: Sequence[RawDocument],
    splitter: str,
    doc_hashes: dict[str, str],
    budget: ParseBudget,
    parse: Parse = parse_document,
) -> tuple[list[ParsedDocument], list[Failure]]:
    """Parse each document within the budget: the parsed ones in input order, and (doc_id, kind, reason)
    for the others. Kinds: the source's skipped kind, ParseError's kind ("invalid_encoding",
    "unparseable", "zip_bomb"), "parse_timeout", "parse_memory" or "parser_error" (any other failure,
    a worker that died included). `parse` is a module-level function, replaceable for tests."""
    parsed: dict[int, ParsedDocument] = {}
    failures: dict[int, Failure] = {}
    pending = []
    for n, raw in enumerate(raws):
        if raw.skipped_kind or raw.skipped_reason:  # never read: nothing to parse
            failures[n] = (raw.doc_id, raw.skipped_kind or "skipped", raw.skipped_reason or "not read")
        else:
            pending.append(n)
    if pending:
        workers = max(1, min(budget.workers, len(pending)))
        pool = ProcessPool(
            max_workers=workers,
            initializer=_start_worker,
            initargs=(parser_modules(raws[n] for n in pending),),
            context=multiprocessing.get_context("spawn"),
        )
        try:
            timeout = budget.seconds if budget.seconds > 0 else None
            futures = {
                n: pool.schedule(
                    _parse_one, (parse, raws[n], splitter, doc_hashes[raws[n].doc_id], budget.memory_mb), timeout=timeout
                )
                for n in pending
            }
            deadline = None if timeout is None else time.monotonic() + _patience(timeout, len(pending), workers)
            for n, future in futures.items():
                outcome = _outcome(future, budget, deadline)
                if isinstance(outcome, _Failed):
                    failures[n] = (raws[n].doc_id, outcome.kind, outcome.reason)
                else:
                    parsed[n] = outcome
        finally:
            pool.stop()  # every task is done (or given up on): end the workers now
            pool.join()
            _stop_resource_tracker()
    return [parsed[n] for n in sorted(parsed)], [failures[n] for n in sorted(failures)]


def _stop_resource_tracker() -> None:
    """End the helper process that spawn's locks start, and reap it: left running, it outlives a process that exits
    on a signal (`kb up`) by a moment and lingers as a zombie where PID 1 does not reap; the next pool starts a new one."""
    from multiprocessing import resource_tracker

    tracker = resource_tracker._resource_tracker
    # A process that was itself spawned (Dagster's step workers) uses its parent's tracker: it holds the fd but no
    # pid, and must neither close it nor wait for a process it did not start.
    if getattr(tracker, "_pid", None) is not None and hasattr(tracker, "_stop"):
        tracker._stop()


def _patience(seconds: float, documents: int, workers: int) -> float:
    """How long a whole call may take while the pool works: each document its budget plus a worker
    start (a timeout or crash costs one). Past it the pool itself is stuck, and what is left fails."""
    return (seconds + WORKER_START_SECONDS) * -(-documents // workers) + WORKER_START_SECONDS


def parser_modules(raws: Iterable[RawDocument]) -> tuple[str, ...]:
    """The parser modules these documents need, in a stable order."""
    suffixes = {PurePosixPath(raw.doc_id.lower()).suffix for raw in raws}
    return tuple(sorted({PARSER_MODULES[s] for s in suffixes if s in PARSER_MODULES}))


def _outcome(
    future: concurrent.futures.Future[ParsedDocument | _Failed], budget: ParseBudget, deadline: float | None
) -> ParsedDocument | _Failed:
    """The worker's result, or the failure the pool saw: a timeout (the worker was killed), a worker
    that died (a crash in a C parser, or the kernel's OOM killer), or a pool that stopped working."""
    try:
        return future.result(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
    except concurrent.futures.TimeoutError:
        if not future.done():
            return _Failed("parse_timeout", "not parsed: the parse workers stopped responding")
        return _Failed("parse_timeout", f"parsing took longer than the {budget.seconds:g}-second budget; the parser was stopped")
    except ProcessExpired as exc:
        return _Failed("parser_error", f"the parsing process died ({_exit_cause(exc.exitcode)})")
    except Exception as exc:  # the pool's own failure (a result that does not pickle): this document only
        return _Failed("parser_error", f"parsing failed: {type(exc).__name__}")


def _exit_cause(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit code {exitcode}"


def _start_worker(modules: tuple[str, ...]) -> None:
    """Load the parsers before the first document, so that neither the import (seconds) nor its memory
    counts against one. Never raises: a failing initializer would make pebble restart the worker
    forever; a parser that did not import fails on its documents instead, with its reason."""
    try:
        for name in modules:
            importlib.import_module(name)
        if modules:
            from assets.parse import _offline_unstructured

            _offline_unstructured()
    except Exception:
        traceback.print_exc()


@contextmanager
def _memory_limit(memory_mb: int) -> Iterator[None]:
    """Cap the address space at what the worker has mapped now plus the budget, for one document.
    Lifted again afterwards (a soft limit may go back up to the hard one), so that receiving the next
    document and sending a result never fail on what an earlier document left fragmented."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _address_space() + memory_mb * _MIB
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _address_space() -> int:
    """This process's virtual size in bytes (Linux); 0 elsewhere, where the budget is then absolute."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _parse_one(parse: Parse, raw: RawDocument, splitter: str, doc_hash: str, memory_mb: int) -> ParsedDocument | _Failed:
    """Runs in a worker: one document's parse, its failure as a kind and a reason without its text."""
    try:
        with _memory_limit(memory_mb):
            return parse(raw, splitter, doc_hash)
    except ParseError as exc:
        return _Failed(exc.kind, str(exc))
    except MemoryError:
        return _Failed("parse_memory", f"parsing needed more than the {memory_mb} MiB memory budget")
    except Exception as exc:  # a parser bug: where it raised, not its message (which may quote the document)
        return _Failed("parser_error", f"parser error {failure_without_message(exc)}")
