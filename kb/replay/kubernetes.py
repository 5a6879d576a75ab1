"""Replays a Kubernetes API server from recorded objects: `namespaces/<ns>/{pods,deployments,events,metrics}.json`
(list answers as the API server gives them) and `namespaces/<ns>/logs/<pod>[.<container>][.previous].log`.

Only the GET paths the kubernetes connector reads exist; anything else answers 404 in the API's `Status` shape.
Selectors are applied the way the API server applies them for the equality forms (`a=b`, `a==b`, `a!=b`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from kb.replay.server import Reply

_NAME = r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?"
_CORE = re.compile(rf"^/api/v1/namespaces/(?P<ns>{_NAME})/(?P<res>pods|events)(?:/(?P<name>{_NAME}))?(?P<log>/log)?$")
_APPS = re.compile(rf"^/apis/apps/v1/namespaces/(?P<ns>{_NAME})/deployments(?:/(?P<name>{_NAME}))?$")
_METRICS = re.compile(rf"^/apis/metrics\.k8s\.io/v1beta1/namespaces/(?P<ns>{_NAME})/pods(?:/(?P<name>{_NAME}))?$")

# What the API server names each list and its items (lists carry kind/apiVersion, items do not).
_KINDS = {
    "pods": ("v1", "Pod", "PodList"),
    "events": ("v1", "Event", "EventList"),
    "deployments": ("apps/v1", "Deployment", "DeploymentList"),
    "metrics": ("metrics.k8s.io/v1beta1", "PodMetrics", "PodMetricsList"),
}


def _status(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> Reply:
    """A `metav1.Status` failure, the body every API server error carries."""
    body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
                            "reason": reason, "code": code}  # fmt: skip
    if details:
        body["details"] = details
    return Reply.json(body, code)


def _not_found(resource: str, name: str, group: str = "") -> Reply:
    kind = f"{resource}.{group}" if group else resource
    return _status(404, "NotFound", f'{kind} "{name}" not found', {"name": name, "group": group, "kind": resource})


def _unknown_path() -> Reply:
    return _status(404, "NotFound", "the server could not find the requested resource", {})


def _load_list(root: Path, ns: str, resource: str) -> dict[str, Any]:
    """The recorded list; a namespace without a recording lists nothing, as an empty namespace does."""
    api_version, _, list_kind = _KINDS[resource]
    path = root / "namespaces" / ns / f"{resource}.json"
    if path.exists():
        return json.loads(path.read_text())  # type: ignore[no-any-return]
    return {"kind": list_kind, "apiVersion": api_version, "metadata": {"resourceVersion": "1"}, "items": []}


def _dotted(obj: Any, dotted: str) -> str | None:
    for part in dotted.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return None
        obj = obj[part]
    return None if obj is None else str(obj)


def _requirements(selector: str) -> list[tuple[str, str, str]]:
    """`a=b,c!=d` → [(a, '=', b), (c, '!=', d)]; set-based forms are not recorded, so they are refused."""
    out = []
    for term in filter(None, (t.strip() for t in selector.split(","))):
        match = re.fullmatch(r"([^=!\s]+)\s*(==|=|!=)\s*([^=!\s]*)", term)
        if not match:
            raise ValueError(f"unable to parse requirement: {term!r}")
        key, op, value = match.groups()
        out.append((key, "!=" if op == "!=" else "=", value))
    return out


def _matches(values: dict[str, str | None], reqs: list[tuple[str, str, str]]) -> bool:
    return all((values.get(key) == value) == (op == "=") for key, op, value in reqs)


def _label_filter(items: list[dict[str, Any]], selector: str) -> list[dict[str, Any]]:
    reqs = _requirements(selector)
    return [i for i in items if _matches(i.get("metadata", {}).get("labels") or {}, reqs)]


def _field_filter(items: list[dict[str, Any]], selector: str) -> list[dict[str, Any]]:
    reqs = _requirements(selector)
    return [i for i in items if _matches({key: _dotted(i, key) for key, _, _ in reqs}, reqs)]


def _one(query: dict[str, list[str]], key: str) -> str:
    return query.get(key, [""])[0]


def _serve_list(root: Path, ns: str, resource: str, query: dict[str, list[str]]) -> Reply:
    data = _load_list(root, ns, resource)
    items = data.get("items", [])
    try:
        if label := _one(query, "labelSelector"):
            items = _label_filter(items, label)
        if field := _one(query, "fieldSelector"):
            items = _field_filter(items, field)
    except ValueError as exc:
        return _status(400, "BadRequest", str(exc))
    return Reply.json({**data, "items": items})


def _serve_item(root: Path, ns: str, resource: str, name: str, group: str = "") -> Reply:
    api_version, kind, _ = _KINDS[resource]
    for item in _load_list(root, ns, resource).get("items", []):
        if item.get("metadata", {}).get("name") == name:
            return Reply.json({"kind": kind, "apiVersion": api_version, **item})
    return _not_found("pods" if resource == "metrics" else resource, name, group)


def _find_pod(root: Path, ns: str, name: str) -> dict[str, Any] | None:
    return next((p for p in _load_list(root, ns, "pods")["items"] if p["metadata"]["name"] == name), None)


def _tail(text: str, tail: str) -> str:
    """The last `tail` lines (all of them when `tail` is empty); `tail` is already checked to be digits."""
    if not tail:
        return text
    lines = text.splitlines(keepends=True)
    return "".join(lines[-int(tail) :]) if int(tail) > 0 else ""


def _serve_log(root: Path, ns: str, name: str, query: dict[str, list[str]]) -> Reply:
    """`GET .../pods/{name}/log` with the parameters kubelet honours: container, previous, tailLines."""
    pod = _find_pod(root, ns, name)
    if pod is None:
        return _not_found("pods", name)
    containers = [c["name"] for c in pod["spec"]["containers"]]
    container = _one(query, "container")
    if not container:
        if len(containers) > 1:
            msg = f"a container name must be specified for pod {name}, choose one of: [{' '.join(containers)}]"
            return _status(400, "BadRequest", msg)
        container = containers[0]
    if container not in containers:
        return _status(400, "BadRequest", f"container {container} is not valid for pod {name}")
    tail = _one(query, "tailLines")
    if tail and not tail.isdigit():
        return _status(400, "BadRequest", f"tailLines: invalid value {tail!r}")
    previous = _one(query, "previous") == "true"
    logs = root / "namespaces" / ns / "logs"
    suffix = ".previous.log" if previous else ".log"
    candidates = [logs / f"{name}.{container}{suffix}"] + ([logs / f"{name}{suffix}"] if container == containers[0] else [])
    path = next((p for p in candidates if p.exists()), None)
    if path is None:
        if previous:
            return _status(400, "BadRequest", f'previous terminated container "{container}" in pod "{name}" not found')
        return Reply.text("")
    return Reply.text(_tail(path.read_text(), tail))


def _metrics_installed(root: Path) -> bool:
    """metrics-server counts as installed when any namespace has a metrics recording."""
    return any((root / "namespaces").glob("*/metrics.json"))


def route(root: Path, path: str, query: dict[str, list[str]]) -> Reply:
    if match := _CORE.match(path):
        ns, res, name, log = match["ns"], match["res"], match["name"], match["log"]
        if log and (res != "pods" or not name):
            return _unknown_path()
        if log:
            return _serve_log(root, ns, name, query)
        return _serve_item(root, ns, res, name) if name else _serve_list(root, ns, res, query)
    if match := _APPS.match(path):
        ns, name = match["ns"], match["name"]
        return _serve_item(root, ns, "deployments", name, "apps") if name else _serve_list(root, ns, "deployments", query)
    if match := _METRICS.match(path):
        if not _metrics_installed(root):
            return _unknown_path()
        ns, name = match["ns"], match["name"]
        return _serve_item(root, ns, "metrics", name, "metrics.k8s.io") if name else _serve_list(root, ns, "metrics", query)
    return _unknown_path()
