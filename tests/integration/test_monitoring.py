"""Monitoring under deploy/monitoring/: promtool checks the Prometheus config and the alert rules and runs their
unit tests (alerts_test.yml); a real Prometheus on loopback, started from the committed prometheus.yml, scrapes a
real API (uvicorn, sign-in on, the viewer key the config's comment tells operators to create), the real llama.cpp
server with the 0.5B model and Debian's node_exporter; every rule and every dashboard query is valid PromQL there,
and every metric they name is one of those three exports (or a recording rule of alerts.yml, `up`, or a name
still landing). Needs `make prometheus` (Debian's prometheus, promtool and prometheus-node-exporter)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import pytest
import uvicorn
import yaml
from prometheus_client.parser import text_string_to_metric_families

from api.http_metrics import UNMATCHED, HTTPMetrics
from api.main import create_app
from api.metrics import REGISTRY as METRICS_REGISTRY
from api.metrics import register_usage_collector
from api.security import sign
from api.state import AppState
from assets.collections import CollectionSpec
from assets.index import PgVectorIndex
from kb.access.keys import KeyStore
from kb.access.roles import load_roles
from kb.ingest import ingest_collections
from kb.models import MODELS, provision
from kb.platform import Platform
from kb.settings import PROJECT_ROOT, APISettings, AuthSettings, IndexSettings, LLMSettings, PlatformSettings, PostgresSettings
from query_engine.engine import AnswerEngine
from query_engine.llm import build_llm
from query_engine.memory import SessionStore, migrate
from query_engine.rerank import EvidenceReranker
from tests.conftest import SAMPLES, free_port
from tests.integration.test_pipeline import resources

try:
    from api.metrics import register_backup_collector
except ImportError:  # another change is adding the backup gauge to api/metrics.py
    register_backup_collector = None  # type: ignore[assignment]

MONITORING = PROJECT_ROOT / "deploy" / "monitoring"
DASHBOARDS = MONITORING / "grafana" / "dashboards"
PROVISIONING = MONITORING / "grafana" / "provisioning"
EXPECTED_DASHBOARDS = {"kb-api-llm-overview", "kb-connectors", "kb-index", "kb-user-experience", "kb-infrastructure"}
JOBS = {"kb-api", "kb-llm", "node"}
# Metric names no scraped component exports, each for a reason.
NOT_EXPORTED = {"up": "Prometheus writes it for every scrape target"}
if register_backup_collector is None:
    NOT_EXPORTED["kb_backup_last_success_timestamp"] = "landing in api/metrics.py (0 until a backup succeeds)"
LLM_MODEL = "qwen2.5-coder-0.5b-instruct"
QUESTION = "How do I renew the gateway certificate?"
MONITORED_COLLECTION = "monitored_runbooks"
RUNBOOKS = ("certificate-renewal.md", "gateway-high-error-rate.md")
# What Grafana substitutes before a query reaches Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}
SCRAPE_S = 2
WAIT_S = 60.0
MISSING = "{what} not found: run `make prometheus` (installs Debian's prometheus, promtool and prometheus-node-exporter)"


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(MISSING.format(what=name))
    return path


def _run(*command: str, cwd: Path = MONITORING) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def _wait(what: str, probe: Callable[[], Any], timeout: float = WAIT_S) -> Any:
    """`probe()`'s first truthy result, polled until `timeout`; the failure says what was awaited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if result := probe():
                return result
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


# The queries: every rule of alerts.yml and every panel target of the dashboards.


def _rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"] for rule in group["rules"]]


def _dashboards() -> dict[str, dict[str, Any]]:
    return {path.stem: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def _queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every rule and dashboard target, with Grafana's variables substituted."""
    found = [(f"alerts.yml {rule.get('alert') or rule['record']}", str(rule["expr"])) for rule in _rules()]
    for name, board in _dashboards().items():
        for panel in board["panels"]:
            for target in panel.get("targets", []):  # a row (a heading over panels) has none
                expr = target["expr"]
                for variable, value in GRAFANA_VARIABLES.items():
                    expr = expr.replace(variable, value)
                found.append((f"{name}.json panel {panel['id']} ({panel['title']})", expr))
    return found


# Reading names out of PromQL. No PromQL parser is installed; the syntax these files use is small, and every
# query also goes through the real Prometheus below, so a query this misreads still fails somewhere.
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w:.])[A-Za-z_:][\w:]*+(?!\s*\()")  # possessive: no backtracking to a prefix
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right",
             "inf", "nan"}  # fmt: skip
