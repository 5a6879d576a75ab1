"""The per-document parse budget: pathological documents are quarantined with their kind while the other
documents of the same call are parsed, in real worker processes."""

from __future__ import annotations

import io
import multiprocessing
import os
import pickle
import signal
import time
import zipfile

import pytest

from assets import parse as parse_module
from assets.budget import ParseBudget, parse_documents
from assets.extract import RawDocument, sha256, skipped
from assets.parse import ParsedDocument, ParseError, parse_document

OWN_WORDS = "the document's own words"


def raw(doc_id: str, content: bytes) -> RawDocument:
    return RawDocument(doc_id, content, sha256(content), len(content), {"path": doc_id})


def run(
    docs: list[RawDocument], budget: ParseBudget, **kwargs: object
) -> tuple[dict[str, ParsedDocument], dict[str, tuple[str, str]]]:
    parsed, failures = parse_documents(docs, "prose", {d.doc_id: f"hash-{d.doc_id}" for d in docs}, budget, **kwargs)  # type: ignore[arg-type]
    assert len(parsed) + len(failures) == len(docs)  # no document is lost
    return {p.doc_id: p for p in parsed}, {doc_id: (kind, reason) for doc_id, kind, reason in failures}


def docx_bomb(unpacked: int) -> bytes:
    """A DOCX-shaped zip whose document part inflates from almost nothing to `unpacked` bytes of zeros."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", '<?xml version="1.0"?><Types/>')
        with archive.open("word/document.xml", "w", force_zip64=True) as part:
            chunk = bytes(1 << 20)
            for _ in range(unpacked >> 20):
                part.write(chunk)
    return buffer.getvalue()


def hooked_parse(doc: RawDocument, splitter: str, doc_hash: str) -> ParsedDocument:
    """The parser with test-only misbehaviours by file name, for what no real input does on demand:
    hang for an hour, die of a segmentation fault, or fail with a message that quotes the document."""
    if doc.doc_id.startswith("hang"):
        time.sleep(3600)
    if doc.doc_id.startswith("segfault"):
        os.kill(os.getpid(), signal.SIGSEGV)
    if doc.doc_id.startswith("bug"):
        raise KeyError(doc.content.decode())
    return parse_document(doc, splitter, doc_hash)


def test_pathological_real_documents_are_cut_or_finish_while_the_others_parse() -> None:
    docs = [
        raw("bomb.docx", docx_bomb(8 << 20)),
        raw("deep.html", b"<html><body>" + b"<div>" * 100_000 + b"deep text" + b"</div>" * 100_000 + b"</body></html>"),
        raw("one-line.txt", b"word " * 1_000_000),  # 5 MB on a single line
        raw("ok.md", b"# Runbook\n\nRestart the gateway.\n"),
        skipped("link.md", "outside_source", "a symbolic link to '/etc/passwd', outside the source folder: not followed", 0, {}),
        raw("ok.yaml", b"kind: ConfigMap\nmetadata:\n  name: gateway\n"),
        # Minutes of unstructured's time; last, so that no worker has to start again after the kill (the
        # test below shows documents after a killed one parsed).
        raw("paragraphs.md", b"A short paragraph.\n\n" * 200_000),
    ]
    started = time.monotonic()
    parsed, failures = run(docs, ParseBudget(seconds=5, memory_mb=1024))
    assert failures["bomb.docx"][0] == "zip_bomb"
    assert failures["paragraphs.md"] == ("parse_timeout", "parsing took longer than the 5-second budget; the parser was stopped")
    assert failures["link.md"][0] == "outside_source"
    # Deep nesting and one huge line finish: lxml gives up on the nesting (no text), the line is text.
    assert "deep.html" in parsed or failures["deep.html"][0] == "unparseable"
    assert parsed["one-line.txt"].sections[0].text.startswith("word word")
    assert parsed["ok.md"].sections[0].headings == ("Runbook",) and parsed["ok.md"].doc_hash == "hash-ok.md"
    assert parsed["ok.yaml"].sections[0].metadata["kind"] == "ConfigMap"
    assert time.monotonic() - started < 180  # the slow document cost its budget, not its minutes


def test_a_document_over_the_memory_budget_is_quarantined_and_the_next_one_parses() -> None:
    """A million-item YAML list: PyYAML's nodes for it take over 500 MB."""
    docs = [raw("million.yaml", b"items: [" + b"1, " * 1_000_000 + b"1]\n"), raw("after.yaml", b"kind: Service\n")]
    parsed, failures = run(docs, ParseBudget(seconds=120, memory_mb=48))
    assert failures == {"million.yaml": ("parse_memory", "parsing needed more than the 48 MiB memory budget")}
    assert parsed["after.yaml"].sections[0].metadata["kind"] == "Service"


