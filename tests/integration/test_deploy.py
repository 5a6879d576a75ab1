"""The deployment files under deploy/, as an operator applies them, checked without a registry or a cluster.

- deploy/compose.yaml: Debian's docker-compose (1.29.2, no daemon needed) validates it with deploy/.env.example;
  its parsed config has two API replicas behind nginx, ports published by nginx and Grafana only, every other
  service on internal networks, healthchecks, secrets from the env file, and a Prometheus config (the committed one,
  rewritten for the compose services) that promtool accepts.
- deploy/kubernetes/: every manifest validates against the Kubernetes 1.31 OpenAPI schemas (kubernetes_validate,
  strict, offline), and the pieces fit: HPA on the API Deployment, Ingress without buffering, non-root read-only
  pods, Dagster on K8sRunLauncher, every referenced ConfigMap, Secret and claim present, default-deny policies.
- deploy/nginx/kb.conf: `nginx -t`, then the real thing (e2e): two uvicorn processes of the real app on ONE
  embedded PostgreSQL, behind a real nginx started from the committed config; a streamed chat arrives while it is
  written, follow-up turns of one session alternate between the replicas, and the session's memory is intact.

Needs `make deploy-tools` (Debian's docker-compose and nginx-light) and `make prometheus` (promtool).
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import httpx2
import kubernetes_validate
import psycopg
import pytest
import yaml
from kubernetes_validate.utils import SchemaNotFoundError, ValidationError
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from assets.collections import CollectionSpec, load_specs
from connectors.config import parse_connectors
from kb.access.keys import KeyStore
from kb.ingest import ingest_collections
from kb.platform import Platform
from kb.settings import (
    PROJECT_ROOT,
    AgentSettings,
    APISettings,
    AuthSettings,
    EmbeddingSettings,
    IndexSettings,
    LLMSettings,
    PlatformSettings,
    PostgresSettings,
)
from query_engine.memory import migrate
from query_engine.prompts import estimate_tokens
from tests.conftest import SAMPLES, free_port
from tests.integration.test_monitoring import LLM_MODEL, _wait, llm  # noqa: F401  (llm: the 0.5B llama.cpp server, module-scoped)
from tests.integration.test_pipeline import collection, resources

DEPLOY = PROJECT_ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
ENV_EXAMPLE = DEPLOY / ".env.example"
NGINX_CONF = DEPLOY / "nginx" / "kb.conf"
KUBERNETES = DEPLOY / "kubernetes"
MONITORING = DEPLOY / "monitoring"
K8S_VERSION = "1.31"
MISSING = "{what} not found: run `make deploy-tools` (Debian's docker-compose and nginx-light) and `make prometheus`"
WAIT_S = 600.0


def _binary(name: str, *fallbacks: str) -> str:
    for candidate in (name, *fallbacks):
        if path := shutil.which(candidate):
            return path
    pytest.fail(MISSING.format(what=name))


def _env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line.strip() and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def _known_env_names() -> set[str]:
    """Every variable kb/settings.py reads, and the few read elsewhere (a misspelt one would be silently ignored)."""
    names = {"KB_CONNECTORS_FILE"}  # api/state.py, connectors/config.py
    names |= {"KB_DAGSTER_PG_URL", "KB_DAGSTER_STORAGE_DIR", "KB_DAGSTER_COMPUTE_LOGS_DIR"}  # dagster_home/dagster.yaml
    for settings in (PlatformSettings, PostgresSettings, IndexSettings, EmbeddingSettings, LLMSettings, APISettings,
                     AgentSettings, AuthSettings):  # fmt: skip
        prefix = settings.model_config.get("env_prefix", "")
        for name, info in settings.model_fields.items():
            names.add(str(info.validation_alias or f"{prefix}{name}").upper())
    return names


def _unknown_settings(env: dict[str, Any]) -> set[str]:
    # QDRANT__*: the Qdrant server's own configuration, not the platform's.
    ours = {n for n in env if n.startswith(("KB_", "QDRANT_")) and not n.startswith("QDRANT__") or n == "DATABASE_URL"}
    return ours - _known_env_names() - {"KB_NAMESPACE"}  # KB_NAMESPACE: the Dagster instance's job namespace


# deploy/compose.yaml


def _compose(*args: str, env_file: Path = ENV_EXAMPLE) -> subprocess.CompletedProcess[str]:
    # A bare environment: the result must not depend on what the caller's shell exports (QDRANT_URL, ...).
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}
    command = [_binary("docker-compose"), "-f", str(COMPOSE), "--env-file", str(env_file), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False, env=env)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """`docker-compose config` of deploy/compose.yaml with the example env file: the file as Compose resolves it."""
    resolved = _compose("config")
    assert resolved.returncode == 0, resolved.stderr
    return yaml.safe_load(resolved.stdout)  # type: ignore[no-any-return]


def test_compose_file_validates_with_the_example_env_file() -> None:
    checked = _compose("config", "-q")
    assert checked.returncode == 0, checked.stderr
    assert "CHANGE-ME" not in COMPOSE.read_text(), "no secret is written into compose.yaml"


def test_compose_refuses_to_start_without_a_secret(tmp_path: Path) -> None:
    env_file = tmp_path / "incomplete.env"
    env_file.write_text(
        "\n".join(line for line in ENV_EXAMPLE.read_text().splitlines() if not line.startswith("POSTGRES_PASSWORD="))
    )
    checked = _compose("config", "-q", env_file=env_file)
    assert checked.returncode != 0 and "set POSTGRES_PASSWORD in deploy/.env" in checked.stderr, checked.stderr


def _upstream_servers(conf: str, name: str) -> list[str]:
    block = re.search(r"upstream\s+" + re.escape(name) + r"\s*\{(.*?)\}", conf, re.S)
    assert block, f"no upstream {name} in {NGINX_CONF}"
    return re.findall(r"^\s*server\s+(\S+?)[\s;]", block.group(1), re.M)


def test_two_api_replicas_behind_nginx(compose: dict[str, Any]) -> None:
    services = compose["services"]
    replicas = sorted(name for name in services if re.fullmatch(r"api-\d+", name))
    assert replicas == ["api-1", "api-2"]
    first, second = (services[name] for name in replicas)
    for key in ("image", "command", "environment", "healthcheck", "networks"):
        assert first[key] == second[key], f"the replicas differ in {key}"
    command = first["command"]
    assert command[:3] == ["uvicorn", "--factory", "api.main:create_app"] and "--proxy-headers" in command
    port = command[command.index("--port") + 1]
    assert set(replicas) <= set(services["nginx"]["depends_on"])
    conf = NGINX_CONF.read_text()
    for upstream in ("kb_api", "kb_api_mcp"):
        assert sorted(_upstream_servers(conf, upstream)) == [f"{name}:{port}" for name in replicas], upstream
    assert any(volume.endswith(":/etc/nginx/conf.d/default.conf:ro") and volume.startswith(str(NGINX_CONF))
               for volume in services["nginx"]["volumes"])  # fmt: skip


def test_only_nginx_and_grafana_publish_ports_and_the_rest_is_internal(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {name for name, service in services.items() if service.get("ports")} == {"nginx", "grafana"}
    assert not any(service.get("network_mode") for service in services.values())
    routed = {name for name, network in compose["networks"].items() if not network.get("internal")}
    assert routed == {"edge"}
    assert {name for name, service in services.items() if "edge" in service.get("networks", {})} == {"nginx", "grafana"}
    published = {name: service["ports"] for name, service in services.items() if service.get("ports")}
    api_port, dagster_port = published["nginx"]
    assert api_port.endswith(":8080/tcp") and dagster_port.startswith("127.0.0.1:") and dagster_port.endswith(":3000/tcp")
    assert all(port.startswith("127.0.0.1:") for port in published["grafana"]), "Grafana on the host's loopback by default"


def test_every_long_running_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    services = compose["services"]
    running = {name for name, service in services.items() if service.get("restart") != "no"}
    assert running == set(services) - {"postgres-init"}
    assert {name for name in running if not services[name].get("healthcheck", {}).get("test")} == set()
    for replica in ("api-1", "api-2"):
        assert "/readyz" in " ".join(services[replica]["healthcheck"]["test"])
        assert services[replica]["depends_on"]["postgres-init"]["condition"] == "service_completed_successfully"
        assert services[replica]["depends_on"]["qdrant"]["condition"] == "service_healthy"


def test_secrets_and_settings_come_from_the_env_file(compose: dict[str, Any]) -> None:
    example = _env_file(ENV_EXAMPLE)
    services = compose["services"]
    api = services["api-1"]["environment"]
    password = example["POSTGRES_PASSWORD"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == password
    assert api["DATABASE_URL"] == f"postgresql://kb:{password}@postgres:5432/kb"
    assert services["dagster-daemon"]["environment"]["KB_DAGSTER_PG_URL"].startswith(f"postgresql+psycopg2://kb:{password}@")
    for name in ("QDRANT_API_KEY", "KB_API_WEBHOOK_SECRET", "KB_AUTH_AUDIT_KEY", "KB_LLM_MODEL", "QDRANT_URL"):
        assert api[name] == example[name], name
    assert services["qdrant"]["environment"]["QDRANT__SERVICE__API_KEY"] == example["QDRANT_API_KEY"]
    assert api["KB_API_ENVIRONMENT"] == "production", "the default webhook secret is refused"
    for name, service in services.items():
        assert _unknown_settings(service.get("environment") or {}) == set(), name


def test_the_llm_server_is_a_profile_matching_the_api_settings(compose: dict[str, Any]) -> None:
    services, example = compose["services"], _env_file(ENV_EXAMPLE)
    assert services["vllm"]["profiles"] == ["vllm"] and services["ollama"]["profiles"] == ["ollama"]
    assert example["COMPOSE_PROFILES"] == "vllm"
    gpu = services["vllm"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    vllm = services["vllm"]["command"]
    api = services["api-1"]["environment"]
    assert api["KB_LLM_BACKEND"] == "openai"
    assert api["KB_LLM_BASE_URL"] == f"http://vllm:{vllm[vllm.index('--port') + 1]}/v1"
    assert vllm[vllm.index("--served-model-name") + 1] == api["KB_LLM_MODEL"]
    assert "llm" in services["vllm"]["networks"] and "llm" in services["api-1"]["networks"]


def _sed_rules(script: str) -> list[tuple[str, str]]:
    """The `-e 's#FROM#TO#'` expressions of a sh command line as Compose hands it over (`$$` is a literal `$`)."""
    return [(a.replace("$$", "$"), b) for a, b in re.findall(r"(?:-e )?'s#([^#]*)#([^#]*)#'", script)]


def _apply(rules: list[tuple[str, str]], text: str) -> str:
    for pattern, replacement in rules:
        changed = re.sub(pattern, replacement, text, flags=re.M)
        assert changed != text, f"sed rule s#{pattern}#{replacement}# matches nothing: the committed file changed"
        text = changed
    return text


def _mounted(service: dict[str, Any], target: str) -> Path:
    source = next(v.split(":")[0] for v in service["volumes"] if v.split(":")[1] == target)
    return Path(source)


def test_compose_prometheus_scrapes_the_compose_services(compose: dict[str, Any], tmp_path: Path) -> None:
    services = compose["services"]
    prometheus = services["prometheus"]
    assert prometheus["entrypoint"] == ["/bin/sh", "-ec"]
    script = prometheus["command"][0]
    committed = _mounted(prometheus, "/etc/prometheus/kb/prometheus.yml")
    assert committed == MONITORING / "prometheus.yml" and "--config.file=/tmp/prometheus.yml" in script
    rendered = yaml.safe_load(_apply(_sed_rules(script), committed.read_text()))
    assert rendered["rule_files"] == ["/etc/prometheus/kb/alerts.yml"]
    assert _mounted(prometheus, "/etc/prometheus/kb/alerts.yml") == MONITORING / "alerts.yml"
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in rendered["scrape_configs"]}
    api_port = services["api-1"]["command"][services["api-1"]["command"].index("--port") + 1]
    vllm_port = services["vllm"]["command"][services["vllm"]["command"].index("--port") + 1]
    assert targets == {"kb-api": [f"api-1:{api_port}", f"api-2:{api_port}"], "kb-llm": [f"vllm:{vllm_port}"],
                       "node": ["node-exporter:9100"]}  # fmt: skip
    api_job = next(job for job in rendered["scrape_configs"] if job["job_name"] == "kb-api")
    assert api_job["authorization"]["credentials_file"] == "/run/secrets/kb_prometheus_api_key"
    assert prometheus["secrets"] == [{"source": "kb_prometheus_api_key"}] or prometheus["secrets"] == ["kb_prometheus_api_key"]
    assert {"frontend", "llm", "monitoring"} <= set(prometheus["networks"]), "Prometheus reaches what it scrapes"
    # promtool checks the result with the container paths pointed at the files compose mounts there.
    key = tmp_path / "kb-api-key"
    key.write_text("kb_stand-in-for-the-check\n")
    api_job["authorization"]["credentials_file"] = str(key)
    rendered["rule_files"] = [str(MONITORING / "alerts.yml")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(rendered))
    checked = subprocess.run([_binary("promtool"), "check", "config", str(tmp_path / "prometheus.yml")],
                             capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_compose_grafana_provisions_the_committed_dashboards(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    script = grafana["command"][0]
    provisioning = _mounted(grafana, "/etc/kb/grafana/provisioning")
    assert provisioning == MONITORING / "grafana" / "provisioning"
    datasource = yaml.safe_load(_apply(_sed_rules(script), (provisioning / "datasources" / "kb-prometheus.yaml").read_text()))
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    assert "--web.listen-address=0.0.0.0:9090" in compose["services"]["prometheus"]["command"][0]
    assert grafana["environment"]["GF_PATHS_PROVISIONING"] == "/tmp/provisioning" and "/tmp/provisioning/datasources/" in script
    provider = yaml.safe_load((provisioning / "dashboards" / "kb.yaml").read_text())["providers"][0]
    assert _mounted(grafana, provider["options"]["path"]) == MONITORING / "grafana" / "dashboards"
    assert sorted(p.name for p in (MONITORING / "grafana" / "dashboards").glob("*.json")), "dashboards to provision"


# deploy/kubernetes/

Manifest = tuple[str, dict[str, Any]]


@pytest.fixture(scope="module")
def manifests() -> list[Manifest]:
    found = [(path.name, doc) for path in sorted(KUBERNETES.glob("*.yaml")) if path.name != "kustomization.yaml"
             for doc in yaml.safe_load_all(path.read_text()) if doc]  # fmt: skip
    assert found
    return found


def _one(manifests: list[Manifest], kind: str, name: str) -> dict[str, Any]:
    matches = [doc for _, doc in manifests if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} manifests"
    return matches[0]


def _workloads(manifests: list[Manifest]) -> list[dict[str, Any]]:
    return [doc for _, doc in manifests if doc["kind"] in ("Deployment", "StatefulSet")]


def _dagster_instance(manifests: list[Manifest]) -> dict[str, Any]:
    return yaml.safe_load(_one(manifests, "ConfigMap", "dagster-instance")["data"]["dagster.yaml"])  # type: ignore[no-any-return]


def test_kustomization_applies_every_manifest_into_one_namespace(manifests: list[Manifest]) -> None:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization" and kustomization["namespace"] == "kb"
    assert sorted(kustomization["resources"]) == sorted(
        p.name for p in KUBERNETES.glob("*.yaml") if p.name != "kustomization.yaml"
    )
    assert _one(manifests, "Namespace", "kb")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert all("namespace" not in doc["metadata"] for _, doc in manifests), "kustomize sets the namespace"


def test_every_manifest_validates_against_the_kubernetes_schemas(manifests: list[Manifest]) -> None:
    problems = []
    for file, doc in manifests:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except ValidationError as exc:
            problems.append(f"{file} {doc['kind']}/{doc['metadata']['name']}: {'.'.join(map(str, exc.path))}: {exc.message}")
        except SchemaNotFoundError as exc:  # a CRD, or a kind this Kubernetes has not
            problems.append(f"{file}: {exc.message}")
    assert problems == []
    # The check is strict: a misspelt field fails it (so the loop above could fail too).
    broken = copy.deepcopy(_one(manifests, "Deployment", "kb-api"))
    container = broken["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_the_api_deployment_scales_on_cpu_and_keeps_one_replica_through_disruptions(manifests: list[Manifest]) -> None:
    api = _one(manifests, "Deployment", "kb-api")
    labels = api["spec"]["template"]["metadata"]["labels"]
    assert api["spec"]["replicas"] == 2 and api["spec"]["selector"]["matchLabels"] == labels
    container = api["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:3] == ["uvicorn", "--factory", "api.main:create_app"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]
    hpa = _one(manifests, "HorizontalPodAutoscaler", "kb-api")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "kb-api"}
    assert hpa["spec"]["minReplicas"] >= api["spec"]["replicas"] and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    pdb = _one(manifests, "PodDisruptionBudget", "kb-api")
    assert pdb["spec"]["selector"]["matchLabels"] == labels and pdb["spec"]["minAvailable"] >= 1
    service = _one(manifests, "Service", "kb-api")
    assert service["spec"]["selector"] == labels


def test_every_pod_runs_as_non_root_on_a_read_only_root_filesystem(manifests: list[Manifest]) -> None:
    for workload in _workloads(manifests):
        pod = workload["spec"]["template"]["spec"]
        where = f"{workload['kind']}/{workload['metadata']['name']}"
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0, where
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"]["drop"] == ["ALL"] and context["runAsNonRoot"] is True, where
    api_pod = _one(manifests, "Deployment", "kb-api")["spec"]["template"]["spec"]
    assert api_pod["securityContext"]["runAsUser"] == 10001, "the image's user (deploy/Dockerfile USER 10001)"
    assert api_pod["automountServiceAccountToken"] is False
    # The run pods K8sRunLauncher starts, too.
    launcher = _dagster_instance(manifests)["run_launcher"]["config"]
    assert launcher["security_context"]["readOnlyRootFilesystem"] is True and launcher["security_context"]["runAsNonRoot"] is True
    assert launcher["run_k8s_config"]["pod_spec_config"]["security_context"]["run_as_non_root"] is True


def test_the_ingress_streams_unbuffered_within_the_api_body_limit(manifests: list[Manifest]) -> None:
    limit = APISettings().max_request_bytes
    chat, mcp = _one(manifests, "Ingress", "kb"), _one(manifests, "Ingress", "kb-mcp")
    for ingress in (chat, mcp):
        annotations = ingress["metadata"]["annotations"]
        assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
        assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 900
        assert int(annotations["nginx.ingress.kubernetes.io/proxy-body-size"]) == limit
        assert ingress["spec"]["ingressClassName"] == "nginx"
        backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
        assert backend == {"name": "kb-api", "port": {"name": "http"}}
    assert [p["path"] for p in mcp["spec"]["rules"][0]["http"]["paths"]] == ["/mcp"]
    assert mcp["metadata"]["annotations"]["nginx.ingress.kubernetes.io/upstream-hash-by"] == "$http_authorization"
    assert "upstream-hash-by" not in " ".join(chat["metadata"]["annotations"]), "chat is not sticky: sessions live in PostgreSQL"


def test_qdrant_runs_as_a_replicated_cluster(manifests: list[Manifest]) -> None:
    qdrant = _one(manifests, "StatefulSet", "qdrant")
    headless = _one(manifests, "Service", qdrant["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"] is True
    assert 6335 in {port["port"] for port in headless["spec"]["ports"]}
    container = qdrant["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    replicas, factor = qdrant["spec"]["replicas"], int(env["QDRANT__STORAGE__COLLECTION__REPLICATION_FACTOR"])
    assert replicas == 3 and env["QDRANT__CLUSTER__ENABLED"] == "true" and 2 <= factor < replicas
    script = container["args"][0]
    assert f'--bootstrap "http://qdrant-0.{headless["metadata"]["name"]}:6335"' in script
    assert f".{headless['metadata']['name']}:6335" in script and "--uri" in script
    assert qdrant["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] in {m["name"] for m in container["volumeMounts"]}
    assert _one(manifests, "PodDisruptionBudget", "qdrant")["spec"]["maxUnavailable"] == factor - 1
    assert _one(manifests, "ConfigMap", "kb-env")["data"]["QDRANT_URL"] == "http://qdrant:6333"


def test_dagster_launches_runs_with_the_kubernetes_run_launcher(manifests: list[Manifest], tmp_path: Path) -> None:
    instance = _dagster_instance(manifests)
    launcher = instance["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_k8s", "K8sRunLauncher")
    config = launcher["config"]
    # dagster-k8s 0.29's K8sRunLauncher config schema (DagsterK8sJobConfig.config_type_run_launcher): dagster-k8s
    # is not installed here, so its field names are checked against that list.
    known = {"instance_config_map", "postgres_password_secret", "dagster_home", "load_incluster_config", "kubeconfig_file",
             "fail_pod_on_run_failure", "run_k8s_config", "job_namespace", "only_allow_user_defined_k8s_config_fields",
             "only_allow_user_defined_env_vars", "job_image", "image_pull_policy", "image_pull_secrets",
             "service_account_name", "env_config_maps", "env_secrets", "env_vars", "volume_mounts", "volumes", "labels",
             "resources", "scheduler_name", "security_context"}  # fmt: skip
    assert set(config) <= known, set(config) - known
    assert set(config["run_k8s_config"]) <= {"container_config", "pod_template_spec_metadata", "pod_spec_config",
                                             "job_config", "job_metadata", "job_spec_config"}  # fmt: skip
    assert config["instance_config_map"] == "dagster-instance" and config["load_incluster_config"] is True
    assert config["labels"]["app.kubernetes.io/component"] == "dagster-run"
    _one(manifests, "ServiceAccount", config["service_account_name"])
    assert instance["storage"]["postgres"]["postgres_url"] == {"env": "KB_DAGSTER_PG_URL"}
    # The whole instance is what this Dagster accepts (its own schema; the launcher's config is checked above).
    (tmp_path / "dagster.yaml").write_text(_one(manifests, "ConfigMap", "dagster-instance")["data"]["dagster.yaml"])
    from dagster._core.instance.config import dagster_instance_config

    dagster_instance_config(str(tmp_path))
    # The webserver and the daemon create and watch the run Jobs and their pods, nothing more.
    role = _one(manifests, "Role", "dagster-run-launcher")
    verbs = {(group, resource): set(rule["verbs"]) for rule in role["rules"] for group in rule["apiGroups"]
             for resource in rule["resources"]}  # fmt: skip
    assert {"create", "get", "list", "watch"} <= verbs[("batch", "jobs")] and {"get", "list", "watch"} <= verbs[("", "pods")]
    binding = _one(manifests, "RoleBinding", "dagster-run-launcher")
    assert binding["roleRef"]["name"] == "dagster-run-launcher"
    bound = {subject["name"] for subject in binding["subjects"]}
    for name in ("dagster-webserver", "dagster-daemon"):
        pod = _one(manifests, "Deployment", name)["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] in bound, name
        namespace = next(e for e in pod["containers"][0]["env"] if e["name"] == "KB_NAMESPACE")
        assert namespace["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace" and config["job_namespace"] == {
            "env": "KB_NAMESPACE"
        }
    # Both load the definitions from the one code server, whose image the run pods get.
    workspace = yaml.safe_load(_one(manifests, "ConfigMap", "dagster-workspace")["data"]["workspace.yaml"])
    server = workspace["load_from"][0]["grpc_server"]
    code_service = _one(manifests, "Service", server["host"])
    assert server["port"] == code_service["spec"]["ports"][0]["port"] and server["location_name"] == "pipelines.definitions"
    code = _one(manifests, "Deployment", "dagster-code")["spec"]["template"]["spec"]["containers"][0]
    assert next(e["value"] for e in code["env"] if e["name"] == "DAGSTER_CURRENT_IMAGE") == code["image"]
    assert "job_image" not in config, "run pods use the code server's image (DAGSTER_CURRENT_IMAGE)"


def _pod_references(pod: dict[str, Any]) -> set[tuple[str, str, str | None]]:
    """(kind, name, key) of every ConfigMap, Secret and claim a pod spec reads (key None: the whole object)."""
    found: set[tuple[str, str, str | None]] = set()
    for container in pod.get("containers", []) + pod.get("initContainers", []):
        for source in container.get("envFrom", []):
            for ref, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
                if ref in source:
                    found.add((kind, source[ref]["name"], None))
        for variable in container.get("env", []):
            value_from = variable.get("valueFrom", {})
            for ref, kind in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
                if ref in value_from:
                    found.add((kind, value_from[ref]["name"], value_from[ref]["key"]))
    for volume in pod.get("volumes", []):
        if "configMap" in volume:
            found.add(("ConfigMap", volume["configMap"]["name"], None))
        if "secret" in volume:
            found.add(("Secret", volume["secret"]["secretName"], None))
        if "persistentVolumeClaim" in volume:
            found.add(("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"], None))
    if "serviceAccountName" in pod:
        found.add(("ServiceAccount", pod["serviceAccountName"], None))
    return found


def test_every_configmap_secret_and_claim_a_workload_reads_exists(manifests: list[Manifest]) -> None:
    wanted: set[tuple[str, str, str | None]] = set()
    for workload in _workloads(manifests):
        wanted |= _pod_references(workload["spec"]["template"]["spec"])
    launcher = _dagster_instance(manifests)["run_launcher"]["config"]
    wanted |= {("ConfigMap", name, None) for name in launcher["env_config_maps"]}
    wanted |= {("Secret", name, None) for name in launcher["env_secrets"]}
    wanted |= _pod_references({"volumes": launcher["volumes"], "serviceAccountName": launcher["service_account_name"]})
    wanted.add(("ConfigMap", launcher["instance_config_map"], "dagster.yaml"))
    present = {(doc["kind"], doc["metadata"]["name"]): doc for _, doc in manifests}
    missing = []
    for kind, name, key in sorted(wanted, key=str):
        doc = present.get((kind, name))
        data = {**(doc or {}).get("data", {}), **(doc or {}).get("stringData", {})}
        if doc is None or (key is not None and key not in data):
            missing.append((kind, name, key))
    assert missing == []
    assert {kind for kind, _, _ in wanted} == {"ConfigMap", "Secret", "PersistentVolumeClaim", "ServiceAccount"}
    # The example Secret holds placeholders only, and everything the platform needs.
    example = _one(manifests, "Secret", "kb-secrets")["stringData"]
    assert {"DATABASE_URL", "KB_DAGSTER_PG_URL", "QDRANT_API_KEY", "KB_API_WEBHOOK_SECRET", "KB_AUTH_AUDIT_KEY"} <= set(example)
    assert all("CHANGE-ME" in value or value in ("change-me-local-only", "not-needed") for value in example.values())
    with pytest.raises(ValueError, match="KB_API_WEBHOOK_SECRET"):  # as shipped, the API refuses to start
        APISettings(environment="production", webhook_secret=example["KB_API_WEBHOOK_SECRET"])


def test_the_operator_files_load_as_the_platform_reads_them(manifests: list[Manifest], tmp_path: Path) -> None:
    files = _one(manifests, "ConfigMap", "kb-files")["data"]
    env = _one(manifests, "ConfigMap", "kb-env")["data"]
    (tmp_path / "collections.yaml").write_text(files["collections.yaml"])
    specs = load_specs(tmp_path / "collections.yaml")
    assert specs and all(spec.source.kind == "git" and "://" in spec.source.path for spec in specs)
    # Qdrant runs as 3 peers (qdrant.yaml): a shard per peer, each on two of them.
    assert all((spec.qdrant.shard_number, spec.qdrant.replication_factor) == (3, 2) for spec in specs)
    assert parse_connectors(yaml.safe_load(files["connectors.yaml"])).live() == []
    mounted = {f"/etc/kb/{name}" for name in files}
    assert {env["KB_COLLECTIONS_FILE"], env["KB_CONNECTORS_FILE"]} <= mounted
    secret = _one(manifests, "Secret", "kb-secrets")["stringData"]
    assert _unknown_settings({**env, **secret}) == set()
    LLMSettings(**{k.removeprefix("KB_LLM_").lower(): v for k, v in env.items() if k.startswith("KB_LLM_")})
    vllm = _one(manifests, "Deployment", "kb-llm")["spec"]["template"]["spec"]["containers"][0]
    assert vllm["args"][vllm["args"].index("--served-model-name") + 1] == env["KB_LLM_MODEL"]
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == "1"
    port = _one(manifests, "Service", "kb-llm")["spec"]["ports"][0]["port"]
    assert env["KB_LLM_BASE_URL"] == f"http://kb-llm:{port}/v1"


def _peers(rule: dict[str, Any], direction: str) -> list[dict[str, Any]]:
    return rule.get("to" if direction == "egress" else "from", [])


def test_network_policies_deny_by_default_and_confine_the_api(manifests: list[Manifest]) -> None:
    policies = {doc["metadata"]["name"]: doc["spec"] for _, doc in manifests if doc["kind"] == "NetworkPolicy"}
    deny = policies["default-deny"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"} and "ingress" not in deny
    dns = policies["allow-dns"]
    assert dns["podSelector"] == {} and {p["port"] for p in dns["egress"][0]["ports"]} == {53}
    api = policies["kb-api"]
    assert api["podSelector"]["matchLabels"] == _one(manifests, "Deployment", "kb-api")["spec"]["selector"]["matchLabels"]
    destinations = set()
    for rule in api["egress"]:
        ports = tuple(sorted(p["port"] for p in rule["ports"]))
        for peer in _peers(rule, "egress"):
            what = (
                peer["ipBlock"]["cidr"]
                if "ipBlock" in peer
                else peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
            )
            destinations.add((what, ports))
    assert destinations == {("192.0.2.10/32", (5432,)), ("qdrant", (6333, 6334)), ("llm", (8000,))}
    sources = {peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for rule in api["ingress"]
               for peer in _peers(rule, "ingress")}  # fmt: skip
    assert sources == {"ingress-nginx", "monitoring"}
    # Every component has its own policy: nothing works only because a rule elsewhere happens to cover it.
    components = {w["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] for w in _workloads(manifests)}
    components.add(_dagster_instance(manifests)["run_launcher"]["config"]["labels"]["app.kubernetes.io/component"])
    selected = set()
    for spec in policies.values():
        selector = spec["podSelector"]
        selected |= {selector.get("matchLabels", {}).get("app.kubernetes.io/component")}
        selected |= {
            v for e in selector.get("matchExpressions", []) if e["key"] == "app.kubernetes.io/component" for v in e["values"]
        }
    assert components <= selected, components - selected


def test_images_are_pinned(manifests: list[Manifest], compose: dict[str, Any]) -> None:
    images = [c["image"] for w in _workloads(manifests) for c in w["spec"]["template"]["spec"]["containers"]]
    images += [service["image"] for service in compose["services"].values()]
    assert all(re.search(r":[\w.-]+$", image) and not image.endswith(":latest") for image in images), images
    ours = {image for image in images if image.startswith("registry.example.internal/kb:")}
    assert len(ours) == 1, "one image of this project everywhere (and in DAGSTER_CURRENT_IMAGE)"


# deploy/nginx/kb.conf


def render_nginx(conf: str, replicas: list[str], dagster: str, listen: dict[str, str], folder: Path) -> Path:
    """The committed config for loopback: the compose service names and listen ports swapped for local addresses,
    logs in `folder`; every swap must match, so a change to the committed file cannot slip past the test."""
    swaps = {"api-1:8000": replicas[0], "api-2:8000": replicas[1], "dagster-webserver:3000": dagster,
             "listen 8080;": f"listen {listen['api']};", "listen 3000;": f"listen {listen['dagster']};",
             "/var/log/nginx/access.log": str(folder / "access.log")}  # fmt: skip
    for old, new in swaps.items():
        assert old in conf, f"{old!r} is no longer in {NGINX_CONF}"
        conf = conf.replace(old, new)
    (folder / "kb.conf").write_text(conf)
    temp = "\n".join(f"    {kind}_temp_path {folder / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    # As root, nginx runs its workers as nobody, who may not enter pytest's 0700 temporary folders: as this user then.
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};\n" if os.geteuid() == 0 else ""
    main = (f"{user}daemon off;\nworker_processes 1;\npid {folder / 'nginx.pid'};\nerror_log {folder / 'error.log'} info;\n"
            f"events {{ worker_connections 256; }}\nhttp {{\n{temp}\n    include {folder / 'kb.conf'};\n}}\n")  # fmt: skip
    (folder / "nginx.conf").write_text(main)
    return folder / "nginx.conf"


def _nginx(config: Path, *args: str) -> list[str]:
    return [_binary("nginx", "/usr/sbin/nginx"), "-p", str(config.parent), "-c", str(config), "-e",
            str(config.parent / "error.log"), *args]  # fmt: skip


def test_nginx_accepts_the_committed_config(tmp_path: Path) -> None:
    config = render_nginx(NGINX_CONF.read_text(), ["127.0.0.1:18001", "127.0.0.1:18002"], "127.0.0.1:18003",
                          {"api": "127.0.0.1:18080", "dagster": "127.0.0.1:18081"}, tmp_path)  # fmt: skip
    checked = subprocess.run(_nginx(config, "-t"), capture_output=True, text=True, timeout=60, check=False)
    assert checked.returncode == 0 and "test is successful" in checked.stderr, checked.stderr
    conf = NGINX_CONF.read_text()
    assert re.search(r"client_max_body_size\s+(\d+);", conf).group(1) == str(APISettings().max_request_bytes)  # type: ignore[union-attr]
    for location in ("location = /v1/chat/completions", "location /mcp"):
        body = conf.split(location, 1)[1].split("}", 1)[0]
        # gzip would hold the events back until its buffer fills, even unbuffered.
        for directive in ("proxy_buffering off;", "proxy_cache off;", "gzip off;", "add_header X-Accel-Buffering no always;"):
            assert directive in body, f"{location}: {directive}"
        assert int(re.search(r"proxy_read_timeout\s+(\d+)s;", body).group(1)) >= 900  # type: ignore[union-attr]
    for directive in ("proxy_http_version 1.1;", 'proxy_set_header Connection "";', "proxy_set_header X-Forwarded-For"):
        assert directive in conf


# Two replicas of the real app on one PostgreSQL, behind the committed nginx config (e2e: a few minutes).

# Asked for steps, the 0.5B model writes a list: several units, each streamed as it is finished (query_engine/grounding.py).
QUESTION = "List the steps to renew an acquirer mTLS certificate."
RUNBOOK = "certificate-renewal.md"
ANSWER_TOKENS = 64


@dataclass
class Knowledge:
    collections_file: Path
    user: str
    key: str


@pytest.fixture(scope="module")
def knowledge(postgres_url: str, sample_specs: list[CollectionSpec], tmp_path_factory: pytest.TempPathFactory) -> Knowledge:
    """One runbook ingested into the pgvector index of the shared PostgreSQL, the collections file the replicas read,
    and an API key (in that PostgreSQL: every replica accepts it)."""
    folder = tmp_path_factory.mktemp("deploy-runbooks")
    shutil.copy(SAMPLES / "runbooks" / RUNBOOK, folder)
    spec = collection(sample_specs, "runbooks", folder)
    report = ingest_collections([spec], resources(postgres_url, tmp_path_factory.mktemp("deploy-ingest")),
                                dg.DagsterInstance.ephemeral())  # fmt: skip
    assert report[spec.name]["ok"], report
    collections_file = folder.parent / f"{spec.name}-collections.yaml"
    body = spec.model_dump(mode="json", exclude={"name"})
    collections_file.write_text(yaml.safe_dump({"collections": {spec.name: body}}))
    assert load_specs(collections_file) == [spec]
    migrate(postgres_url)
    user = f"deploy-{secrets.token_hex(4)}"
    store = KeyStore(postgres_url)
    key, _ = store.create(user, "admin", note="test_deploy: two replicas behind nginx")
    store.close()
    return Knowledge(collections_file, user, key)


@dataclass
class Replica:
    address: str
    log: Path
    process: subprocess.Popen[bytes]

    def answered(self, request_id: str, path: str) -> bool:
        """Whether this replica's own access log has the request: nginx sends X-Request-ID, the app logs it."""
        return any(request_id in line and path in line for line in self.log.read_text(errors="replace").splitlines())