_SELECTOR = re.compile(r"([A-Za-z_:][\w:]*)\s*\{")
_MATCHER = re.compile(r'\s*,?\s*(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*,?')


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (functions, keywords, labels and durations left out)."""
    bare = _STRING.sub('""', expr)
    bare = re.sub(r"\{[^}]*\}", " ", bare)  # label matchers
    bare = re.sub(r"\[[^\]]*\]", " ", bare)  # ranges and subqueries
    bare = _GROUPING.sub(" ", bare)
    return {name for name in _IDENTIFIER.findall(bare) if name.lower() not in _KEYWORDS}


def label_values(expr: str, label: str) -> set[str]:
    """Literal values an expression's selectors match `label` against (= and =~ of plain alternatives)."""
    values: set[str] = set()
    for selector in _SELECTOR.finditer(expr):
        position = selector.end()
        while matcher := _MATCHER.match(expr, position):
            name, op, value = matcher.groups()
            position = matcher.end()
            if name == label and op == "=":
                values.add(value)
            elif name == label and op == "=~" and re.fullmatch(r"[\w/:-]+(\|[\w/:-]+)*", value):  # no regex but |
                values.update(value.split("|"))
    return values


def exported_names(exposition: str) -> set[str]:
    """Every series name an exposition can carry, also for labelled metrics that have no sample yet."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count"),
                "info": ("_info",)}  # fmt: skip
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names.add(family.name)
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


def test_metric_names_are_read_from_promql() -> None:
    expr = ('histogram_quantile(0.95, sum by (le, route) (rate(kb_http_request_duration_seconds_bucket{route!="/mcp",'
            'status=~"5.."}[5m] offset 1h))) > 5 and on (instance) group_left count by (instance) (llamacpp:requests_processing)'
            ' / ignoring (mode) 1e3 unless time() - kb:retrieval_seconds:mean5m')  # fmt: skip
    assert metric_names(expr) == {"kb_http_request_duration_seconds_bucket", "llamacpp:requests_processing",
                                  "kb:retrieval_seconds:mean5m"}  # fmt: skip
    assert metric_names('up{job="kb-api"} == 0') == {"up"}
    stages = (
        'sum(rate(kb_stage_duration_ms_sum{stage=~"embed|search", job="kb"}[5m])) / kb_stage_duration_ms_count{stage="rerank"}'
    )
    assert label_values(stages, "stage") == {"embed", "search", "rerank"}
    assert label_values('x{route!="/mcp"} + x{status=~"5.."}', "route") == set() == label_values('x{status=~"5.."}', "status")


# What needs only promtool.


def test_promtool_accepts_the_committed_config(tmp_path: Path) -> None:
    promtool = _binary("promtool")
    syntax = _run(promtool, "check", "config", "--syntax-only", "prometheus.yml")
    assert syntax.returncode == 0, syntax.stdout + syntax.stderr
    # The full check also opens the files the config names: the key file is the operator's, so a stand-in.
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    key_file = tmp_path / "kb-api-key"
    key_file.write_text("kb_stand-in-for-the-check\n")
    api_jobs = [job for job in config["scrape_configs"] if job["job_name"] == "kb-api"]
    assert len(api_jobs) == 1 and api_jobs[0]["authorization"]["type"] == "Bearer"
    api_jobs[0]["authorization"]["credentials_file"] = str(key_file)
    shutil.copy(MONITORING / "alerts.yml", tmp_path / "alerts.yml")
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    full = _run(promtool, "check", "config", "--lint=all", "prometheus.yml", cwd=tmp_path)
    assert full.returncode == 0 and f"SUCCESS: {len(_rules())} rules found" in full.stdout, full.stdout + full.stderr
    assert {job["job_name"] for job in config["scrape_configs"]} == JOBS


def test_promtool_accepts_the_rules() -> None:
    checked = _run(_binary("promtool"), "check", "rules", "--lint=all", "alerts.yml")
    assert checked.returncode == 0 and f"SUCCESS: {len(_rules())} rules found" in checked.stdout, checked.stdout + checked.stderr


def test_alerts_fire_at_the_thresholds() -> None:
    tested = _run(_binary("promtool"), "test", "rules", "alerts_test.yml")
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr
    cases = yaml.safe_load((MONITORING / "alerts_test.yml").read_text())["tests"]
    covered = {check["alertname"] for case in cases for check in case["alert_rule_test"]}
    fired = {(check["alertname"], alert["exp_labels"]["severity"]) for case in cases for check in case["alert_rule_test"]
             for alert in check.get("exp_alerts") or []}  # fmt: skip
    alerts = [rule for rule in _rules() if "alert" in rule]
    assert covered == {rule["alert"] for rule in alerts}, "every alert has a unit test"
    assert fired == {(rule["alert"], rule["labels"]["severity"]) for rule in alerts}, "every alert and severity fires in one"


def test_every_alert_has_a_severity_a_for_and_annotations() -> None:
    for rule in (rule for rule in _rules() if "alert" in rule):
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_dashboards_are_grafana_models_on_the_provisioned_datasource() -> None:
    boards = _dashboards()
    assert set(boards) == EXPECTED_DASHBOARDS
    assert {board["uid"] for board in boards.values()} == EXPECTED_DASHBOARDS, "the file name is the uid"
    assert len({board["title"] for board in boards.values()}) == len(boards)
    datasource = yaml.safe_load((PROVISIONING / "datasources" / "kb-prometheus.yaml").read_text())["datasources"][0]
    assert datasource["type"] == "prometheus" and datasource["url"].endswith(":9090")
    provider = yaml.safe_load((PROVISIONING / "dashboards" / "kb.yaml").read_text())["providers"][0]
    assert provider["type"] == "file" and provider["options"]["path"]
    for name, board in boards.items():
        assert len(board["uid"]) <= 40 and board["schemaVersion"] >= 36 and board["panels"], name
        variable = next(v for v in board["templating"]["list"] if v["name"] == "datasource")
        assert variable["type"] == "datasource" and variable["current"]["value"] == datasource["uid"], name
        assert len({panel["id"] for panel in board["panels"]}) == len(board["panels"]), name
        for panel in board["panels"]:
            where = f"{name} panel {panel['id']}"
            if panel["type"] == "row":  # a heading over the panels below it: no query of its own
                assert panel["title"] and not panel.get("targets") and panel["gridPos"]["w"] == 24, where
                continue
            assert panel["type"] in ("stat", "timeseries") and panel["title"], where
            assert set(panel["gridPos"]) == {"h", "w", "x", "y"} and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, where
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
            assert panel["targets"] and all(t["expr"] and t["refId"] for t in panel["targets"]), where


# A running platform scraped by a real Prometheus.


@dataclass
class RunningAPI:
    url: str
    app_routes: set[str]
    client_key: str
    prometheus_key: str


@pytest.fixture(scope="module")
def llm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Platform]]:
    """The embedded llama.cpp server with the 0.5B model, started as `kb up` starts it (its /metrics on)."""
    platform = PlatformSettings()
    runtime = Platform(platform, PostgresSettings(), IndexSettings())
    try:
        model_path = provision(MODELS[LLM_MODEL], platform.data_dir / "models")
        url = runtime.start_llm(model_path, LLM_MODEL, free_port(), 2048, 2, tmp_path_factory.mktemp("llm-logs"))
        runtime.wait_for(f"{url}/models", "the LLM server", timeout=300)
        yield url, runtime
    finally:
        runtime.stop()


@pytest.fixture(scope="module")
def node_exporter() -> Iterator[str]:
    """Debian's node_exporter on a free loopback port, with the collectors the dashboards read."""
    address = f"127.0.0.1:{free_port()}"
    collectors = ("filesystem", "cpu", "meminfo", "loadavg")
    process = subprocess.Popen([_binary("prometheus-node-exporter"), f"--web.listen-address={address}",
                                "--collector.disable-defaults", *(f"--collector.{c}" for c in collectors)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        _wait("node_exporter", lambda: httpx.get(f"http://{address}/metrics", timeout=2).status_code == 200)
        yield address
    finally:
        _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=15)


@pytest.fixture(scope="module")
def api(
    postgres_url: str,
    sample_specs: list[CollectionSpec],
    embedder,
    llm: tuple[str, Platform],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningAPI]:  # type: ignore[no-untyped-def]
    """The API under uvicorn on a free port, sign-in on with roles.yaml, two runbooks ingested, the real LLM."""
    folder = tmp_path_factory.mktemp("monitored-runbooks")
    for runbook in RUNBOOKS:  # two are enough to retrieve from, and ingest in half the time of all ten
        shutil.copy(SAMPLES / "runbooks" / runbook, folder)
    runbooks = next(s for s in sample_specs if s.name == "runbooks")
    spec = runbooks.model_copy(update={"name": MONITORED_COLLECTION,
                                       "source": runbooks.source.model_copy(update={"path": str(folder)})})  # fmt: skip
    report = ingest_collections([spec], resources(postgres_url, tmp_path_factory.mktemp("monitored-data")),
                                dg.DagsterInstance.ephemeral())  # fmt: skip
    assert report[spec.name]["ok"], report
    migrate(postgres_url)
    store = KeyStore(postgres_url)
    client_key, _ = store.create("monitoring-test", "admin", note="test_monitoring client")
    prometheus_key, _ = store.create("prometheus", "viewer", note="test_monitoring scrapes")  # as prometheus.yml says
    store.close()
    llm_url, _ = llm
    llm_settings = LLMSettings(model=LLM_MODEL, max_answer_tokens=24)
    index = PgVectorIndex(postgres_url)
    engine = AnswerEngine(index, embedder, [spec.name], EvidenceReranker(),
                          build_llm("openai", llm_url, LLM_MODEL, max_tokens=24, timeout=120))  # fmt: skip
    sessions = SessionStore(postgres_url)
    state = AppState(PlatformSettings(data_dir=tmp_path_factory.mktemp("monitored-platform")), APISettings(), llm_settings,
                     [spec], index, engine, sessions, postgres_url, llm_url, auth=AuthSettings(mode="on"),
                     roles=load_roles(PROJECT_ROOT / "roles.yaml"), audit_key=b"monitoring-test-audit-key-32byte")  # fmt: skip
    # The backup gauge reads kb_backups at each scrape; registered here as the platform does, removed at the end.
    backups = register_backup_collector(postgres_url) if register_backup_collector is not None else None
    usage = register_usage_collector(postgres_url)  # active users, sessions, feedback votes: build_state registers it too
    app = create_app(state)
    if not any(m.cls is HTTPMetrics for m in app.user_middleware):  # until api/main.py adds it
        app.add_middleware(HTTPMetrics)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, name="monitored-api", daemon=True)
    thread.start()
    try:
        _wait("the API under uvicorn", lambda: server.started)
        routes = {route.path for route in app.routes if getattr(route, "path", None)} | set(app.openapi()["paths"])
        yield RunningAPI(f"http://127.0.0.1:{port}", routes, client_key, prometheus_key)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        if backups is not None:
            METRICS_REGISTRY.unregister(backups)
        METRICS_REGISTRY.unregister(usage)
        usage.close()
        index.close()
        sessions.engine.dispose()