@pytest.mark.parametrize("workers", [1, 2])
def test_a_hung_or_crashed_worker_loses_no_other_document(workers: int) -> None:
    docs = [
        raw("hang.txt", b"never returns"),
        raw("first.txt", b"parsed after the hang"),
        raw("segfault.txt", b"kills its worker"),
        raw("bug.txt", OWN_WORDS.encode()),
        raw("latin1.txt", "caf\xe9".encode("latin-1")),
        raw("empty.txt", b"   \n"),
        raw("last.yaml", b"kind: Service\nmetadata:\n  name: web\n"),
    ]
    parsed, failures = run(docs, ParseBudget(seconds=3, memory_mb=512, workers=workers), parse=hooked_parse)
    assert set(parsed) == {"first.txt", "last.yaml"}
    assert failures["hang.txt"][0] == "parse_timeout"
    assert failures["segfault.txt"] == ("parser_error", "the parsing process died (signal SIGSEGV)")
    kind, reason = failures["bug.txt"]
    assert kind == "parser_error" and reason.startswith("parser error KeyError in") and OWN_WORDS not in reason
    assert failures["latin1.txt"] == ("invalid_encoding", "not valid UTF-8 text (byte 3)")
    assert failures["empty.txt"] == ("unparseable", "no text could be extracted")


def test_documents_the_source_did_not_read_never_reach_a_worker() -> None:
    docs = [
        skipped("big.pdf", "oversize", "file is 9 bytes, over the 1-byte limit", 9, {}),
        RawDocument("old.md", b"", "h", 0, {}, skipped_reason="not read"),  # a reason without a kind
    ]
    started = time.monotonic()
    parsed, failures = run(docs, ParseBudget(), parse=hooked_parse)
    assert parsed == {}
    assert failures == {"big.pdf": ("oversize", "file is 9 bytes, over the 1-byte limit"), "old.md": ("skipped", "not read")}
    assert time.monotonic() - started < 1  # no worker was started


def test_a_zip_bomb_is_refused_from_its_central_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both limits: the declared total (lowered here, to build the bomb fast), and a part's inflation
    ratio; the real DOCX files of test_parse.py and the sample knowledge base pass both."""
    monkeypatch.setattr(parse_module, "MAX_UNPACKED_BYTES", 4 << 20)
    with pytest.raises(ParseError, match="unpacks to 5242") as total:
        parse_document(raw("total.docx", docx_bomb(5 << 20)), "prose", "h")
    monkeypatch.undo()
    with pytest.raises(ParseError, match="times its packed size") as ratio:
        parse_document(raw("ratio.docx", docx_bomb(8 << 20)), "prose", "h")
    assert total.value.kind == ratio.value.kind == "zip_bomb"


def test_parse_error_keeps_its_kind_across_processes() -> None:
    error = pickle.loads(pickle.dumps(ParseError("not valid UTF-8 text (byte 3)", "invalid_encoding")))
    assert (str(error), error.kind) == ("not valid UTF-8 text (byte 3)", "invalid_encoding")


def _parse_twice_in_a_spawned_process(queue: multiprocessing.Queue[object]) -> None:
    """What a Dagster step worker does: a spawned process (its resource tracker inherited from the parent, a fd
    without a pid) runs the parse pool, twice."""
    try:
        for attempt in range(2):
            docs = [raw(f"doc-{attempt}.md", b"# Title\n\nSome words.\n")]
            parsed, failures = parse_documents(docs, "prose", {d.doc_id: "h" for d in docs}, ParseBudget(seconds=60))
            assert [p.doc_id for p in parsed] == [f"doc-{attempt}.md"] and not failures
        queue.put("ok")
    except BaseException as error:  # the parent asserts on what happened here
        queue.put(repr(error))


def test_the_pool_runs_inside_a_process_that_was_itself_spawned() -> None:
    context = multiprocessing.get_context("spawn")
    context.Lock()  # the parent's resource tracker runs, as in Dagster's run worker, and the child inherits it
    queue = context.Queue()
    child = context.Process(target=_parse_twice_in_a_spawned_process, args=(queue,))
    child.start()
    outcome = queue.get(timeout=120)
    child.join(30)
    assert outcome == "ok"