def _start_replica(name: str, env: dict[str, str], folder: Path) -> Replica:
    port = free_port()
    log = folder / f"{name}.log"
    command = [sys.executable, "-m", "uvicorn", "--factory", "api.main:create_app", "--host", "127.0.0.1", "--port", str(port),
               "--proxy-headers", "--timeout-graceful-shutdown", "5"]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=PROJECT_ROOT, env={**env, "KB_DATA_DIR": str(folder / name)}, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    return Replica(f"127.0.0.1:{port}", log, process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def _ready(replica: Replica) -> bool:
    if replica.process.poll() is not None:
        pytest.fail(f"replica {replica.address} exited:\n{replica.log.read_text(errors='replace')[-4000:]}")
    return httpx.get(f"http://{replica.address}/readyz", timeout=10).status_code == 200


@pytest.fixture(scope="module")
def replicas(
    postgres_url: str,
    knowledge: Knowledge,
    llm: tuple[str, Platform],  # noqa: F811  (the fixture imported from test_monitoring)
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[list[Replica]]:
    """Two API processes as compose and Kubernetes run them (uvicorn, api.main:create_app, settings from the
    environment, production mode), each with a data directory of its own and nothing shared but PostgreSQL."""
    folder = tmp_path_factory.mktemp("deploy-replicas")
    env = {key: value for key, value in os.environ.items() if key not in ("QDRANT_URL", "QDRANT_PATH", "KB_CONNECTORS_FILE")}
    env.update({
        "DATABASE_URL": postgres_url, "KB_LLM_BACKEND": "openai", "KB_LLM_BASE_URL": llm[0], "KB_LLM_MODEL": LLM_MODEL,
        "KB_LLM_MAX_ANSWER_TOKENS": str(ANSWER_TOKENS), "KB_LLM_CONTEXT_WINDOW": "2048", "KB_LLM_TIMEOUT_S": "600",
        "KB_COLLECTIONS_FILE": str(knowledge.collections_file), "KB_CONNECTORS_FILE": str(folder / "no-connectors.yaml"),
        "KB_API_ENVIRONMENT": "production", "KB_API_WEBHOOK_SECRET": secrets.token_hex(16),
        "KB_AUTH_AUDIT_KEY": secrets.token_hex(32), "FORWARDED_ALLOW_IPS": "127.0.0.1", "PYTHONUNBUFFERED": "1",
        "HF_HUB_OFFLINE": "1",
    })  # fmt: skip
    for name in ("api-1", "api-2"):
        (folder / name).mkdir()
    started = [_start_replica(name, env, folder) for name in ("api-1", "api-2")]
    try:
        for replica in started:
            _wait(f"replica {replica.address} ready", lambda replica=replica: _ready(replica), WAIT_S)
        yield started
    finally:
        for replica in started:
            _stop(replica.process)


@dataclass
class Proxy:
    url: str
    access_log: Path
    replicas: list[Replica]

    def upstreams(self, method: str, path: str) -> list[tuple[str, str]]:
        """(replica, request id) of each such request, oldest first, as nginx's access log (format `kb`) has them."""
        pattern = re.compile(r'"(\S+) (\S+) HTTP/[\d.]+" \d{3} .* upstream=(\S+) .* rid=(\w+)')
        found = (pattern.search(line) for line in self.access_log.read_text().splitlines())
        return [(m.group(3), m.group(4)) for m in found if m and m.group(1) == method and m.group(2).split("?")[0] == path]


@pytest.fixture(scope="module")
def proxy(replicas: list[Replica], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    """A real nginx from the committed deploy/nginx/kb.conf, its upstreams pointed at the two replicas."""
    folder = tmp_path_factory.mktemp("deploy-nginx")
    port = free_port()
    config = render_nginx(NGINX_CONF.read_text(), [r.address for r in replicas], f"127.0.0.1:{free_port()}",
                          {"api": f"127.0.0.1:{port}", "dagster": f"127.0.0.1:{free_port()}"}, folder)  # fmt: skip
    process = subprocess.Popen(_nginx(config), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            assert process.poll() is None, (folder / "error.log").read_text()
            return httpx.get(f"{url}/healthz", timeout=5).status_code == 200

        _wait("nginx in front of the replicas", up, timeout=60)
        yield Proxy(url, folder / "access.log", replicas)
    finally:
        _stop(process)


def _assistant_messages(postgres_url: str, user: str) -> tuple[int, int]:
    """(sessions, assistant messages) of `user` in PostgreSQL right now."""
    with psycopg.connect(postgres_url) as conn:
        row = conn.execute(
            """SELECT count(DISTINCT s.id), count(m.id) FILTER (WHERE m.role = 'assistant')
               FROM kb_sessions s LEFT JOIN kb_messages m ON m.session_id = s.id WHERE s."user" = %s""",
            (user,),
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


@dataclass
class Conversation:
    session_id: str
    replicas: list[str]  # which replica nginx sent each turn to
    answered_by: list[set[str]]  # the replicas whose own access log has each turn's request id
    events: list[tuple[float, str]] = field(default_factory=list)  # the first turn's SSE data, with arrival times
    stored_when_first_content_arrived: tuple[int, int] | None = None
    turn2_answer: str = ""
    headers: dict[str, str] = field(default_factory=dict)


def _stream(
    client: httpx.Client, body: dict[str, Any], on_content: Callable[[], None]
) -> tuple[list[tuple[float, str]], dict[str, Any]]:
    """POST a streamed chat; `on_content` runs when the first content chunk arrives. Returns (events, final chunk)."""
    events: list[tuple[float, str]] = []
    final: dict[str, Any] = {}
    content_seen = False
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
        assert response.status_code == 200, response.read().decode()
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers.get("x-accel-buffering") == "no", "nginx's add_header for proxies in front of it"
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            payload = line.removeprefix("data: ")
            events.append((time.monotonic(), payload))
            if payload == "[DONE]":
                continue  # read on to the end of the response, so nginx sees it completed
            choice = json.loads(payload)["choices"][0]
            if choice["delta"].get("content") and not content_seen:
                content_seen = True
                on_content()
            if choice["finish_reason"] == "stop":
                final = json.loads(payload)
    return events, final


@pytest.fixture(scope="module")
def conversation(proxy: Proxy, knowledge: Knowledge, postgres_url: str) -> Conversation:
    """Three turns of one session through nginx: streamed (creates the session), plain, streamed again. The same
    question each time, so retrieval finds the same sources and the prompts differ only by the conversation."""
    message = {"role": "user", "content": QUESTION}
    replicas: list[str] = []
    answered_by: list[set[str]] = []
    stored: list[tuple[int, int]] = []
    path = "/v1/chat/completions"

    def record() -> None:
        # nginx logs a request once it has sent the last byte, which the client may read a moment before.
        turn = len(replicas)
        upstream, request_id = _wait("nginx's log of the turn", lambda: proxy.upstreams("POST", path)[turn:], 30)[0]
        replicas.append(upstream)
        _wait("a replica's log of the turn", lambda: any(r.answered(request_id, path) for r in proxy.replicas), 30)
        answered_by.append({r.address for r in proxy.replicas if r.answered(request_id, path)})

    headers = {"Authorization": f"Bearer {knowledge.key}"}
    with httpx.Client(base_url=proxy.url, headers=headers, timeout=WAIT_S) as client:
        events, final = _stream(client, {"model": "default", "messages": [message]},
                                lambda: stored.append(_assistant_messages(postgres_url, knowledge.user)))  # fmt: skip
        record()
        session_id = final["session_id"]
        plain = client.post("/v1/chat/completions", json={"model": "default", "messages": [message], "session_id": session_id})
        assert plain.status_code == 200, plain.text
        assert plain.json()["session_id"] == session_id
        record()
        _, last = _stream(client, {"model": "default", "messages": [message], "session_id": session_id}, lambda: None)
        assert last["session_id"] == session_id
        record()
    return Conversation(session_id, replicas, answered_by, events, stored[0] if stored else None,
                        plain.json()["choices"][0]["message"]["content"])  # fmt: skip


@pytest.mark.e2e
def test_a_streamed_chat_arrives_through_nginx_while_it_is_written(conversation: Conversation, postgres_url: str,
                                                                  knowledge: Knowledge) -> None:  # fmt: skip
    payloads = [payload for _, payload in conversation.events]
    assert payloads[-1] == "[DONE]" and len(payloads) >= 4, payloads  # role, content, ..., the final chunk, [DONE]
    # The first content chunk reached the client before the replica had stored the answer (it stores it right
    # before the final chunk): nginx passed the stream on as it came, instead of holding it to the end.
    assert conversation.stored_when_first_content_arrived == (1, 0), (conversation.stored_when_first_content_arrived, payloads)
    first_content = next(
        t for t, p in conversation.events if p != "[DONE]" and json.loads(p)["choices"][0]["delta"].get("content")
    )
    assert conversation.events[-1][0] > first_content
    assert _assistant_messages(postgres_url, knowledge.user) == (1, 3)


@pytest.mark.e2e
def test_turns_of_one_session_alternate_between_the_replicas(conversation: Conversation, proxy: Proxy) -> None:
    first, second, third = conversation.replicas
    assert first != second and third == first, conversation.replicas
    assert {first, second} == {r.address for r in proxy.replicas}
    # The replica's own access log has the turn's request id (nginx's X-Request-ID), and only that replica's.
    assert conversation.answered_by == [{replica} for replica in conversation.replicas], conversation.answered_by


@pytest.mark.e2e
def test_the_session_memory_is_intact_across_replicas(conversation: Conversation, proxy: Proxy, knowledge: Knowledge) -> None:
    response = httpx.get(f"{proxy.url}/v1/sessions/{conversation.session_id}",
                         headers={"Authorization": f"Bearer {knowledge.key}"}, timeout=60)  # fmt: skip
    assert response.status_code == 200, response.text
    messages = response.json()["messages"]
    assert [m["seq"] for m in messages] == [1, 2, 3, 4, 5, 6]
    assert [m["role"] for m in messages] == ["user", "assistant"] * 3
    assert [m["content"] for m in messages[::2]] == [QUESTION] * 3
    answers = messages[1::2]
    assert all(a["content"] and a["prompt_tokens"] > 0 for a in answers), answers
    assert answers[1]["content"] == conversation.turn2_answer
    # Each answer's prompt held the turns before it, read from PostgreSQL by whichever replica answered: with the
    # same question and sources, a prompt grows by exactly the previous question and answer.
    for before, after, question in ((answers[0], answers[1], messages[0]), (answers[1], answers[2], messages[2])):
        grown = estimate_tokens(question["content"]) + estimate_tokens(before["content"])
        assert after["prompt_tokens"] - before["prompt_tokens"] == grown, (before, after)
    assert conversation.replicas[1] != conversation.replicas[0], "turn 2's memory came from the other replica's write"


@pytest.mark.e2e
def test_a_body_over_the_api_limit_is_refused_by_nginx_in_the_api_error_shape(proxy: Proxy, knowledge: Knowledge) -> None:
    limit = APISettings().max_request_bytes
    headers = {"Authorization": f"Bearer {knowledge.key}", "Content-Type": "application/json"}
    prefix, suffix = b'{"question": "', b'"}'
    at_limit = prefix + b"x" * (limit - len(prefix) - len(suffix)) + suffix
    assert len(at_limit) == limit
    refused = httpx.post(f"{proxy.url}/v1/query", content=at_limit + b" ", headers=headers, timeout=60)
    assert refused.status_code == 413 and refused.json()["error"]["type"] == "request_too_large", refused.text
    passed = httpx.post(f"{proxy.url}/v1/query", content=at_limit, headers=headers, timeout=60)
    assert passed.status_code == 422 and "question" in passed.json()["error"]["message"], passed.text  # the API's answer


@pytest.mark.e2e
def test_mcp_through_nginx_keeps_one_client_on_one_replica(proxy: Proxy, knowledge: Knowledge) -> None:
    before = len(proxy.upstreams("POST", "/mcp"))

    async def search() -> str:
        headers = {"Authorization": f"Bearer {knowledge.key}"}
        async with httpx2.AsyncClient(headers=headers, timeout=WAIT_S) as http, \
                Client(streamable_http_client(f"{proxy.url}/mcp", http_client=http)) as client:  # fmt: skip
            await client.list_tools()
            found = await client.call_tool("search", {"query": QUESTION, "top_k": 3})
        return "".join(getattr(block, "text", "") for block in found.content)

    assert RUNBOOK in asyncio.run(search())
    upstreams = [replica for replica, _ in proxy.upstreams("POST", "/mcp")[before:]]
    assert len(upstreams) >= 3 and len(set(upstreams)) == 1, upstreams  # initialize, initialized, list, call


@pytest.mark.e2e
def test_metrics_are_not_published_through_nginx(proxy: Proxy, knowledge: Knowledge) -> None:
    headers = {"Authorization": f"Bearer {knowledge.key}"}
    assert httpx.get(f"{proxy.url}/metrics", headers=headers, timeout=30).status_code == 404
    for replica in proxy.replicas:  # Prometheus scrapes each replica itself
        assert httpx.get(f"http://{replica.address}/metrics", headers=headers, timeout=30).status_code == 200