@pytest.fixture(scope="module")
def traffic(api: RunningAPI) -> dict[str, int]:
    """Requests that exercise every answering stage, an unknown path, a missing key and, last, a bad webhook signature
    (a test waits for that one in Prometheus to know every request before it was scraped)."""
    signed_in = {"Authorization": f"Bearer {api.client_key}"}
    with httpx.Client(base_url=api.url, timeout=180) as client:
        body = json.dumps({"collection": MONITORED_COLLECTION, "paths": ["certificate-renewal.md"]}).encode()
        statuses = {
            "healthz": client.get("/healthz").status_code,
            "readyz": client.get("/readyz").status_code,
            "sources": client.post("/v1/query", json={"question": QUESTION, "answer": False}, headers=signed_in).status_code,
            "chat": client.post("/v1/chat/completions", headers=signed_in,
                                json={"model": "default", "messages": [{"role": "user", "content": QUESTION}]}).status_code,
            "session": client.get("/v1/sessions/does-not-exist", headers=signed_in).status_code,
            "unknown_path": client.get("/no/such/page").status_code,
            "no_key": client.post("/v1/query", json={"question": QUESTION}).status_code,
            "bad_signature": client.post("/webhooks/incident", content=body,
                                         headers={"X-KB-Signature": sign(body, "not-the-secret")}).status_code,
        }  # fmt: skip
    assert statuses == {"healthz": 200, "readyz": 200, "sources": 200, "chat": 200, "session": 404,
                        "unknown_path": 404, "no_key": 401, "bad_signature": 401}  # fmt: skip
    return statuses


@pytest.fixture(scope="module")
def prometheus(
    api: RunningAPI, llm: tuple[str, Platform], node_exporter: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """Prometheus from the committed prometheus.yml with loopback targets, a fast interval and a real key file."""
    folder = tmp_path_factory.mktemp("prometheus")
    key_file = folder / "kb-api-key"
    key_file.write_text(api.prometheus_key + "\n")
    key_file.chmod(0o600)
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    config["global"].update({"scrape_interval": f"{SCRAPE_S}s", "scrape_timeout": f"{SCRAPE_S}s",
                             "evaluation_interval": "1s"})  # fmt: skip
    config["rule_files"] = [str(MONITORING / "alerts.yml")]
    targets = {"kb-api": api.url.removeprefix("http://"), "kb-llm": llm[0].removeprefix("http://").removesuffix("/v1"),
               "node": node_exporter}  # fmt: skip
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
        if "authorization" in job:
            job["authorization"]["credentials_file"] = str(key_file)
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    checked = _run(_binary("promtool"), "check", "config", str(folder / "prometheus.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    address = f"127.0.0.1:{free_port()}"
    log = (folder / "prometheus.log").open("wb")
    process = subprocess.Popen([_binary("prometheus"), f"--config.file={folder / 'prometheus.yml'}",
                                f"--storage.tsdb.path={folder / 'data'}", f"--web.listen-address={address}"],
                               stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        _wait("Prometheus to be ready", lambda: httpx.get(f"http://{address}/-/ready", timeout=2).status_code == 200)
        yield f"http://{address}"
    finally:
        _stop(process)
        log.close()


def _query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10)
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", f"{expr}: {body}"
    return body["data"]["result"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def exported(api: RunningAPI, llm: tuple[str, Platform], node_exporter: str, traffic: dict[str, int]) -> dict[str, str]:
    """The /metrics text of the API (after the traffic), the LLM server and node_exporter."""
    metrics = {
        "kb-api": httpx.get(f"{api.url}/metrics", headers={"Authorization": f"Bearer {api.prometheus_key}"}, timeout=10),
        "kb-llm": httpx.get(llm[0].removesuffix("/v1") + "/metrics", timeout=10),
        "node": httpx.get(f"http://{node_exporter}/metrics", timeout=10),
    }
    assert {job: r.status_code for job, r in metrics.items()} == dict.fromkeys(metrics, 200)
    return {job: r.text for job, r in metrics.items()}


def test_prometheus_scrapes_the_running_api_with_its_key(prometheus: str, traffic: dict[str, int]) -> None:
    # Other tests in this process may have made the same request before, so the series alone proves nothing: wait
    # until Prometheus holds the value the traffic's last request left (a scrape reads every series at once).
    labels = {"method": "POST", "route": "/webhooks/{source}", "status": "401"}
    after_traffic = METRICS_REGISTRY.get_sample_value("kb_http_requests_total", labels)
    assert after_traffic is not None and after_traffic >= 1
    last = f'kb_http_requests_total{{job="kb-api",method="POST",route="/webhooks/{{source}}",status="401"}} >= {after_traffic}'
    _wait("the last request of the traffic in Prometheus", lambda: _query(prometheus, last))
    # At least: the registry is the process's, so other tests' apps in the same run count there too.
    assert _query(prometheus, 'kb_http_requests_total{job="kb-api",method="POST",route="/v1/query",status="200"} >= 1')
    for job in sorted(JOBS):
        assert _wait(f"{job} up", lambda job=job: _query(prometheus, f'up{{job="{job}"}} == 1')), job
    # The route label is the template, never the raw path; /metrics itself is not counted.
    assert _query(prometheus, 'kb_http_requests_total{route="/v1/sessions/{session_id}",status="404"}')
    assert _query(prometheus, f'kb_http_requests_total{{route="{UNMATCHED}",status="404"}}')
    assert _query(prometheus, 'kb_http_requests_total{route="/v1/query",status="401"}')
    assert not _query(prometheus, 'kb_http_requests_total{route=~"/no/such/page|/metrics"}')
    assert _query(prometheus, 'kb_http_request_duration_seconds_count{route="/v1/chat/completions"} >= 1')
    assert _query(prometheus, 'kb_stage_duration_ms_count{job="kb-api",stage="llm_first_token"} >= 1')
    assert _query(prometheus, 'kb_requests_total{job="kb-api",endpoint="chat",outcome="ok"} >= 1')


def test_rules_load_and_evaluate_without_errors(prometheus: str) -> None:
    def evaluated() -> list[dict[str, Any]]:
        groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        return rules if rules and all(rule["health"] != "unknown" for rule in rules) else []

    rules = _wait("every rule to be evaluated", evaluated)
    assert [(r["name"], r["health"], r.get("lastError", "")) for r in rules if r["health"] != "ok"] == []
    assert sorted(r["name"] for r in rules) == sorted(rule.get("alert") or rule["record"] for rule in _rules())


def test_every_rule_and_dashboard_query_is_valid_promql(prometheus: str) -> None:
    queries = _queries()
    assert len(queries) > 60
    for where, expr in queries:
        response = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10)
        assert response.status_code == 200 and response.json()["status"] == "success", f"{where}: {expr}: {response.text}"


def test_every_metric_named_is_exported(exported: dict[str, str]) -> None:
    names = set().union(*(exported_names(text) for text in exported.values()))
    recorded = {rule["record"] for rule in _rules() if "record" in rule}
    unknown = {}
    for where, expr in _queries():
        read = metric_names(expr)
        assert read or "vector(" in expr, f"{where}: no metric name read from {expr}"
        if missing := read - names - recorded - set(NOT_EXPORTED):
            unknown[where] = sorted(missing)
    assert unknown == {}, "names no component exports (a typo, or a metric that was renamed)"
    assert set(NOT_EXPORTED) - {"up"} <= set().union(*(metric_names(e) for _, e in _queries())), "no stale allowance"


def test_every_stage_and_route_named_is_one_the_api_has(exported: dict[str, str], api: RunningAPI) -> None:
    stages = {sample.labels["stage"] for family in text_string_to_metric_families(exported["kb-api"])
              if family.name == "kb_stage_duration_ms" for sample in family.samples}  # fmt: skip
    named_stages = set().union(*(label_values(expr, "stage") for _, expr in _queries()))
    named_routes = set().union(*(label_values(expr, "route") for _, expr in _queries()))
    assert {"embed", "rerank", "llm_first_token", "total"} <= named_stages and named_routes
    assert named_stages <= stages, f"stages no request recorded: {sorted(named_stages - stages)}"
    assert named_routes <= api.app_routes | {UNMATCHED}, f"not a route of the app: {sorted(named_routes - api.app_routes)}"


def test_backup_time_is_scraped_and_no_backup_puts_its_alert_in_pending(prometheus: str) -> None:
    if register_backup_collector is None:
        pytest.skip("kb_backup_last_success_timestamp is not in api/metrics.py yet")
    series = _wait("the backup time in Prometheus", lambda: _query(prometheus, 'kb_backup_last_success_timestamp{job="kb-api"}'))
    if float(series[0]["value"][1]) == 0:  # no backup in this database (another test module may have made one)
        assert _wait(
            "KbBackupMissing pending", lambda: _query(prometheus, 'ALERTS{alertname="KbBackupMissing",alertstate="pending"}')
        )
    assert not _query(prometheus, 'ALERTS{alertname="KbBackupStale"}'), "a backup of this test session is minutes old"


def test_stopped_llm_server_puts_its_alert_in_pending(prometheus: str, llm: tuple[str, Platform]) -> None:
    # Last in this file: the LLM server does not come back.
    assert not _query(prometheus, 'ALERTS{alertname="KbLlmDown"}')
    llm[1].stop()
    assert _wait("up{job='kb-llm'} == 0", lambda: _query(prometheus, 'up{job="kb-llm"} == 0'))
    pending = _wait("KbLlmDown pending", lambda: _query(prometheus, 'ALERTS{alertname="KbLlmDown",alertstate="pending"}'))
    assert pending[0]["metric"]["severity"] == "critical"
